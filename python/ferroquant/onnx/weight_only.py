"""Weight-only export for ONNX: every MatMul with a constant 2-D ``B`` and every Gemm with a constant ``B``
(``alpha = beta = 1``, no ``transA``) gets group-wise int4/int8 weights, written as onnxruntime's
``com.microsoft.MatMulNBits`` or as an opset-21 blocked ``DequantizeLinear`` feeding the original op.
Activations stay in float. GPTQ and AWQ read their statistics from calibration taps on the layers' inputs
(streamed batch by batch: GPTQ keeps a ``K x K`` Hessian per input tensor, AWQ a bounded row sample)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import onnx
from onnx import TensorProto, helper

from ferroquant.config.weight_only import WeightOnlyConfig
from ferroquant.errors import ConfigError, DataError
from ferroquant.onnx.calibration import CalibrationData, Progress, _check_feed, _report, iterate_batches, tapped_session
from ferroquant.onnx.graph import GraphView, get_attr, node_label
from ferroquant.onnx.io import convert_opset, default_opset, save_onnx
from ferroquant.onnx.layers import quantizable_layers
from ferroquant.onnx.record import dumps
from ferroquant.quant.registry import REGISTRY, TABLES
from ferroquant.quant.weight_only import (
    InputStatistics,
    WeightOnlyLayer,
    WeightOnlyQuant,
    blocked_arrays,
    matmulnbits_arrays,
    pack_nibbles,
    quantize_layer,
    record_entry,
)

MS_DOMAIN = "com.microsoft"
BLOCKED_DQ_OPSET = 21


def _gemm_ok(node: onnx.NodeProto) -> bool:
    return (get_attr(node, "alpha", 1.0) == 1.0 and get_attr(node, "beta", 1.0) == 1.0
            and not get_attr(node, "transA", 0))


def weight_only_layers(model: onnx.ModelProto, cfg: WeightOnlyConfig) -> List[WeightOnlyLayer]:
    """The layers of ``model`` the registry marks for weight-only quantization, minus ``cfg.skip_layers``."""
    view = GraphView(model)
    nodes = {node_label(n): n for n in view.nodes()}
    out = []
    for l in quantizable_layers(model):
        if not REGISTRY[l.op_type].weight_only or l.name in cfg.skip_layers:
            continue
        w = view.array(l.weight)
        node = nodes[l.name]
        if w.ndim != 2 or (l.op_type == "Gemm" and not _gemm_ok(node)):
            continue
        transposed = l.op_type == "Gemm" and bool(get_attr(node, "transB", 0))
        k, n = (w.shape[1], w.shape[0]) if transposed else w.shape
        out.append(WeightOnlyLayer(l.name, l.op_type, l.activation, l.weight, l.bias, transposed, int(k), int(n)))
    known = {l.name for l in quantizable_layers(model)}
    if cfg.embeddings:
        known |= {node_label(n) for n in model.graph.node if n.op_type in TABLES}
    unknown = sorted(set(cfg.skip_layers) - known)
    if unknown:
        what = "MatMul/Gemm/Gather" if cfg.embeddings else "MatMul/Gemm"
        raise ConfigError(f"field 'weight_only.skip_layers': the model has no {what} layers named {unknown}")
    return out


def weight_only_tables(model: onnx.ModelProto, cfg: WeightOnlyConfig) -> List[WeightOnlyLayer]:
    """The lookup tables (registry :data:`~ferroquant.quant.registry.TABLES`: Gather of a constant float32 2-D
    table on axis 0) of ``model``, minus ``cfg.skip_layers``: as layers with ``k`` the row width (grouped) and
    ``n`` the rows. With ``format="matmulnbits"`` a width that is not a multiple of ``group_size`` is a
    ConfigError naming the node (GatherBlockQuantized has no ragged blocks)."""
    view = GraphView(model)
    out = []
    for node in view.nodes():
        t = TABLES.get(node.op_type)
        if t is None or node.domain not in ("", "ai.onnx") or node_label(node) in cfg.skip_layers:
            continue
        w = view.array(node.input[t.table_input])
        if w is None or w.ndim != 2 or w.dtype != np.float32 or get_attr(node, "axis", 0) != 0 \
                or view.is_constant(node.input[t.indices_input]):
            continue
        label = node_label(node)
        if cfg.format == "matmulnbits" and w.shape[1] % cfg.group_size:
            raise ConfigError(f"{node.op_type} {label!r}: its table rows have {w.shape[1]} values, not a multiple "
                              f"of group_size {cfg.group_size} ({t.fused} has no ragged blocks): use format "
                              f"'qdq' or skip it (weight_only.skip_layers)")
        out.append(WeightOnlyLayer(label, node.op_type, node.input[t.indices_input], node.input[t.table_input],
                                   None, False, int(w.shape[1]), int(w.shape[0])))
    return out


def collect_statistics(model: onnx.ModelProto, layers: List[WeightOnlyLayer], cfg: WeightOnlyConfig,
                       data: CalibrationData, progress: Progress = False) -> tuple:
    """Run the calibration batches (at most ``cfg.batch_num``) with the layers' inputs tapped and stream each
    tapped tensor into its :class:`InputStatistics`. Returns (statistics by tensor, batches)."""
    readers: Dict[str, List[str]] = {}
    for l in layers:
        readers.setdefault(l.activation, []).append(l.name)
    ks = {l.activation: l.k for l in layers}
    stats = {t: InputStatistics.for_config(f"{t} (input of {', '.join(names)})", ks[t], cfg)
             for t, names in readers.items()}
    taps = list(stats)
    sess = tapped_session(model, taps)
    inputs = {i.name: i for i in sess.get_inputs()}
    unranked = {i.name for i in model.graph.input if not i.type.tensor_type.HasField("shape")}
    t0, n = time.perf_counter(), 0
    for feed in iterate_batches(data, list(inputs)):
        if cfg.batch_num is not None and n >= cfg.batch_num:
            break
        outs = sess.run(taps, _check_feed(feed, inputs, n, unranked))
        for t, arr in zip(taps, outs):
            stats[t].observe(arr)
        del outs
        n += 1
        _report(progress, n, cfg.batch_num, t0)
    if n == 0:
        raise DataError("the calibration data yielded no batch")
    return stats, n


@dataclass
class WeightOnlyModel:
    """What weight-only quantization returns: the float model, the config, and each layer's quantized weight."""

    model: onnx.ModelProto
    config: WeightOnlyConfig
    quants: Dict[str, WeightOnlyQuant]
    batches: int = 0
    timings: Dict[str, float] = field(default_factory=dict)

    def export(self) -> onnx.ModelProto:
        return export_weight_only(self.model, list(self.quants.values()), self.config.format,
                                  self.config.accuracy_level)

    def record(self) -> Dict[str, Any]:
        return {"kind": "weight_only", "config": self.config.to_json()["weight_only"], "batches": self.batches,
                "layers": {name: record_entry(q) for name, q in self.quants.items()}}


