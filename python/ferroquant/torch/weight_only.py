"""Weight-only group-wise quantization of a torch model's linear layers (``nn.Linear``, and transformers'
``Conv1D``, GPT-2's, whose weight is stored ``[in, out]``; issue 12, item 4's torch half):
RTN, GPTQ and AWQ through the same middle as the ONNX flow (:mod:`ferroquant.quant.weight_only`: the streamed
Hessian, AWQ's bounded row sample, the algorithm dispatch; the element work in the Rust core).

:func:`quantize_torch_weights_only` copies the model, taps every linear layer's input with a forward pre-hook
(layers that read the same tensor, like q/k/v after one LayerNorm, share one set of statistics, as they share
one tensor in ONNX), runs the calibration batches, then quantizes the layers one by one, each replaced by a
:class:`WeightOnlyLinear` holding its codes, scales and zero points (the float weight it evaluates with is
dequantized from them by the core). ``export`` writes the same ONNX as the ONNX flow (``MatMulNBits`` or
opset-21 blocked DequantizeLinear), ``record`` lists every group's scale.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple, Union

import numpy as np
import onnx
import torch
from torch import nn

from ferroquant import ops
from ferroquant.config.weight_only import WeightOnlyConfig, load_weight_only_config
from ferroquant.errors import ConfigError, DataError, ModelError
from ferroquant.ops import GroupQuant
from ferroquant.quant.weight_only import InputStatistics, WeightOnlyLayer, WeightOnlyQuant, quantize_layer, record_entry
from ferroquant.torch.export import export_weight_only_onnx, write_weight_only_files
from ferroquant.torch.layers import layer_type_of, weight_kn
from ferroquant.torch.prepare import InputData, call_model, example_input


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype`` (no cast when it already is: the ONNX export then reads the initializer itself)."""
    return t if t.dtype == dtype else t.to(dtype)


def _refresh_after_load(module: "WeightOnlyLinear", _incompatible_keys: Any) -> None:
    """A module-level hook (a lambda would keep the model from pickling with ``torch.save``)."""
    module.refresh_weight()


