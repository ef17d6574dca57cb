"""torch -> ONNX -> QuantTable -> the existing exporters (one exporter, not two).

The float model (QuantLayers replaced by their float modules, BN already folded) is exported with the
TorchScript exporter (``dynamo=False``, ``do_constant_folding=False``, eval mode), which keeps every parameter
as an initializer named like the parameter (``features.0.weight``). Each quantizable ONNX node
(:func:`ferroquant.onnx.quantizable_layers`) is mapped to its torch layer through that weight initializer name;
the table gets the layer's learned ULQ clips as (scale, zero point) of its input tensor and its weight's
ARQ/LSQ qparams and codes, and :func:`~ferroquant.onnx.export_fake_quant`, :func:`~ferroquant.onnx.export_deploy`
and :func:`~ferroquant.onnx.write_record` write the three files.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import onnx
import torch
from torch import nn

from ferroquant.config.weight_only import WeightOnlyConfig
from ferroquant.errors import ModelError
from ferroquant.onnx.api import write_outputs
from ferroquant.onnx.graph import GraphView
from ferroquant.onnx.io import fold_constant_transposes, load_model
from ferroquant.onnx.layers import quantizable_layers
from ferroquant.onnx.smooth import smooth_groups
from ferroquant.onnx.weight_only import export_weight_only, weight_only_layers
from ferroquant.onnx.weight_only import write_weight_only_files  # noqa: F401 - torch/weight_only writes through it
from ferroquant.quant.table import ActivationQuant, LayerInfo, QuantTable, WeightQuant
from ferroquant.quant.weight_only import WeightOnlyQuant
from ferroquant.quant.weights import layer_quant
from ferroquant.torch.layers import is_linear
from ferroquant.torch.prepare import (
    InputData,
    RetrainConfig,
    create_quant_retrain_model,
    example_input,
    float_copy,
    load_retrain_config,
    quant_layers,
    share_as_saved,
)

OPSET = 13
#: The opset of an export whose model uses an operator torch cannot write at ``OPSET``: transformers' default
#: attention (``scaled_dot_product_attention``) has an ONNX form from opset 14 on, and 17 writes LayerNorm as one
#: ``LayerNormalization`` node.
NEWER_OPSET = 17


def _export_error(e: Exception, opset: int) -> ModelError:
    """What torch's exporter raised, as a ModelError (its first line: torch appends the whole graph)."""
    lines = str(e).strip().splitlines()
    why = f"{type(e).__name__}: {lines[0] if lines else ''}"
    hint = ""
    if "scaled_dot_product_attention" in why:
        hint = (" (a transformers model that cannot switch its attention implementation itself: load it with "
                "attn_implementation='eager')")
    return ModelError(f"torch cannot export the model to ONNX at opset {opset}: {why}{hint}")


def _opsets(model: nn.Module) -> List[int]:
    """The opsets to try: ``NEWER_OPSET`` for a model built of ``transformers`` modules (their attention needs 14
    or later, and a failed try makes torch print the whole graph), else ``OPSET``, then ``NEWER_OPSET``."""
    if any(type(m).__module__.startswith("transformers.") for m in model.modules()):
        return [NEWER_OPSET]
    return [OPSET, NEWER_OPSET]


@contextlib.contextmanager
def _attention_written_out(model: nn.Module) -> Iterator[None]:
    """Within: the ``transformers`` models in ``model`` run their eager attention (``softmax(q k^T) v`` as tensor
    ops), which torch's TorchScript exporter writes at any opset; their default ``scaled_dot_product_attention``
    has no export with grouped-query heads (Llama 3, Mistral, Qwen). Both compute the same function. Each model's
    own setting comes back afterwards."""
    changed = []
    for m in model.modules():
        impl = getattr(getattr(m, "config", None), "_attn_implementation", None)
        can = getattr(m, "_can_set_attn_implementation", None)
        if impl not in (None, "eager") and hasattr(m, "set_attn_implementation") and callable(can) and can():
            changed.append((m, impl))
    done = []
    try:
        for m, impl in changed:
            try:
                m.set_attn_implementation("eager")
            except Exception:  # noqa: BLE001 - a model that refuses keeps its attention (the export may still work)
                continue
            done.append((m, impl))
        yield
    finally:
        for m, impl in reversed(done):
            m.set_attn_implementation(impl)


def _float_output(out: Any) -> torch.Tensor:
    """The first float tensor with at least one axis in a model's output: the output itself, or from a tuple, a
    list or a mapping (``transformers``' ModelOutput: ``logits``, ``last_hidden_state``; a scalar ``loss`` is
    passed over)."""
    items = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else [out]
    for t in items:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() > 0:
            return t
    raise ModelError(f"the model's output ({type(out).__name__}) has no float tensor to export")