def quantize_weights_only(model: onnx.ModelProto, cfg: WeightOnlyConfig, data: Optional[CalibrationData] = None,
                          progress: Progress = False) -> WeightOnlyModel:
    """Quantize the weights of ``model`` (already loaded and fused) per ``cfg``; GPTQ/AWQ calibrate on ``data``."""
    layers = weight_only_layers(model, cfg)
    if not layers:
        raise ConfigError("the model has no MatMul (constant 2-D weight) or Gemm layer to quantize weight-only")
    t0 = time.perf_counter()
    stats, batches = {}, 0
    if cfg.needs_data:
        if data is None:
            raise DataError(f"weight-only {cfg.algorithm} needs calibration data")
        stats, batches = collect_statistics(model, layers, cfg, data, progress)
    t1 = time.perf_counter()
    view = GraphView(model)
    quants = {}
    for l in layers:
        w = view.array(l.weight).astype(np.float32)
        quants[l.name] = quantize_layer(l, w.T if l.transposed else w, cfg, stats.get(l.activation))
    rtn = replace(cfg, algorithm="rtn")  # a table has no activations for GPTQ/AWQ to weigh
    for t in weight_only_tables(model, cfg) if cfg.embeddings else ():
        quants[t.name] = quantize_layer(t, view.array(t.weight).T, rtn)
    return WeightOnlyModel(model, cfg, quants, batches,
                           {"calibration_s": t1 - t0, "quantize_s": time.perf_counter() - t1})