class WeightOnlyLinear(nn.Module):
    """An ``nn.Linear`` whose weight is group-quantized: buffers ``codes`` ``[K, N]`` uint8, ``scale`` and
    ``zero_point`` ``[G, N]`` (groups of ``group_size`` inputs), ``input_divisor`` ``[K]`` (AWQ: the input is
    divided by it before the product; absent otherwise) and the float ``bias``. ``forward`` computes
    ``x / input_divisor @ dequantize(codes) + bias`` with the weight dequantized once by the core (and again
    after ``load_state_dict``); the state dict holds the integers, not the float weight."""

    def __init__(self, quant: GroupQuant, bias: Optional[torch.Tensor] = None,
                 input_divisor: Optional[np.ndarray] = None) -> None:
        super().__init__()
        self.bits, self.group_size = quant.spec.bits, quant.spec.group_size
        self.symmetric, self.scale_dtype = quant.spec.symmetric, quant.spec.scale_dtype
        self.in_features, self.out_features = quant.codes.shape
        self.register_buffer("codes", torch.from_numpy(np.ascontiguousarray(quant.codes, np.uint8)))
        self.register_buffer("scale", torch.from_numpy(np.ascontiguousarray(quant.scale)))
        self.register_buffer("zero_point", torch.from_numpy(np.ascontiguousarray(quant.zero_point, np.uint8)))
        div = None if input_divisor is None else torch.from_numpy(np.asarray(input_divisor, np.float32).copy())
        self.register_buffer("input_divisor", div)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.register_buffer("weight", self._dequantized(), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self._export_float = False

    def group_quant(self) -> GroupQuant:
        """The codes, scales and zero points as the middle's :class:`~ferroquant.ops.GroupQuant` ``[K, N]``."""
        spec = ops.GroupSpec(self.bits, self.group_size, self.symmetric, self.scale_dtype)
        return GroupQuant(self.codes.cpu().numpy(), self.scale.cpu().numpy(), self.zero_point.cpu().numpy(), spec)

    def _dequantized(self) -> torch.Tensor:
        w = ops.dequantize_groupwise(self.group_quant())  # [K, N] float32, in the core
        return torch.from_numpy(np.ascontiguousarray(w.T)).to(self.codes.device)

    def refresh_weight(self) -> None:
        """Dequantize the weight again from the codes (after they were loaded or edited)."""
        self.weight = self._dequantized()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_divisor is not None and not self._export_float:
            x = x / _as(self.input_divisor, x.dtype)
        bias = None if self.bias is None else _as(self.bias, x.dtype)
        return nn.functional.linear(x, _as(self.weight, x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}, awq={self.input_divisor is not None}")


def weight_only_modules(model: nn.Module) -> Dict[str, WeightOnlyLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, WeightOnlyLinear)}


@contextlib.contextmanager
def float_export_mode(model: nn.Module) -> Iterator[None]:
    """Within: each :class:`WeightOnlyLinear` runs as a plain linear layer whose dequantized weight is a named
    parameter (``<layer>.weight`` in the ONNX export) and whose input is not divided (the exporter writes the
    division), so the exported graph has one MatMul/Gemm per layer for the weight-only exporter to replace."""
    mods = weight_only_modules(model)
    try:
        for m in mods.values():
            w = m.weight
            del m.weight
            m.weight = nn.Parameter(w, requires_grad=False)
            m._export_float = True
        yield
    finally:
        for m in mods.values():
            w = m.weight.data
            del m.weight
            m.register_buffer("weight", w, persistent=False)
            m._export_float = False


def linear_layers(model: nn.Module, skip: Iterable[str] = ()) -> Dict[str, nn.Module]:
    """The modules the registry marks for weight-only quantization (``nn.Linear``, ``Conv1D``), by name, minus
    ``skip`` (names the model does not have are a ConfigError)."""
    found = {n: m for n, m in model.named_modules()
             if (t := layer_type_of(m)) is not None and t.weight_only and m.weight.ndim == 2}
    unknown = sorted(set(skip) - set(found))
    if unknown:
        raise ConfigError(f"field 'weight_only.skip_layers': the model has no linear layers named {unknown}")
    return {n: m for n, m in found.items() if n not in set(skip)}


def _layer(name: str, m: nn.Module, w_kn: np.ndarray) -> WeightOnlyLayer:
    return WeightOnlyLayer(name, "Linear", f"{name} (input)", f"{name}.weight",
                           f"{name}.bias" if m.bias is not None else None, True, int(w_kn.shape[0]),
                           int(w_kn.shape[1]))


class InputTaps:
    """Forward pre-hooks streaming each layer's input into its :class:`InputStatistics`. Layers whose inputs are
    the same tensor on the first batch (same storage, shape, strides and version) share one set of
    statistics, fed once per batch; a later batch where they do not read the same tensor is a ModelError.
    A layer called several times in one forward contributes every call."""

    def __init__(self, layers: Mapping[str, nn.Module], cfg: WeightOnlyConfig) -> None:
        self.layers, self.cfg = dict(layers), cfg
        self.stats: Dict[str, InputStatistics] = {}
        self.readers: Dict[int, List[str]] = {}
        self._batch: Dict[Tuple, InputStatistics] = {}
        self._fed: Dict[int, Set[Tuple]] = {}
        self._keys: Dict[str, Set[Tuple]] = {}
        self._held: List[torch.Tensor] = []  # keeps this batch's inputs alive: no storage is reused within it
        self.batches = 0
        self._hooks = [m.register_forward_pre_hook(self._hook(n)) for n, m in self.layers.items()]

    def _hook(self, name: str):  # noqa: ANN202 - a torch hook
        def fn(_mod: nn.Module, args: tuple) -> None:
            x = args[0]
            key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, x._version)
            st = self.stats.get(name)
            if st is None:
                st = self._batch.get(key)
                if st is None:
                    st = InputStatistics.for_config(f"input of layer {name!r}", int(x.shape[-1]), self.cfg)
                self.stats[name] = st
                self.readers.setdefault(id(st), []).append(name)
            self._keys.setdefault(name, set()).add(key)
            fed = self._fed.setdefault(id(st), set())
            if key not in fed:
                st.observe(x.detach().float().cpu().contiguous().numpy())
                fed.add(key)
                self._batch[key] = st
                self._held.append(x)
        return fn

    def end_batch(self) -> None:
        """Check that layers sharing statistics read the same tensors in this batch; reset the batch state."""
        for names in self.readers.values():
            keys = [self._keys.get(n, set()) for n in names]
            if any(k != keys[0] for k in keys[1:]):
                raise ModelError(f"layers {names} read the same input tensor on the first calibration batch but "
                                 f"not on batch {self.batches}: their statistics cannot be shared")
        self._batch, self._fed, self._keys, self._held = {}, {}, {}, []
        self.batches += 1

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def calibrate(model: nn.Module, layers: Mapping[str, nn.Module], cfg: WeightOnlyConfig,
              batches: Iterable[Any]) -> Tuple[Dict[str, InputStatistics], int]:
    """Run at most ``cfg.batch_num`` batches (tensors, tuples of tensors, or mappings of keyword arguments)
    with the layers' inputs tapped. Returns (statistics by layer name, batches run)."""
    taps = InputTaps(layers, cfg)
    try:
        with torch.no_grad():
            for batch in batches:
                if cfg.batch_num is not None and taps.batches >= cfg.batch_num:
                    break
                call_model(model, batch)
                taps.end_batch()
    finally:
        taps.remove()
    if taps.batches == 0:
        raise DataError("the calibration data yielded no batch")
    never = [n for n in layers if n not in taps.stats]
    if never:
        raise DataError(f"layers {never} were never called during calibration (forward does not use them); "
                        "skip them with weight_only.skip_layers")
    return taps.stats, taps.batches


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


