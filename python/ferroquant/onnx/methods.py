"""The accuracy methods of issue 15 as steps of the ONNX flow: what runs on the fused model before calibration
(cross-layer equalization; a zero bias for Convs whose bias will be corrected and have none) and the input
statistics streamed during calibration for empirical bias correction. :func:`ferroquant.onnx.quantize_model`
calls these only when the config turns a method on, so the default flow is unchanged."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import onnx

from ferroquant.config import QuantConfig
from ferroquant.onnx.equalize import equalize, max_relative_difference
from ferroquant.onnx.graph import GraphView, get_attr, node_label
from ferroquant.quant.adaround import LayerGram
from ferroquant.quant.moments import LayerMoments, PatchSpec
from ferroquant.quant.output_clip import LayerPatches
from ferroquant.quant.table import LayerInfo


def corrected_layers(cfg: QuantConfig, layers: Sequence[LayerInfo]) -> List[LayerInfo]:
    """The enabled Conv layers whose config asks for empirical bias correction (other op types are left as
    they are)."""
    return [l for l in layers if l.op_type == "Conv" and cfg.layers[l.name].weight.bias_correction == "empirical"]


def _add_zero_biases(model: onnx.ModelProto, names: Sequence[str]) -> List[str]:
    """Give each Conv of ``names`` without a bias a zero bias (so that a correction has somewhere to go)."""
    view = GraphView(model)
    added = []
    for node in model.graph.node:
        if node_label(node) in names and (len(node.input) < 3 or not node.input[2]):
            w = view.array(node.input[1])
            view.write_input(node, 2, np.zeros(w.shape[0], w.dtype), "bias")
            added.append(node_label(node))
    return added


def bn_statistics(fusion: Any) -> Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """Per Conv node name, the ``(beta, |gamma|)`` of the BatchNormalization folded into it (from a
    :class:`~ferroquant.onnx.fusion.FusionReport`)."""
    folded = getattr(fusion, "folded", ()) or ()
    return {f.into: (f.beta, f.spread) for f in folded if f.kind == "conv_bn" and f.beta}


def apply_methods(cfg: QuantConfig, model: onnx.ModelProto, layers: Sequence[LayerInfo], fusion: Any = None
                  ) -> Tuple[onnx.ModelProto, Dict[str, Any]]:
    """The model the calibration runs on, and what was done (for the record: ``equalization``, and
    ``bias_correction`` with the layers that got a zero bias). ``fusion``: the fusion report (BN statistics for
    bias absorption)."""
    done: Dict[str, Any] = {}
    eq = cfg.methods.equalization
    if eq.enabled:
        model, report = equalize(model, eq, bn_statistics(fusion))
        done["equalization"] = report.to_json()
    corrected = corrected_layers(cfg, layers)
    if corrected:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        added = _add_zero_biases(copy, [l.name for l in corrected])
        model = copy if added else model
        done["bias_correction"] = {"method": "empirical", "layers": [l.name for l in corrected],
                                   "zero_bias_added": added}
    return model, done


def fp32_change(before: onnx.ModelProto, after: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> float:
    """The largest relative difference (:func:`~ferroquant.onnx.equalize.max_relative_difference`) between the
    outputs of two float models on one batch."""
    from ferroquant.onnx.calibration import tapped_session

    outs = [tapped_session(m, []).run(None, dict(feed)) for m in (before, after)]
    return max(max_relative_difference(a, b) for a, b in zip(*outs))


def patch_spec(node: onnx.NodeProto, weight_shape: Sequence[int]) -> PatchSpec:
    """How Conv ``node`` reads its input, from its attributes (ONNX defaults where absent)."""
    r = len(weight_shape) - 2
    kernel = tuple(int(k) for k in (get_attr(node, "kernel_shape") or weight_shape[2:]))
    pads = tuple(int(p) for p in (get_attr(node, "pads") or (0,) * (2 * r)))
    auto = get_attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    return PatchSpec("conv", kernel, tuple(int(s) for s in (get_attr(node, "strides") or (1,) * r)), pads,
                     tuple(int(d) for d in (get_attr(node, "dilations") or (1,) * r)),
                     int(get_attr(node, "group", 1)), auto)


def layer_moments(cfg: QuantConfig, model: onnx.ModelProto, layers: Sequence[LayerInfo]
                  ) -> Dict[str, LayerMoments]:
    """One input-statistics stream per layer to bias-correct, by layer name."""
    view = GraphView(model)
    nodes = {node_label(n): n for n in model.graph.node}
    return {l.name: LayerMoments(patch_spec(nodes[l.name], view.array(l.weight).shape))
            for l in corrected_layers(cfg, layers)}


def _patch_refusal(node: onnx.NodeProto, layer: LayerInfo, weight_shape: Sequence[int]) -> str:
    """Why ``layer``'s input cannot be read as patches times a ``[c_out, p]`` weight ('' when it can)."""
    if layer.op_type == "Gemm" and int(get_attr(node, "transA", 0)):
        return "Gemm with transA"
    if layer.op_type == "MatMul" and len(weight_shape) != 2:
        return f"MatMul weight of rank {len(weight_shape)}"
    if layer.op_type not in ("Conv", "Gemm", "MatMul"):
        return f"op type {layer.op_type}"
    return ""


