"""Post-training quantization of torch models: the same calibrators and weight quantizers as the ONNX flow,
fed by forward pre-hooks, and the same exporters.

:func:`quantize_torch_model` copies the model, folds Conv/Linear+BN (running statistics), registers a forward
pre-hook on every enabled Conv/ConvTranspose/Linear that streams the layer's input into an IFMR or HFMG
calibrator (the middle's factory, :mod:`ferroquant.quant.calibrators`, bounded memory), runs the calibration
batches, merges calibrator states across ranks under torch.distributed, then exports the float copy to ONNX and
fills a :class:`~ferroquant.quant.table.QuantTable` (ARQ or NUQ weights and bias codes through
:mod:`ferroquant.quant.weights`). ``save`` writes the three files of the ONNX flow.

``methods.smooth_quant`` in the config balances every normalization read only by ``nn.Linear`` layers first
(:mod:`ferroquant.torch.smooth`, on the same batches: a one-shot iterator is read into a list); the record's
``methods.smooth_quant`` lists the groups. ``nn.Linear`` layers that torch exports as ``MatMul(x,
Transpose(weight))`` (3-D inputs, no bias) are quantized as MatMuls with their weight transposed in the export.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Union

import onnx
import torch
from torch import nn

from ferroquant.calibrate import search_all
from ferroquant.config import QuantConfig, build_config, load_config
from ferroquant.config.methods import SmoothQuantParams
from ferroquant.errors import ConfigError, DataError
from ferroquant.quant.calibrators import activation_quant, make_activation_calibrator
from ferroquant.quant.table import QuantTable
from ferroquant.quant.weights import layer_quant, quantize_weight
from ferroquant.torch import distributed as fqdist
from ferroquant.torch.export import export_layers_onnx, initializer, map_layers, norm_linear_groups, write_quant_files
from ferroquant.torch.layers import layer_type_of
from ferroquant.torch.prepare import InputData, analyse, call_model, example_input, fold_batch_norm_
from ferroquant.torch.smooth import balance_
from ferroquant.torch.smooth import report as smooth_report


@dataclass
class TorchPtqResult:
    """The float ONNX model (BN folded), its qparams table, the calibrators by layer and the config."""

    onnx_model: onnx.ModelProto
    table: QuantTable
    calibrators: Dict[str, Any]
    config: QuantConfig
    batches: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    def save(self, save_path: Union[str, Path]) -> Dict[str, Path]:
        """``<save_path>_fake_quant.onnx``, ``_deploy.onnx`` and ``_quant_record.json``."""
        return write_quant_files(self.onnx_model, self.table, save_path, {"source": "torch-ptq", **self.extra})


def torch_ptq_config(model: nn.Module, **kwargs: Any) -> QuantConfig:
    """A PTQ config (:mod:`ferroquant.config`) whose layers are the model's quantizable modules, by name, with
    their ONNX op types (Conv, ConvTranspose, Gemm); keyword arguments go to ``build_config``."""
    layers = [(n, t.op_type) for n, m in model.named_modules() if (t := layer_type_of(m)) is not None]
    if not layers:
        raise ConfigError("the model has no quantizable module (Conv, ConvTranspose, Linear)")
    return build_config(layers, **kwargs)


def quantize_torch_model(model: nn.Module, calibration_batches: Iterable[Any],
                         config: Optional[Union[str, Path, Mapping[str, Any], QuantConfig]] = None,
                         input_data: Optional[InputData] = None, batch_num: Optional[int] = None,
                         dynamic_axes: Optional[Mapping[str, Mapping[int, str]]] = None,
                         **config_kwargs: Any) -> TorchPtqResult:
    """PTQ of a torch model: calibrate each enabled layer's input on at most ``batch_num`` batches of
    ``calibration_batches`` (default: the config's ``batch_num``, or every batch when no config is given),
    quantize the weights, and return the table and float ONNX model ready to save. A batch is a tensor, a tuple
    of tensors, or a mapping of keyword tensors (a tokenizer's output): the model is then called by keyword and
    exported with those names as its inputs and the first float tensor of its output (logits, hidden states).
    ``input_data`` is the export example (default: the first calibration batch); ``dynamic_axes`` the export's
    dynamic axes as torch takes them (default: axis 0 of each input and of the output, and for keyword batches
    axis 1 of integer inputs and of a 3-D output, the sequence; positional inputs of a transformer:
    ``{"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}}``). The model is not modified."""
    if config is None:
        config_kwargs.setdefault("batch_num", None)
        cfg = torch_ptq_config(model, **config_kwargs)
    elif config_kwargs:
        raise ConfigError(f"pass either a config or config options, not both ({sorted(config_kwargs)})")
    else:
        cfg = load_config(config)
    used = [m for m in cfg.methods_in_use() if m != "methods.smooth_quant"]
    if used:
        raise ConfigError(f"{', '.join(used)}: the torch PTQ flow does not apply these yet; export the model to ONNX "
                          "and quantize it with ferroquant.onnx, or turn them off")
    work = copy.deepcopy(model).eval()
    mods = {n: m for n, m in work.named_modules() if layer_type_of(m) is not None}
    missing = [n for n in cfg.layers if n not in mods]
    if missing:
        raise ConfigError(f"config names layers the model does not have: {missing}")
    enabled = cfg.enabled_layers()
    limit = cfg.batch_num if batch_num is None else int(batch_num)
    sq = cfg.methods.smooth_quant
    if sq.enabled and isinstance(calibration_batches, Iterator):  # balancing reads the batches once more
        calibration_batches = list(islice(calibration_batches, limit))
    it = iter(calibration_batches)
    first = next(it, None)
    if first is None:
        raise DataError("calibration_batches is empty")
    example = example_input(first if input_data is None else input_data)
    fold_batch_norm_(work, analyse(work, example).bn_pairs)
    methods: Dict[str, Any] = {}
    if sq.enabled:
        methods["smooth_quant"] = _smooth(work, example, sq, calibration_batches, limit)
    m = export_layers_onnx(work, example, dynamic_axes)
    infos = map_layers(m, enabled)
    # One calibrator per activation tensor (as in the ONNX flow), fed by the first layer that reads it.
    cals: Dict[str, Any] = {}
    hooks = []

    def observe(tensor: str):
        def fn(_mod: nn.Module, args: tuple) -> None:
            cals[tensor].observe(args[0].detach().float().cpu().contiguous().numpy())
        return fn

    for n in infos:
        t = infos[n].activation
        if t not in cals:
            cals[t] = make_activation_calibrator(t, cfg.layers[n].activation, cfg.activation_symmetric(n))
            hooks.append(mods[n].register_forward_pre_hook(observe(t)))
    seen = 0
    try:
        with torch.no_grad():
            batch: Any = first
            while batch is not None and (limit is None or seen < limit):
                call_model(work, batch)
                seen += 1
                batch = next(it, None)
    finally:
        for h in hooks:
            h.remove()
    cals = {t: fqdist.merge_calibrator(c) for t, c in cals.items()}
    results = search_all(cals)  # HFMG searches in parallel across tensors
    table = QuantTable()
    for n, info in infos.items():
        wq = quantize_weight(info, initializer(m, info.weight), cfg.layers[n].weight)
        table.layers[info.name] = layer_quant(info, activation_quant(info.activation, results[info.activation]), wq,
                                              initializer(m, info.bias) if info.bias else None)
    return TorchPtqResult(m, table, cals, cfg, seen, {"methods": methods} if methods else {})


def _smooth(work: nn.Module, example: Any, params: SmoothQuantParams, batches: Iterable[Any],
            limit: Optional[int]) -> Dict[str, Any]:
    """SmoothQuant balancing of ``work`` in place (:mod:`ferroquant.torch.smooth`); the record's entry, with
    how far the balanced float model's output moved (``max |after - before| / max |before|``, one batch)."""
    groups, skipped = norm_linear_groups(work, example)
    with torch.no_grad():
        before = _tensors(call_model(work, example)) if groups else []
        done = balance_(work, groups, params, batches, limit)
        after = _tensors(call_model(work, example)) if groups else []
    change = max((float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(after, before)),
                 default=None)
    return smooth_report(done, skipped, change)


def _tensors(out: Any) -> list:
    """The float tensors of a model's output (a tensor, a tuple/list, or a mapping such as a ModelOutput)."""
    items = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else [out]
    return [t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]


__all__ = ["TorchPtqResult", "quantize_torch_model", "torch_ptq_config"]