@contextlib.contextmanager
def _keyword_forward(model: nn.Module, names: List[str]) -> Iterator[None]:
    """Within: ``model(*tensors)`` runs ``model(**dict(zip(names, tensors)))`` and returns its first float output
    tensor (:func:`_float_output`). That is what torch's TorchScript exporter can trace for a model fed keyword
    batches: it does not map keyword arguments onto a ``forward`` with many optional parameters
    (``transformers``), nor export a ModelOutput. The module, and so every parameter name, stays the model's."""
    own = model.__dict__.get("forward")
    bound = model.forward

    def forward(*args: torch.Tensor) -> torch.Tensor:
        return _float_output(bound(**dict(zip(names, args))))

    model.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own  # type: ignore[method-assign]


def _keyword_axes(batch: Mapping[str, torch.Tensor], output: torch.Tensor) -> Dict[str, Dict[int, str]]:
    """Default dynamic axes of a keyword export: axis 0 of every input and of the output, and axis 1 (``seq``)
    of integer inputs with two or more axes (token ids, masks) and of an output with three or more beside them
    (hidden states, per-token logits)."""
    axes = {k: {0: "batch", 1: "seq"} if v.dim() >= 2 and not v.is_floating_point() else {0: "batch"}
            for k, v in batch.items()}
    tokens = any(len(a) == 2 for a in axes.values())
    axes["output"] = {0: "batch", 1: "seq"} if tokens and output.dim() >= 3 else {0: "batch"}
    return axes


def export_float_onnx(model: nn.Module, input_data: InputData, dynamic_batch: bool = True,
                      opset: Optional[int] = None, dynamic_axes: Optional[Mapping[str, Mapping[int, str]]] = None
                      ) -> onnx.ModelProto:
    """``model`` (a float model) in eval mode as ONNX with parameter-named initializers (inputs ``input`` or
    ``input0``, ``input1``..., output ``output``; axis 0 of each dynamic, or ``dynamic_axes`` as torch takes
    them), loaded through :func:`ferroquant.onnx.load_model` (checked, shapes inferred). ``input_data`` a
    mapping (a tokenizer's output): the model is called by keyword, the inputs are named by its keys, the
    output is the first float tensor of what the model returns, and the sequence axis (axis 1 of integer
    inputs) is dynamic too by default. ``opset`` None: ``OPSET``, or ``NEWER_OPSET`` when one of the model's
    operators has no ONNX form at ``OPSET`` (and from the start for ``transformers`` models); an operator torch
    cannot export at the opset used is a ModelError naming it."""
    keywords = isinstance(input_data, Mapping)
    if keywords:
        batch = example_input(input_data)
        names, args = list(batch), tuple(batch.values())
    else:
        args = input_data if isinstance(input_data, tuple) else (input_data,)
        names = [f"input{i}" if len(args) > 1 else "input" for i in range(len(args))]
    tries = _opsets(model) if opset is None else [opset]
    was = model.training
    model.eval()
    try:
        with _attention_written_out(model), (_keyword_forward(model, names) if keywords
                                             else contextlib.nullcontext()):
            dynamic = None
            if dynamic_axes is not None:
                dynamic = {k: dict(v) for k, v in dynamic_axes.items()}
            elif dynamic_batch and keywords:
                with torch.no_grad():
                    dynamic = _keyword_axes(batch, model(*args))
            elif dynamic_batch:
                dynamic = {n: {0: "batch"} for n in names + ["output"]}
            for i, version in enumerate(tries):
                buf = io.BytesIO()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        torch.onnx.export(model, args, buf, dynamo=False, do_constant_folding=False,
                                          opset_version=version, input_names=names, output_names=["output"],
                                          dynamic_axes=dynamic)
                    break
                except torch.onnx.errors.UnsupportedOperatorError as e:
                    if i + 1 == len(tries):
                        raise _export_error(e, version) from None
                except Exception as e:  # noqa: BLE001 - the exporter raises what its converters raise
                    raise _export_error(e, version) from e
    finally:
        model.train(was)
    return load_model(onnx.load_from_string(buf.getvalue()))


def export_layers_onnx(model: nn.Module, input_data: InputData,
                       dynamic_axes: Optional[Mapping[str, Mapping[int, str]]] = None) -> onnx.ModelProto:
    """:func:`export_float_onnx` with the ``Transpose`` of each constant folded (torch writes ``nn.Linear`` on
    3-D inputs, or without bias, as ``MatMul(x, Transpose(weight))``): every Linear is then a MatMul or Gemm with
    a constant weight, the weight initializer still named ``<layer>.weight`` when nothing else reads it."""
    return _export_folded(model, input_data, dynamic_axes)[0]