def _add_ints(view: GraphView, name: str, dtype: int, codes: np.ndarray, bits: int) -> None:
    """An int4/uint4/int8/uint8 initializer (4-bit values packed two a byte, the first in the low nibble)."""
    raw = pack_nibbles(codes.reshape(-1)) if bits == 4 else np.ascontiguousarray(codes)
    view.graph.initializer.append(helper.make_tensor(name, dtype, list(codes.shape), raw.tobytes(), raw=True))
    view.initializers[name] = view.graph.initializer[-1]


def _divide_input(view: GraphView, node: onnx.NodeProto, wq: WeightOnlyQuant, new: list) -> str:
    """AWQ: ``x / s`` in a Div node before the layer; returns the divided tensor's name."""
    label = node_label(node)
    s = view.unique_name(f"{label}.awq_scale")
    view.set_initializer(s, np.asarray(wq.input_divisor, np.float32))
    out = view.unique_name(f"{label}.awq_input")
    new.append(helper.make_node("Div", [node.input[0], s], [out], name=view.unique_name(f"{label}_awq_div")))
    return out


def _nbits_nodes(view: GraphView, node: onnx.NodeProto, wq: WeightOnlyQuant, a: str,
                 accuracy_level: Optional[int] = None) -> list:
    label, arr = node_label(node), matmulnbits_arrays(wq.quant)
    names = [a]
    for suffix, value in (("qweight", arr.packed), ("scales", arr.scales), ("zero_points", arr.zero_points)):
        if value is not None:
            names.append(view.unique_name(f"{label}.{suffix}"))
            view.set_initializer(names[-1], value)
    bias = wq.layer.bias
    out = view.unique_name(f"{label}.nbits_out") if bias else node.output[0]
    nodes = [helper.make_node("MatMulNBits", names, [out], name=view.unique_name(f"{label}_nbits"), domain=MS_DOMAIN,
                              K=arr.k, N=arr.n, bits=arr.bits, block_size=arr.block_size,
                              **({} if accuracy_level is None else {"accuracy_level": accuracy_level}))]
    if bias:
        nodes.append(helper.make_node("Add", [out, bias], [node.output[0]], name=view.unique_name(f"{label}_bias")))
    return nodes


def _blocked_nodes(view: GraphView, node: onnx.NodeProto, wq: WeightOnlyQuant, a: str) -> list:
    label, arr = node_label(node), blocked_arrays(wq.quant)
    kind = {(4, True): TensorProto.INT4, (4, False): TensorProto.UINT4, (8, True): TensorProto.INT8,
            (8, False): TensorProto.UINT8}[(arr.bits, arr.signed)]
    codes = view.unique_name(f"{label}.qweight")
    _add_ints(view, codes, kind, arr.codes, arr.bits)
    scales = view.unique_name(f"{label}.scales")
    view.set_initializer(scales, arr.scales)
    dq_in = [codes, scales]
    if arr.zero_points is not None:
        dq_in.append(view.unique_name(f"{label}.zero_points"))
        _add_ints(view, dq_in[-1], kind, arr.zero_points, arr.bits)
    w = view.unique_name(f"{label}.weight_dq")
    dq = helper.make_node("DequantizeLinear", dq_in, [w], name=view.unique_name(f"{label}_dq"), axis=0,
                          block_size=arr.block_size)
    inputs = [a, w] + list(node.input[2:])
    attrs = {a_.name: helper.get_attribute_value(a_) for a_ in node.attribute if a_.name != "transB"}
    layer = helper.make_node(node.op_type, inputs, list(node.output), name=node.name, **attrs)
    return [dq, layer]