def _rounding_refusal(cfg: QuantConfig, node: onnx.NodeProto, layer: LayerInfo, weight_shape: Sequence[int]) -> str:
    """Why learned rounding does not apply to ``layer`` ('' when it does)."""
    if cfg.layers[layer.name].weight.algorithm != "arq":
        return "NUQ weights (learned rounding keeps an ARQ grid)"
    return _patch_refusal(node, layer, weight_shape)


def layer_grams(cfg: QuantConfig, model: onnx.ModelProto, layers: Sequence[LayerInfo]
                ) -> Tuple[Dict[str, LayerGram], Dict[str, str]]:
    """One input-patch Gram stream per layer whose weights learned rounding will round (when the config turns
    it on), by layer name; and the layers it skips, with the reason."""
    params = cfg.methods.adaround
    if not params.enabled:
        return {}, {}
    view = GraphView(model)
    nodes = {node_label(n): n for n in model.graph.node}
    grams: Dict[str, LayerGram] = {}
    skipped: Dict[str, str] = {}
    for l in layers:
        shape = view.array(l.weight).shape
        why = _rounding_refusal(cfg, nodes[l.name], l, shape)
        if why:
            skipped[l.name] = why
            continue
        spec = patch_spec(nodes[l.name], shape) if l.op_type == "Conv" else PatchSpec("matmul")
        grams[l.name] = LayerGram(spec, params.rows_per_batch, name=f"{l.name} (calibration activations)")
    return grams, skipped


def layer_patches(cfg: QuantConfig, model: onnx.ModelProto, layers: Sequence[LayerInfo], per_channel: Sequence[str]
                  ) -> Tuple[Dict[str, LayerPatches], Dict[str, str]]:
    """Output-aware clip search's input samples: one per layer that reads a tensor whose first reader asks for
    ``activation.output_clip`` (every Conv / Gemm / MatMul reader of it), by layer name; and what it skips
    (tensors with per-channel activations in ``per_channel``, readers it cannot read as patches), with the
    reason."""
    first: Dict[str, LayerInfo] = {}
    for l in layers:
        first.setdefault(l.activation, l)
    searched = {t for t, l in first.items() if cfg.layers[l.name].activation.output_clip}
    skipped = {t: "per-channel activation scales" for t in sorted(searched & set(per_channel))}
    searched -= set(per_channel)
    if not searched:
        return {}, skipped
    params = cfg.methods.output_clip
    view = GraphView(model)
    nodes = {node_label(n): n for n in model.graph.node}
    streams: Dict[str, LayerPatches] = {}
    for l in layers:
        if l.activation not in searched:
            continue
        shape = view.array(l.weight).shape
        why = _patch_refusal(nodes[l.name], l, shape)
        if why:
            skipped[l.name] = f"reader of {l.activation}: {why}"
            continue
        spec = patch_spec(nodes[l.name], shape) if l.op_type == "Conv" else PatchSpec("matmul")
        streams[l.name] = LayerPatches(spec, params.rows_per_batch, params.max_rows,
                                       name=f"{l.name} (calibration activations)")
    return streams, skipped


__all__ = ["apply_methods", "bn_statistics", "fp32_change", "corrected_layers", "layer_grams", "layer_moments",
           "layer_patches", "patch_spec"]