def _export_folded(model: nn.Module, input_data: InputData,
                   dynamic_axes: Optional[Mapping[str, Mapping[int, str]]] = None
                   ) -> Tuple[onnx.ModelProto, Dict[str, str]]:
    """:func:`export_layers_onnx` and what it folded: {source initializer: folded (transposed) initializer}."""
    m = export_float_onnx(model, input_data, dynamic_axes=dynamic_axes)
    return m, fold_constant_transposes(m)


def norm_linear_groups(model: nn.Module, input_data: InputData) -> Tuple[List[Tuple[str, Tuple[str, ...]]],
                                                                        List[Tuple[str, str]]]:
    """The SmoothQuant groups of a torch model, found on its ONNX export by the ONNX flow's rules
    (:func:`ferroquant.onnx.smooth.smooth_groups`): ``(norm module, linear modules)`` for each ``nn.LayerNorm``
    (a per-channel affine ``Mul -> Add`` in the export) whose output only linear layers read (``nn.Linear``,
    transformers' Conv1D), and
    ``(ONNX node, reason)`` for the normalizations left alone. The ONNX flow's other absorbers (a scalar ``Mul``,
    a producing linear layer) are not modules this flow rescales: their groups are left out."""
    modules = dict(model.named_modules())
    groups, skipped = smooth_groups(export_layers_onnx(model, input_data))
    out = []
    for g in (g for g in groups if g.absorber == "normalization"):
        norm = g.scale[:-len(".weight")] if g.scale.endswith(".weight") else None
        lins = [w[:-len(".weight")] if w.endswith(".weight") else None for w in g.weights]
        bias_ok = g.bias is None or g.bias == f"{norm}.bias"
        if norm not in modules or not bias_ok or not all(n in modules and is_linear(modules[n]) for n in lins):
            skipped.append((g.norm, "its scale/bias or its readers' weights are not the parameters of one "
                                    "normalization module and linear layers (nn.Linear, Conv1D)"))
            continue
        out.append((norm, tuple(lins)))
    return out, skipped


def initializer(onnx_model: onnx.ModelProto, name: str) -> Optional[np.ndarray]:
    """The constant ``name`` of an exported model (a weight or bias), or None."""
    return GraphView(onnx_model).array(name)


def map_layers(onnx_model: onnx.ModelProto, names: Any) -> Dict[str, LayerInfo]:
    """Torch layer name -> the ONNX layer whose weight initializer is ``<name>.weight``. Layers the exporter left
    out (forward never calls them, or nothing the model returns depends on them, like BERT's pooler behind a
    wrapper that returns the hidden states) are left out here too, with a warning: they stay float. A weight that
    is in the graph but that no quantizable node reads as it is (it is transformed before use) is a ModelError."""
    by_weight = {l.weight: l for l in quantizable_layers(onnx_model)}
    present = {t.name for t in onnx_model.graph.initializer}
    out, missing, unused = {}, [], []
    for n in names:
        l = by_weight.get(f"{n}.weight")
        if l is not None:
            out[n] = l
        else:
            (missing if f"{n}.weight" in present else unused).append(n)
    if missing:
        raise ModelError(f"no ONNX Conv/ConvTranspose/Gemm/MatMul reads the weights of {missing} after export "
                         "(their weight is transformed before use)")
    if unused:
        warnings.warn(f"layers {unused} are not in the exported graph (not called, or their outputs are unused): "
                      "they stay float", stacklevel=3)
    return out