def _table_nodes(view: GraphView, node: onnx.NodeProto, wq: WeightOnlyQuant, fmt: str) -> list:
    """A quantized lookup table: ``GatherBlockQuantized`` (``matmulnbits``), or blocked DequantizeLinear
    (``axis=1``: groups along each row) feeding the original Gather (``qdq``)."""
    label, t, q = node_label(node), TABLES[node.op_type], wq.quant
    indices = node.input[t.indices_input]
    if fmt == "matmulnbits":
        arr = matmulnbits_arrays(q)  # rows [V, G, group_size * bits / 8]: a table row is a MatMulNBits column
        names = [view.unique_name(f"{label}.qtable"), indices, view.unique_name(f"{label}.scales")]
        view.set_initializer(names[0], arr.packed.reshape(arr.n, -1))
        view.set_initializer(names[2], arr.scales)
        if arr.zero_points is not None:
            names.append(view.unique_name(f"{label}.zero_points"))
            view.set_initializer(names[-1], arr.zero_points)
        return [helper.make_node(t.fused, names, list(node.output), name=node.name, domain=MS_DOMAIN,
                                 gather_axis=0, quantize_axis=1, block_size=arr.block_size, bits=arr.bits)]
    arr = blocked_arrays(q)
    kind = {(4, True): TensorProto.INT4, (4, False): TensorProto.UINT4, (8, True): TensorProto.INT8,
            (8, False): TensorProto.UINT8}[(arr.bits, arr.signed)]
    codes = view.unique_name(f"{label}.qtable")
    _add_ints(view, codes, kind, np.ascontiguousarray(arr.codes.T), arr.bits)
    scales = view.unique_name(f"{label}.scales")
    view.set_initializer(scales, np.ascontiguousarray(arr.scales.T))
    dq_in = [codes, scales]
    if arr.zero_points is not None:
        dq_in.append(view.unique_name(f"{label}.zero_points"))
        _add_ints(view, dq_in[-1], kind, np.ascontiguousarray(arr.zero_points.T), arr.bits)
    table = view.unique_name(f"{label}.table_dq")
    inputs = list(node.input)
    inputs[t.table_input] = table
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return [helper.make_node("DequantizeLinear", dq_in, [table], name=view.unique_name(f"{label}_dq"), axis=1,
                             block_size=arr.block_size),
            helper.make_node(node.op_type, inputs, list(node.output), name=node.name, **attrs)]


def export_weight_only(model: onnx.ModelProto, quants: List[WeightOnlyQuant], fmt: str,
                       accuracy_level: Optional[int] = None) -> onnx.ModelProto:
    """A copy of ``model`` with each quantized layer replaced (``matmulnbits``) or fed a dequantized weight
    (``qdq``: blocked DequantizeLinear, the model converted to opset 21 when older)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if fmt == "qdq" and default_opset(out) < BLOCKED_DQ_OPSET:
        out = convert_opset(out, BLOCKED_DQ_OPSET)
    view = GraphView(out)
    by_name = {q.layer.name: q for q in quants}
    nodes: List[onnx.NodeProto] = []
    for node in list(out.graph.node):
        wq = by_name.get(node_label(node))
        if wq is None:
            nodes.append(node)
            continue
        if node.op_type in TABLES:
            nodes += _table_nodes(view, node, wq, fmt)
            continue
        a = _divide_input(view, node, wq, nodes) if wq.input_divisor is not None else node.input[0]
        if fmt == "matmulnbits":
            nodes += _nbits_nodes(view, node, wq, a, accuracy_level)
        else:
            nodes += _blocked_nodes(view, node, wq, a)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if fmt == "matmulnbits" and not any(i.domain == MS_DOMAIN for i in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    GraphView(out).prune_initializers()
    return out


def write_weight_only_files(deploy: onnx.ModelProto, record: Dict[str, Any],
                            save_path: Union[str, Path]) -> Dict[str, Path]:
    """Write ``<save_path>_deploy.onnx`` (a weight-only model) and ``<save_path>_quant_record.json``."""
    base = Path(save_path)
    paths = {"deploy": Path(f"{base}_deploy.onnx"), "record": Path(f"{base}_quant_record.json")}
    paths["deploy"].parent.mkdir(parents=True, exist_ok=True)
    save_onnx(deploy, paths["deploy"])
    paths["record"].write_text(dumps(record) + "\n", encoding="utf-8")
    return paths


def save_weight_only(wom: WeightOnlyModel, save_path: Union[str, Path]) -> Dict[str, Path]:
    """Write ``<save_path>_deploy.onnx`` (the weight-only model) and ``<save_path>_quant_record.json`` (every
    layer's groups: scales and zero points per output column)."""
    return write_weight_only_files(wom.export(), wom.record(), save_path)


__all__ = ["WeightOnlyModel", "collect_statistics", "export_weight_only", "quantize_weights_only",
           "save_weight_only", "weight_only_layers", "weight_only_tables", "write_weight_only_files"]