@dataclass
class TorchWeightOnlyResult:
    """What :func:`quantize_torch_weights_only` returns: the quantized copy of the model (its ``nn.Linear``
    layers replaced by :class:`WeightOnlyLinear`), the config, each layer's quantization by module name, and
    the export example (``input_data``)."""

    model: nn.Module
    config: WeightOnlyConfig
    quants: Dict[str, WeightOnlyQuant]
    input_data: Optional[InputData] = None
    batches: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    def _example(self, input_data: Optional[InputData]) -> InputData:
        example = self.input_data if input_data is None else input_data
        if example is None:
            raise DataError("export needs input_data (an example input): none was given and no calibration "
                            "batch was seen")
        return example

    def export(self, input_data: Optional[InputData] = None, opset: int = 17,
               dynamic_axes: Optional[Mapping[str, Mapping[int, str]]] = None) -> onnx.ModelProto:
        """The ONNX model the ONNX flow would write for these weights (``config.format``: ``MatMulNBits`` or
        opset-21 blocked DequantizeLinear; AWQ's input division as a Div node), exported by torch's TorchScript
        exporter at ``opset`` (17: ``LayerNormalization`` as one op; ``qdq`` converts the model to 21). Inputs
        are named ``input`` (``input0``, ``input1``... for a tuple), the output ``output``; axis 0 of each is
        dynamic unless ``dynamic_axes`` says otherwise (e.g. ``{"input0": {0: "batch", 1: "seq"}, ...}``)."""
        with float_export_mode(self.model):
            return export_weight_only_onnx(self.model, self._example(input_data), self.quants, self.config.format,
                                           self.config.accuracy_level, opset, dynamic_axes)

    def record(self) -> Dict[str, Any]:
        """The record of the ONNX flow (``kind`` weight_only): every layer's groups, scales (and zero points)
        per output column, by torch module name."""
        return {"kind": "weight_only", "source": "torch", "config": self.config.to_json()["weight_only"],
                "batches": self.batches, "layers": {n: record_entry(q) for n, q in self.quants.items()}}

    def save(self, save_path: Union[str, Path], input_data: Optional[InputData] = None, opset: int = 17,
             dynamic_axes: Optional[Mapping[str, Mapping[int, str]]] = None) -> Dict[str, Path]:
        """``<save_path>_deploy.onnx`` and ``<save_path>_quant_record.json``, as the ONNX flow writes them
        (export options as :meth:`export`)."""
        return write_weight_only_files(self.export(input_data, opset, dynamic_axes), self.record(), save_path)


