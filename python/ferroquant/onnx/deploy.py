"""Deploy models per profile: the Q/DQ :class:`~ferroquant.onnx.qdq.Layout` of a calibrated model, and the rule
checker each profile runs before anything is written.

Rules (a :class:`Violation` names the node and the rule):

- every profile: the opset is one the target parses;
- ``onnxruntime``: a quantized layer whose op type has no onnxruntime placement in the registry has no integer
  kernel there (ConvTranspose: it runs in float behind its Q/DQ; ``no_integer_kernel``); on a CPU without VNNI,
  int8 weights that use more than 7 bits beside uint8 activations can saturate onnxruntime's u8 x s8 kernels
  (``weights_saturate``);
- ``tensorrt``: every zero point is 0 (symmetric int8), activations are int8, weights are per-channel on the
  output-channel axis or per tensor, weights have at most 8 bits.
- ``onnxruntime`` and ``tensorrt``: activations are quantized per tensor (``per_channel_activation``: neither
  fuses a per-axis activation Q/DQ into its integer kernels; the ``amct`` simulation layout takes them).
- ``onnxruntime``: a quantized layer's input has at most 8 bits (``wide_activation``: onnxruntime's CPU has no
  integer kernel for int16 activations, it runs their Q/DQ only as a simulation, in float; mixed precision's
  16-bit activations are for the ``amct`` simulation layout). TensorRT's ``type`` rule refuses them as well.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ferroquant.errors import ModelError
from ferroquant.onnx.calibration import CalibratedModel
from ferroquant.onnx.graph import GraphView, node_label
from ferroquant.onnx.io import default_opset
from ferroquant.onnx.latency import LatencyReport, slow_layers, time_models
from ferroquant.onnx.qdq import Layout, export_deploy
from ferroquant.quant.calibrators import bounded
from ferroquant.quant.profiles import CpuTypes, Profile
from ferroquant.quant.table import ActivationQuant, LayerQuant, QuantTable

METADATA_PREFIX = "ferroquant."
#: Profiles whose runtimes take only per-tensor activation scales.
PER_TENSOR_ACTIVATIONS = ("onnxruntime", "tensorrt")


@dataclass(frozen=True)
class Violation:
    """A pattern the target cannot run as the profile intends: ``node`` and the ``rule`` it breaks. ``slow``
    violations are correct but not faster (the layer has no integer kernel): their layers are kept float with a
    warning; the others (saturation, zero points, types, opsets) are errors unless the user allows float."""

    node: str
    rule: str
    message: str
    slow: bool = False

    def __str__(self) -> str:
        return f"node {self.node!r}: {self.rule}: {self.message}"


def deploy_layout(cm: CalibratedModel, table: QuantTable) -> Optional[Layout]:
    """The Q/DQ layout of ``cm``'s profile for ``table`` (None for ``amct``: the layers' inputs only): the plan's
    tensors that a layer of the table or a quantized op still needs (a layer kept in float no longer asks for
    its input and output), with their searched qparams; activations are absorbed only into kept tensors."""
    if cm.profile.placement == "amct":
        return None
    plan = cm.plan
    own: Dict[str, ActivationQuant] = dict(cm.activations)
    own.update({lq.activation.tensor: lq.activation for lq in table.layers.values()})
    own.update(table.tensors)
    inputs = {lq.activation.tensor for lq in table.layers.values()}
    tensors: Dict[str, ActivationQuant] = {}
    for t in plan.quantized([l.activation for l in cm.layers]):
        src = plan.carried.get(t, t)
        if src not in own or not plan.needed(t, inputs, set(table.layers)):
            continue
        aq = own[src]
        if src in plan.bounds:
            aq = bounded(aq, *plan.bounds[src])
        tensors[t] = replace(aq, tensor=t)
    absorbed = tuple(label for label, t in plan.absorbed.items() if t in tensors)
    meta = {f"{METADATA_PREFIX}profile": cm.profile.name, f"{METADATA_PREFIX}cpu_types": cm.cpu.name,
            f"{METADATA_PREFIX}cpu_types_reason": cm.cpu.reason}
    weight_bits = cm.cpu.max_weight_bits if cm.cpu.max_weight_bits < 8 else None
    return Layout(tensors, absorbed, cm.profile.all_readers, cm.cpu.unsigned_activations, weight_bits, meta)


def _const(view: GraphView, name: str) -> Optional[np.ndarray]:
    """The initializer ``name`` as an array (converted when a rule reads it), or None."""
    t = view.initializers.get(name)
    return None if t is None else numpy_helper.to_array(t)


def _weight_dq(view: GraphView, node: onnx.NodeProto) -> Optional[onnx.NodeProto]:
    p = view.producer(node.input[1]) if len(node.input) > 1 else None
    return p if p is not None and p.op_type == "DequantizeLinear" else None


def _wide(lq: LayerQuant) -> bool:
    """Whether a layer needs the wide opset (int4 weights, non-8-bit activations, blocked Q/DQ)."""
    return lq.weight.bits <= 4 or lq.activation.bits != 8 or lq.layer.blocked(lq.weight.axis is not None)


def check_rules(model: onnx.ModelProto, profile: Profile, cpu: CpuTypes, table: Optional[QuantTable] = None
                ) -> List[Violation]:
    """Every violation of ``profile``'s rules in the deploy ``model`` made from ``table`` (see the module
    docstring). An opset the target does not parse is blamed on the layers that need it, when known."""
    out: List[Violation] = []
    layers = list(table.layers.values()) if table is not None else []
    opset = default_opset(model)
    lo, hi = profile.opsets
    if not lo <= opset <= hi:
        msg = f"opset {opset}; {profile.name} parses {lo} to {hi}"
        wide = [lq.layer.name for lq in layers if _wide(lq)]
        out.extend(Violation(name, "opset", msg) for name in wide or ["<model>"])
    view = GraphView(model)
    for node in model.graph.node:
        label = node_label(node)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            out.extend(_check_qdq(node, label, view, profile))
        elif node.op_type in ("Conv", "Gemm", "MatMul") and profile.name == "onnxruntime":
            dq = _weight_dq(view, node)
            if dq is not None and not cpu.unsigned_activations:
                continue
            if dq is not None and cpu.max_weight_bits < 8:
                codes = _const(view, dq.input[0])
                if codes is not None and codes.dtype == np.int8 and (codes.min() < -64 or codes.max() > 63):
                    out.append(Violation(label, "weights_saturate",
                                         f"int8 weight codes in [{codes.min()}, {codes.max()}] beside uint8 "
                                         f"activations: {cpu.reason}; quantize with 7-bit weights (ARQ) or deploy "
                                         "on a CPU with VNNI (cpu_types='u8s8')"))
    for lq in layers:
        if lq.activation.per_channel and profile.name in PER_TENSOR_ACTIVATIONS:
            out.append(Violation(lq.layer.name, "per_channel_activation",
                                 f"{profile.name} quantizes activations per tensor: the per-channel scales of "
                                 f"{lq.activation.tensor!r} (activation.channel_wise) are for runtimes that take "
                                 "them; use the amct profile, or cross-layer equalization for a per-tensor model"))
        if lq.activation.bits > 8 and profile.name == "onnxruntime":
            out.append(Violation(lq.layer.name, "wide_activation",
                                 f"onnxruntime's CPU kernels take 8-bit activations; the {lq.activation.bits}-bit "
                                 f"Q/DQ of {lq.activation.tensor!r} would run only as a simulation, in float; use "
                                 "the amct profile (simulation), or 8-bit activations"))
    for layer in (lq.layer for lq in layers):
        if profile.placement != "amct" and profile.placement not in layer.type.placements:
            out.append(Violation(layer.name, "no_integer_kernel", f"{profile.name} has no integer kernel for "
                                                                  f"{layer.op_type}: it would run in float behind "
                                                                  "its Q/DQ", slow=True))
    return out


def _check_qdq(node: onnx.NodeProto, label: str, view: GraphView, profile: Profile) -> List[Violation]:
    if profile.name != "tensorrt":
        return []
    zp = _const(view, node.input[2])
    out = []
    if zp is not None and np.any(zp != 0):
        out.append(Violation(label, "zero_point", "TensorRT's explicit quantization needs zero points of 0 "
                                                  "(symmetric int8)"))
    if zp is not None and zp.dtype != np.int8 and zp.dtype.kind in "iu" and zp.dtype != np.int32:
        out.append(Violation(label, "type", f"{zp.dtype} Q/DQ; TensorRT takes int8"))
    return out


def enforce(violations: List[Violation], allowed: bool = False) -> List[Violation]:
    """Raise a ModelError for the first error-violation unless ``allowed``; warn about the layers that will be
    kept float. Returns the violations whose layers are kept float."""
    errors = [v for v in violations if not v.slow]
    if errors and not allowed:
        v = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ModelError(f"{v.rule}: {v.message}{more}; or allow float layers (allow_float=True, --allow-float)",
                         v.node)
    if violations:
        warnings.warn(kept_float_message(violations), RuntimeWarning, stacklevel=3)
    return violations


def kept_float_message(violations: List[Violation]) -> str:
    """Which layers the deploy profile keeps in float, why, and what the user can do, in one paragraph."""
    nodes = sorted({v.node for v in violations})
    head = f"{len(nodes)} layer{'s' if len(nodes) > 1 else ''} kept in float ({', '.join(nodes)}) in the deploy model"
    slow = [v for v in violations if v.slow]
    rest = [v for v in violations if not v.slow]
    parts = []
    if slow:
        parts.append("; ".join(str(v) for v in slow) + " (nothing to fix: the layer runs "
                     "correctly in float, and quantizing it would not make it faster on this runtime)")
    if rest:
        parts.append("; ".join(str(v) for v in rest) + " (kept in float because "
                     "allow_float / --allow-float was given; to quantize it, change what the rule names in the "
                     "layer's config, or choose another --profile or --cpu-types)")
    return f"{head}: " + "; ".join(parts)




def quantized_output(model: onnx.ModelProto, out: str, absorbed: Mapping[str, object]) -> str:
    """The tensor that carries layer output ``out``'s qparams: past the activations absorbed after it."""
    view = GraphView(model)
    while True:
        users = view.consumers_of(out)
        if len(users) != 1 or node_label(users[0]) not in absorbed:
            return out
        out = users[0].output[0]