def export_weight_only_onnx(model: nn.Module, input_data: InputData, quants: Mapping[str, WeightOnlyQuant], fmt: str,
                            accuracy_level: Optional[int] = None, opset: Optional[int] = None,
                            dynamic_axes: Optional[Mapping[str, Mapping[int, str]]] = None) -> onnx.ModelProto:
    """The weight-only ONNX model of a torch model whose layers ``quants`` (module name -> quantized weight) run
    as plain linear layers with parameter-named weights: exported in float, constant weight transposes folded,
    each layer found by its weight initializer (``<name>.weight``) and replaced by the ONNX flow's exporter."""
    m = export_float_onnx(model, input_data, opset=opset, dynamic_axes=dynamic_axes)
    folded = fold_constant_transposes(m)
    by_weight = {l.weight: l for l in weight_only_layers(m, WeightOnlyConfig())}
    present = {t.name for t in m.graph.initializer}
    out, missing, unused = [], [], []
    for name, wq in quants.items():
        w = folded.get(f"{name}.weight", f"{name}.weight")
        l = by_weight.get(w)
        if l is None:
            (missing if w in present else unused).append(name)
            continue
        if (l.k, l.n) != tuple(wq.quant.codes.shape):
            raise ModelError(f"layer {name!r}: the exported weight is [K={l.k}, N={l.n}], the codes "
                             f"{list(wq.quant.codes.shape)}")
        out.append(WeightOnlyQuant(l, wq.quant, wq.algorithm, wq.input_divisor, wq.details))
    if missing:
        raise ModelError(f"no ONNX MatMul/Gemm reads the weights of {missing} after export (their weight is "
                         "transformed before use)")
    if unused:  # never called, or their outputs feed nothing the export returns: the exporter dropped them
        warnings.warn(f"layers {unused} are not in the exported graph (not called, or their outputs are unused): "
                      "nothing to write for them", stacklevel=3)
    return export_weight_only(m, out, fmt, accuracy_level)


def write_quant_files(onnx_model: onnx.ModelProto, table: QuantTable, save_path: Union[str, Path],
                      extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Path]:
    """``<save_path>_fake_quant.onnx``, ``_deploy.onnx`` and ``_quant_record.json`` through the ONNX exporters."""
    return write_outputs(onnx_model, table, save_path, extra)


def retrain_table(model: nn.Module, input_data: InputData,
                  dynamic_axes: Optional[Mapping[str, Mapping[int, str]]] = None) -> Tuple[onnx.ModelProto, QuantTable]:
    """The float ONNX model of a QAT model (``dynamic_axes`` as :func:`export_float_onnx` takes them) and the table
    of its learned qparams."""
    qls = quant_layers(model)
    if not qls:
        raise ModelError("the model has no QuantLayer: prepare it with create_quant_retrain_model first")
    m, folded = _export_folded(float_copy(model), input_data, dynamic_axes)
    infos = map_layers(m, qls)
    view = GraphView(m)
    table = QuantTable()
    for name, info in infos.items():
        ql = qls[name]
        aq = ql.act_quant
        s, z = aq.qparams()
        act = ActivationQuant(info.activation, s, z, aq.bits, "ulq", aq.clip_min.item(), aq.clip_max.item(),
                              {"fixed_min": aq.fixed_min, "layer": aq.name})
        wq = ql.quantized_weight()
        axis = info.axis if getattr(ql.weight_quant, "channel_wise", True) else None
        codes = wq["codes"]
        if folded.get(f"{name}.weight") == info.weight:  # MatMul(x, Transpose(weight)): the ONNX weight is [in, out]
            codes = np.ascontiguousarray(codes.T)
        weight = WeightQuant(info.weight, wq["scale"], wq["zero_point"], axis, ql.weight_quant.bits,
                             wq["algorithm"], codes)
        table.layers[info.name] = layer_quant(info, act, weight, view.array(info.bias) if info.bias else None)
    return m, table


def save_quant_retrain_model(config: Union[str, Path, Mapping[str, Any], RetrainConfig], model: nn.Module,
                             save_path: Union[str, Path], input_data: InputData,
                             dynamic_axes: Optional[Mapping[str, Mapping[int, str]]] = None) -> Dict[str, Path]:
    """Write the fake-quant model, the deploy model (no BN, integer weights) and the record of a QAT model.
    ``dynamic_axes``: the export's dynamic axes as torch takes them (default: axis 0 of each input and of the
    output), e.g. ``{"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}}`` for a transformer."""
    load_retrain_config(config)  # validated; the learned state lives in the model
    m, table = retrain_table(model, input_data, dynamic_axes)
    return write_quant_files(m, table, save_path, {"source": "torch-qat"})


def restore_quant_retrain_model(config: Union[str, Path, Mapping[str, Any], RetrainConfig], model: nn.Module,
                                checkpoint_path: Union[str, Path], input_data: Optional[InputData] = None,
                                map_location: Union[str, torch.device, Callable, None] = "cpu") -> nn.Module:
    """Prepare ``model`` like :func:`create_quant_retrain_model` and load a ``state_dict`` checkpoint of a QAT
    model (a bare state dict or ``{"state_dict": ...}``): the learned clips, their ``_pre`` values and the
    ``initialized`` flags come back, so training resumes without a new IFMR initialisation. Layers that shared one
    ULQ module when the checkpoint was saved share one again, with or without ``input_data``."""
    create_quant_retrain_model(config, model, input_data)
    state = torch.load(checkpoint_path, map_location=map_location, weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    share_as_saved(config, model, state)
    model.load_state_dict(state)
    return model