def _first(batches: Iterable[Any]) -> Tuple[Optional[Any], Iterable[Any]]:
    it = iter(batches)
    first = next(it, None)
    if first is None:
        return None, ()

    def chain() -> Iterator[Any]:
        yield first
        yield from it
    return first, chain()


def _example_of(batch: Any) -> Optional[InputData]:
    return None if batch is None else example_input(batch)


def quantize_torch_weights_only(model: nn.Module, calibration_batches: Optional[Iterable[Any]] = None,
                                config: Union[str, Path, Mapping[str, Any], WeightOnlyConfig, None] = None,
                                input_data: Optional[InputData] = None, batch_num: Optional[int] = None,
                                inplace: bool = False, **config_kwargs: Any) -> TorchWeightOnlyResult:
    """Group-wise weight-only quantization of every linear layer (``nn.Linear``, ``Conv1D``) of ``model`` (a
    :class:`~ferroquant.config.weight_only.WeightOnlyConfig`, a mapping or JSON file with a ``weight_only``
    section, or its fields as keyword arguments; ``skip_layers`` by module name). GPTQ and AWQ calibrate on at
    most ``batch_num`` batches of ``calibration_batches`` (tensors, tuples, or mappings of keyword arguments;
    default: the config's ``batch_num``); the statistics are those of the float model (one pass). The layers are
    then quantized one at a time and swapped for :class:`WeightOnlyLinear` in a copy of the model (in ``model``
    itself with ``inplace=True``: no second float copy). ``input_data`` is the ONNX export example (default:
    the first calibration batch)."""
    if config is not None and config_kwargs:
        raise ConfigError(f"pass either a config or config options, not both ({sorted(config_kwargs)})")
    cfg = WeightOnlyConfig(**config_kwargs) if config is None else load_weight_only_config(config)
    if batch_num is not None:
        cfg = replace(cfg, batch_num=batch_num)
    if cfg.embeddings:
        raise ConfigError("field 'weight_only.embeddings': the torch path quantizes nn.Linear layers only; export "
                          "the model to ONNX and quantize it with ferroquant.onnx for the Gather tables")
    work = model if inplace else copy.deepcopy(model)
    work.eval()
    layers = linear_layers(work, cfg.skip_layers)
    if not layers:
        raise ConfigError("the model has no linear layer (nn.Linear, transformers' Conv1D) to quantize weight-only")
    first, batches = _first(calibration_batches if calibration_batches is not None else ())
    stats: Dict[str, InputStatistics] = {}
    seen = 0
    if cfg.needs_data:
        if first is None:
            raise DataError(f"weight-only {cfg.algorithm} needs calibration data (calibration_batches is "
                            f"{'empty' if calibration_batches is not None else 'None'})")
        stats, seen = calibrate(work, layers, cfg, batches)
    quants: Dict[str, WeightOnlyQuant] = {}
    for name, m in layers.items():
        w_kn = weight_kn(m)
        layer = _layer(name, m, w_kn)
        wq = quantize_layer(layer, w_kn, cfg, stats.pop(name, None))
        quants[name] = wq
        new = WeightOnlyLinear(wq.quant, m.bias, wq.input_divisor).to(m.weight.device)
        _set_module(work, name, new)
    return TorchWeightOnlyResult(work, cfg, quants, input_data if input_data is not None else _example_of(first),
                                 seen)


__all__ = ["InputTaps", "TorchWeightOnlyResult", "WeightOnlyLinear", "calibrate", "float_export_mode",
           "linear_layers", "quantize_torch_weights_only", "weight_only_modules"]