def check_latency(cm: CalibratedModel, table: QuantTable, layout: Optional[Layout], feed: Mapping[str, np.ndarray],
                  runs: int = 7, deploy: Optional[onnx.ModelProto] = None
                  ) -> Tuple[QuantTable, Optional[Layout], LatencyReport]:
    """Time the deploy model (``deploy``, when already exported from ``table`` and ``layout``) against FP32
    and keep slower layers in float (see :mod:`ferroquant.onnx.latency`). Returns ``table`` itself when no
    layer changed."""
    fp32 = cm.model
    (t_fp32, t_dep), done = time_models([fp32, deploy if deploy is not None else export_deploy(fp32, table, layout)],
                                        feed, runs)
    report = LatencyReport(t_fp32 * 1e3, t_dep * 1e3, done)
    if t_dep < t_fp32 or not table.layers:
        return table, layout, report
    nodes = {node_label(n): n for n in fp32.graph.node}

    def quantize_one(single: onnx.ModelProto, name: str) -> onnx.ModelProto:
        lq = table.layers[name]
        tensors = {lq.activation.tensor: (layout.tensors if layout else {}).get(lq.activation.tensor, lq.activation)}
        out = quantized_output(fp32, nodes[name].output[0], cm.plan.absorbed)
        if layout is not None and out in layout.tensors:
            tensors[nodes[name].output[0]] = replace(layout.tensors[out], tensor=nodes[name].output[0])
        one = Layout(tensors, (), True, layout.unsigned if layout else False,
                     layout.signed_weight_bits if layout else None)
        return export_deploy(single, QuantTable({name: lq}), one)

    report.layer_us = slow_layers(fp32, list(table.layers), quantize_one, feed)
    report.kept_float = [n for n, (f, i) in report.layer_us.items() if i > f]
    table = table.without(report.kept_float)
    layout = deploy_layout(cm, table)
    (t_fp32, t_dep), _ = time_models([fp32, export_deploy(fp32, table, layout)], feed, runs)
    report.fp32_ms, report.deploy_ms = t_fp32 * 1e3, t_dep * 1e3
    if t_dep >= t_fp32:
        report.all_float, report.kept_float = True, list(table.layers) + report.kept_float
        warnings.warn(f"the quantized model ran slower than FP32 here ({t_dep * 1e3:.2f} ms against "
                      f"{t_fp32 * 1e3:.2f} ms) even with its slow layers in float: every layer is kept in float. "
                      "Skip the check (latency_check=False, --no-latency-check) to write the quantized model anyway.",
                      RuntimeWarning, stacklevel=3)
        table = QuantTable()
        layout = deploy_layout(cm, table)
        if layout is not None:  # no Q/DQ anywhere (residual Adds, outputs): the model written is the FP32 one
            layout = replace(layout, tensors={}, absorbed=())
        report.deploy_ms = report.fp32_ms
    elif report.kept_float:
        warnings.warn(f"kept in float because their integer kernels are slower here: {', '.join(report.kept_float)} "
                      "(timed on this machine with onnxruntime; latency_check=False / --no-latency-check writes them "
                      "quantized, e.g. for a machine with other kernels)", RuntimeWarning, stacklevel=3)
    return table, layout, report


__all__ = ["Violation", "check_latency", "check_rules", "deploy_layout", "enforce", "kept_float_message",
           "quantized_output"]
