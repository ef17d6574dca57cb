"""QDQ export: turn a float model and a filled :class:`~ferroquant.onnx.layers.QuantTable` into ONNX graphs
that onnxruntime runs.

- :func:`export_fake_quant` (simulation): each quantized activation tensor gets ONE
  ``QuantizeLinear -> DequantizeLinear`` pair, read by every quantized layer that consumes it (other readers
  keep the float tensor); each ARQ weight stays a float initializer behind ``QuantizeLinear ->
  DequantizeLinear``, so the graph computes exactly fake-quant(weight). NUQ weights are not a uniform rounding
  of ``w / s`` (the levels are a subset of the grid), so for them the int codes feed a ``DequantizeLinear``
  directly, as in the deploy model. Biases stay float.
- :func:`export_deploy`: the same activation pairs; weights are integer initializers (the codes) behind
  ``DequantizeLinear``; a bias with codes in the table (:func:`ferroquant.quant.weights.quantize_bias`: int32
  ``round(b / (s_in * s_w[c]))``) becomes an int32 initializer behind ``DequantizeLinear(scale = s_in * s_w,
  zero_point = 0, axis = 0)``, the QDQ bias pattern onnxruntime fuses. The float weights (and biases) nobody
  else reads are removed. The exporters copy the table's numbers; they do no quantization arithmetic.

Decisions. The integer offset ``o`` of spec section 0 is the ONNX ``zero_point``. Activations: 8 bits -> int8
(opset 13); 16 bits -> int16 and 4 bits -> int4 (opset 21); any other width raises :class:`ConfigError`
(``QuantizeLinear`` saturates at its type's range, so it cannot emulate e.g. 6-bit activations). Weights: codes
of 5..8 bits are stored as int8, of 2..4 bits as int4 (opset 21), in both models.
Per-channel activations (a depthwise Conv's input, :class:`ActivationQuant` with ``axis``) get a per-axis
Q/DQ pair (``axis=1``). A grouped ConvTranspose
(``group > 1``) with per-channel weights cannot use per-axis Q/DQ (output channel ``gi*(C_out/g)+j`` lives on
rows of group ``gi`` in column ``j``); it is exported with *blocked* quantization (opset 21, ``axis=0``,
``block_size = C_in/g``, a scale tensor of shape ``[g, C_out/g, *kernel]``), which is exact. The model is
converted to the opset needed (13 or 21) with the ONNX version converter. The input model is never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ferroquant.errors import ConfigError, ModelError
from ferroquant.onnx.external import Skeleton, reattach, skeleton
from ferroquant.onnx.graph import GraphView, ensure_node_names, names_inside, node_label
from ferroquant.onnx.io import check_model, convert_opset, default_opset, min_ir_version
from ferroquant.onnx.shapes import infer_or_keep
from ferroquant.quant.table import ActivationQuant, LayerQuant, QuantTable, WeightQuant

BASE_OPSET = 13
WIDE_OPSET = 21  # int4 / int16 Q/DQ and blocked quantization
_ACT_TYPES = {4: TensorProto.INT4, 8: TensorProto.INT8, 16: TensorProto.INT16}


@dataclass(frozen=True)
class _Layer:
    """A table entry matched to its node, with the weight's shape."""

    node: onnx.NodeProto
    lq: LayerQuant
    w_shape: Tuple[int, ...]

    @property
    def blocked(self) -> bool:
        """Grouped ConvTranspose with per-channel weights: needs blocked Q/DQ (see the registry)."""
        return self.lq.layer.blocked(self.lq.weight.axis is not None)


@dataclass(frozen=True)
class Layout:
    """Where a deploy profile puts activation Q/DQ beyond the layers' inputs (see
    :func:`ferroquant.onnx.placement.plan_deploy`): ``tensors`` holds the qparams of every quantized activation
    tensor (the layers' inputs included; a carried tensor has its source's qparams), ``absorbed`` the labels of
    Relu/Clip nodes to remove, ``all_readers`` whether every reader of a quantized tensor reads the DQ output,
    ``unsigned`` whether 8-bit activations are written as uint8 (zero point + 128, the same grid),
    ``signed_weight_bits`` the widest int8 weight codes the CPU's kernels take (wider ones go as uint8), and
    ``metadata`` what goes into the model's metadata_props."""

    tensors: Mapping[str, ActivationQuant]
    absorbed: Tuple[str, ...] = ()
    all_readers: bool = True
    unsigned: bool = False
    signed_weight_bits: Optional[int] = None
    metadata: Mapping[str, str] = field(default_factory=dict)


def _act_type(aq: ActivationQuant, unsigned: bool = False) -> int:
    if aq.bits not in _ACT_TYPES:
        raise ConfigError(f"activation {aq.tensor!r}: bits={aq.bits} cannot be exported; QuantizeLinear "
                          f"supports {sorted(_ACT_TYPES)} bits (int4, int8, int16)")
    return TensorProto.UINT8 if unsigned and aq.bits == 8 else _ACT_TYPES[aq.bits]


def _weight_type(wq: WeightQuant, layer: str) -> int:
    if not 2 <= wq.bits <= 8:
        raise ConfigError(f"layer {layer!r}: weight bits={wq.bits} outside 2..8 (codes are stored as int4/int8)")
    return TensorProto.INT4 if wq.bits <= 4 else TensorProto.INT8


def _is_nuq(wq: WeightQuant) -> bool:
    return wq.levels is not None or wq.algorithm.lower().startswith("nuq")


def _int_tensor(name: str, values: np.ndarray, elem_type: int) -> TensorProto:
    """An integer initializer of ONNX type ``elem_type`` (int4 is packed two per byte by onnx)."""
    values = np.asarray(values)
    if elem_type == TensorProto.INT4:
        return helper.make_tensor(name, elem_type, values.shape, values.astype(np.int64).ravel().tolist())
    dtype = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT16: np.int16,
             TensorProto.INT32: np.int32}[elem_type]
    return numpy_helper.from_array(values.astype(dtype), name)


def _check_activation(aq: ActivationQuant, layer: str) -> None:
    _act_type(aq)
    # The qparams as Python numbers (after the same conversions as the export's): hundreds of layers and
    # tensors are checked per export, and NumPy reductions over 0-d arrays cost more than the check itself
    scales, zps = (a.ravel().tolist() for a in _act_qparams(aq))
    if not all(math.isfinite(v) and v > 0 for v in scales):
        raise ConfigError(f"layer {layer!r}: activation {aq.tensor!r} has scale {aq.scale!r} (must be > 0)")
    lo, hi = -(1 << (aq.bits - 1)), (1 << (aq.bits - 1)) - 1
    if not all(lo <= z <= hi for z in zps):
        raise ConfigError(f"layer {layer!r}: activation {aq.tensor!r} zero_point {aq.zero_point} "
                          f"outside [{lo}, {hi}]")
    if aq.per_channel and (len(scales) != len(zps) or not scales):
        raise ConfigError(f"layer {layer!r}: activation {aq.tensor!r}: {len(scales)} channel scales and "
                          f"{len(zps)} zero points")


def _act_qparams(aq: ActivationQuant) -> Tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of an activation: 0-d per tensor, 1-d per channel."""
    if aq.per_channel:
        return (np.asarray(aq.channel_scales, np.float64).ravel(),
                np.asarray(aq.channel_zero_points, np.int64).ravel())
    return np.asarray(aq.scale, np.float64), np.asarray(aq.zero_point, np.int64)


def _check_weight(ly: _Layer) -> None:
    layer, wq = ly.lq.layer, ly.lq.weight
    _weight_type(wq, layer.name)
    if wq.tensor != layer.weight:
        raise ConfigError(f"layer {layer.name!r}: weight qparams are for {wq.tensor!r}, not {layer.weight!r}")
    if wq.axis is not None and wq.axis != layer.axis:
        raise ConfigError(f"layer {layer.name!r}: weight axis {wq.axis} but the layer's channel axis is {layer.axis}")
    scale = np.asarray(wq.scale)
    want = 1 if wq.axis is None else ly.w_shape[1] * layer.groups if ly.blocked else ly.w_shape[wq.axis]
    if scale.size != want or np.asarray(wq.zero_point).size != want:
        raise ConfigError(f"layer {layer.name!r}: {scale.size} weight scales / "
                          f"{np.asarray(wq.zero_point).size} zero points, expected {want}")
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ConfigError(f"layer {layer.name!r}: weight scales must be finite and > 0")
    if tuple(np.shape(wq.codes)) != ly.w_shape:
        raise ConfigError(f"layer {layer.name!r}: codes shape {np.shape(wq.codes)} != weight shape {ly.w_shape}")


def _match(model: onnx.ModelProto, table: QuantTable, dims: Dict[str, Tuple[int, ...]]) -> List[_Layer]:
    """Find each table entry's node (by label, before unnamed nodes get names) and check its qparams;
    ``dims`` are the shapes of the source model's initializers."""
    by_label = {node_label(n): n for n in model.graph.node}
    out, acts = [], {}
    for name, lq in table.layers.items():
        node = by_label.get(name)
        wi = lq.layer.type.weight_input
        if node is None or node.op_type != lq.layer.op_type or len(node.input) <= wi or (
                node.input[0], node.input[wi]) != (lq.layer.activation, lq.layer.weight):
            raise ModelError(f"no {lq.layer.op_type} reading ({lq.layer.activation}, {lq.layer.weight}) "
                             "in the model", name)
        w_shape = dims.get(lq.layer.weight)
        if w_shape is None:
            raise ModelError(f"weight {lq.layer.weight!r} is not an initializer", name)
        _check_activation(lq.activation, name)
        other = acts.setdefault(lq.activation.tensor, lq.activation)
        if other != lq.activation:
            raise ConfigError(f"activation {lq.activation.tensor!r} has different qparams in layer {name!r} "
                              "and another layer reading it (one Q/DQ pair per tensor)")
        ly = _Layer(node, lq, w_shape)
        _check_weight(ly)
        out.append(ly)
    return out


def _needed_opset(table: QuantTable) -> int:
    wide = any(lq.activation.bits != 8 or lq.weight.bits <= 4 or lq.layer.blocked(lq.weight.axis is not None)
               for lq in table.layers.values())
    return WIDE_OPSET if wide else BASE_OPSET


def _remove_absorbed(model: onnx.ModelProto, labels: Tuple[str, ...]) -> None:
    """Remove the absorbed Relu/Clip nodes: each one's producer writes its output instead."""
    view = GraphView(model)
    by_label = {node_label(n): n for n in model.graph.node}
    for label in labels:
        node = by_label.get(label)
        if node is None:
            raise ModelError("the deploy layout absorbs a node the model does not have", label)
        view.bypass(node, keep=node.input[0])


def _prepare(model: onnx.ModelProto, table: QuantTable, absorbed: Tuple[str, ...] = ()
             ) -> Tuple[onnx.ModelProto, List[_Layer], Skeleton, bool]:
    """A weightless copy of ``model`` (its large initializers detached, see :mod:`ferroquant.onnx.external`:
    the weights the export replaces are never copied) at the opset the table needs, its layers matched,
    absorbed activations removed, every node named; and whether it was converted to a newer opset."""
    dims = {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}
    opset = max(default_opset(model), _needed_opset(table))
    sk = skeleton(model)
    work = sk.model
    _remove_absorbed(work, absorbed)
    converted = opset > default_opset(work)
    if converted:
        try:
            work = convert_opset(work, opset)
        except Exception as e:  # noqa: BLE001 - the converter raises assorted types
            raise ModelError(f"cannot convert the model to opset {opset} for int4/int16/blocked Q/DQ: {e}") from None
    layers = _match(work, table, dims)
    work.ir_version = max(work.ir_version, min_ir_version(work))
    ensure_node_names(work)
    return work, layers, sk, converted


class _Emitter:
    """Collects the new nodes and initializers, with names unique in the graph."""

    def __init__(self, model: onnx.ModelProto, unsigned: bool = False, signed_weight_bits: Optional[int] = None) -> None:
        self.view = GraphView(model)
        self.unsigned, self.signed_weight_bits = unsigned, signed_weight_bits
        graph = model.graph
        self.tensors: Set[str] = ({t.name for t in graph.initializer} | {i.name for i in graph.input}
                                  | {v.name for v in graph.value_info} | {o.name for o in graph.output}
                                  | {o for n in graph.node for o in list(n.output) + list(n.input)}
                                  | names_inside(graph))
        self.nodes_taken: Set[str] = {n.name for n in graph.node}
        self.before: Dict[int, List[onnx.NodeProto]] = {}  # id(layer node) -> weight/bias Q/DQ nodes
        self.after: Dict[str, List[onnx.NodeProto]] = {}  # activation tensor -> its Q/DQ nodes

    def _unique(self, base: str, taken: Set[str]) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    def tensor(self, base: str) -> str:
        return self._unique(base, self.tensors)

    def init(self, proto: TensorProto) -> str:
        self.view.graph.initializer.append(proto)
        return proto.name

    def node(self, op: str, inputs: List[str], base: str, **attrs: object) -> Tuple[onnx.NodeProto, str]:
        out = self.tensor(base)
        node = helper.make_node(op, inputs, [out], name=self._unique(base, self.nodes_taken), **attrs)
        return node, out

    def qparams(self, base: str, scale: np.ndarray, zp: np.ndarray, elem_type: int) -> Tuple[str, str]:
        s = self.init(numpy_helper.from_array(np.asarray(scale, np.float32), self.tensor(f"{base}_scale")))
        z = self.init(_int_tensor(self.tensor(f"{base}_zero_point"), zp, elem_type))
        return s, z


def _activation_pair(em: _Emitter, aq: ActivationQuant) -> str:
    """One Q/DQ pair after ``aq.tensor``; returns the DQ output (made once per tensor)."""
    if aq.tensor in em.after:
        return em.after[aq.tensor][-1].output[0]
    elem = _act_type(aq, em.unsigned)
    scale, zp = _act_qparams(aq)
    zp = zp + 128 if elem == TensorProto.UINT8 else zp
    s, z = em.qparams(aq.tensor, scale, zp, elem)
    attrs = {"axis": aq.axis} if aq.per_channel else {}
    q, q_out = em.node("QuantizeLinear", [aq.tensor, s, z], f"{aq.tensor}_QuantizeLinear", **attrs)
    dq, dq_out = em.node("DequantizeLinear", [q_out, s, z], f"{aq.tensor}_DequantizeLinear", **attrs)
    em.after[aq.tensor] = [q, dq]
    return dq_out


def _weight_qparams(ly: _Layer) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
    """Scale, zero point and Q/DQ attributes of a weight: per tensor, per axis, or blocked (grouped
    ConvTranspose: axis 0 in blocks of C_in/g, one scale per (group, column), repeated over the kernel)."""
    wq, groups = ly.lq.weight, ly.lq.layer.groups
    scale = np.asarray(wq.scale, np.float32).ravel()
    zp = np.asarray(wq.zero_point).astype(np.int64).ravel()
    if wq.axis is None:
        return scale.reshape(()), zp.reshape(()), {}
    if not ly.blocked:
        return scale, zp, {"axis": wq.axis}
    c_in, c_out_g, kernel = ly.w_shape[0], ly.w_shape[1], ly.w_shape[2:]
    shape = (groups, c_out_g) + kernel
    expand = (groups, c_out_g) + (1,) * len(kernel)
    s = np.broadcast_to(scale.reshape(expand), shape)
    z = np.broadcast_to(zp.reshape(expand), shape)
    return np.ascontiguousarray(s), np.ascontiguousarray(z), {"axis": 0, "block_size": c_in // groups}


def _weight(em: _Emitter, ly: _Layer, deploy: bool) -> Tuple[List[onnx.NodeProto], str]:
    """The weight's Q/DQ (fake-quant ARQ) or codes->DQ (deploy, NUQ) nodes and the float tensor they make. Deploy
    codes beyond ``em.signed_weight_bits`` are written as uint8 (codes and zero points + 128: the same grid), which
    onnxruntime's CPU kernels multiply without saturating."""
    layer, wq = ly.lq.layer, ly.lq.weight
    elem = _weight_type(wq, layer.name)
    scale, zp, attrs = _weight_qparams(ly)
    codes = np.asarray(wq.codes)
    limit = em.signed_weight_bits
    if deploy and elem == TensorProto.INT8 and limit is not None and codes.size and (
            int(codes.min()) < -(1 << (limit - 1)) or int(codes.max()) >= 1 << (limit - 1)):
        elem, codes, zp = TensorProto.UINT8, codes.astype(np.int16) + 128, zp + 128
    s, z = em.qparams(f"{layer.name}.weight", scale, zp, elem)
    nodes = []
    if deploy or _is_nuq(wq):
        src = em.init(_int_tensor(em.tensor(f"{layer.name}.weight_quantized"), codes, elem))
    else:
        q, src = em.node("QuantizeLinear", [layer.weight, s, z], f"{layer.name}.weight_QuantizeLinear", **attrs)
        nodes.append(q)
    dq, out = em.node("DequantizeLinear", [src, s, z], f"{layer.name}.weight_DequantizeLinear", **attrs)
    return nodes + [dq], out


def _bias(em: _Emitter, ly: _Layer) -> Optional[Tuple[onnx.NodeProto, str]]:
    """The table's int32 bias codes behind DequantizeLinear(s_in * s_w, 0, axis 0); None (bias kept float) when
    the table has no codes for the layer's bias."""
    layer, bq = ly.lq.layer, ly.lq.bias
    if bq is None:
        return None
    if bq.tensor != layer.bias:
        raise ConfigError(f"layer {layer.name!r}: bias codes are for {bq.tensor!r}, not {layer.bias!r}")
    scale = np.asarray(bq.scale, np.float32)
    attrs = {} if bq.axis is None else {"axis": bq.axis}
    s = em.init(numpy_helper.from_array(scale, em.tensor(f"{layer.name}.bias_scale")))
    z = em.init(_int_tensor(em.tensor(f"{layer.name}.bias_zero_point"), np.zeros(scale.shape, np.int32),
                            TensorProto.INT32))
    q = em.init(_int_tensor(em.tensor(f"{layer.name}.bias_quantized"), np.asarray(bq.codes), TensorProto.INT32))
    return em.node("DequantizeLinear", [q, s, z], f"{layer.name}.bias_DequantizeLinear", **attrs)


def _rewrite_layer(em: _Emitter, ly: _Layer, deploy: bool, layout: Optional[Layout] = None) -> None:
    node, t = ly.node, ly.lq.layer.type
    aq = ly.lq.activation if layout is None else layout.tensors.get(ly.lq.activation.tensor, ly.lq.activation)
    node.input[0] = _activation_pair(em, aq)
    nodes, node.input[t.weight_input] = _weight(em, ly, deploy)
    if deploy:
        bias = _bias(em, ly)
        if bias is not None and t.bias_input is not None:
            nodes.append(bias[0])
            node.input[t.bias_input] = bias[1]
    em.before[id(node)] = nodes


def _reorder(em: _Emitter, model: onnx.ModelProto) -> None:
    """Put each activation pair right after its producer (first for graph inputs) and each layer's weight
    nodes right before it, keeping the graph topologically sorted."""
    old = list(model.graph.node)
    made = {o for n in old for o in n.output}
    new: List[onnx.NodeProto] = [n for t, pair in em.after.items() if t not in made for n in pair]
    for node in old:
        new.extend(em.before.get(id(node), ()))
        new.append(node)
        for out in node.output:
            new.extend(em.after.get(out, ()))
    del model.graph.node[:]
    model.graph.node.extend(new)


def _type_qdq(work: onnx.ModelProto) -> None:
    """value_info for the outputs of the Q/DQ nodes the export added, from their inputs: a QuantizeLinear output
    has its input's shape and its zero point's type (uint8 without one), a DequantizeLinear output its input's
    shape and its scale's type. The rest of the graph keeps the shapes inferred when the model was loaded, so
    onnx's shape inference over the whole export (17 ms per export on MobileNetV2) added only these."""
    g = work.graph
    typed = {v.name: v.type.tensor_type for v in (*g.input, *g.value_info, *g.output) if v.type.HasField("tensor_type")}
    inits = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in ("", "ai.onnx"):
            continue
        out, src = node.output[0], node.input[0]
        if out in typed:
            continue
        if node.op_type == "QuantizeLinear":
            zp = node.input[2] if len(node.input) > 2 else ""
            e = _elem_type(zp, typed, inits, TensorProto.UINT8) if zp else TensorProto.UINT8
        else:
            e = _elem_type(node.input[1], typed, inits, TensorProto.FLOAT)
        vi = g.value_info.add()
        vi.name = out
        tt = vi.type.tensor_type
        tt.elem_type = e
        if src in inits:
            tt.shape.SetInParent()
            for d in inits[src].dims:
                tt.shape.dim.add().dim_value = d
        elif src in typed and typed[src].HasField("shape"):
            tt.shape.CopyFrom(typed[src].shape)
        typed[out] = tt


def _elem_type(name: str, typed: Mapping[str, onnx.TypeProto.Tensor], inits: Mapping[str, TensorProto],
               default: int) -> int:
    if name in inits:
        return inits[name].data_type
    return typed[name].elem_type if name in typed else default


def _finish(work: onnx.ModelProto, sk: Skeleton, source: onnx.ModelProto, converted: bool) -> onnx.ModelProto:
    """Prune, type the new tensors and check on the weightless ``work`` (the skeleton's large tensors stand there
    as typed graph inputs, so the checker sees every shape without serializing the weights), then put the weights
    back: tensors of the checked input model, copied as they are. As tolerant of onnx's own gaps as
    :func:`~ferroquant.onnx.io.load_model` (a model exactly as valid as its input passes). A model ``converted``
    to a newer opset has its shapes inferred again (the converter does not carry them all)."""
    GraphView(work).prune_initializers()
    if converted:
        inferred = infer_or_keep(work)
    else:
        _type_qdq(work)
        inferred = work
    try:
        check_model(inferred)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise ModelError(f"the exported QDQ model is invalid (a ferroquant bug): {e}") from None
    return reattach(sk, inferred, source)


def _place_layout(em: _Emitter, model: onnx.ModelProto, layout: Layout) -> None:
    """The layout's other Q/DQ pairs and, with ``all_readers``, every reader rewired to the DQ outputs."""
    made = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    for t, aq in layout.tensors.items():
        if t in made:
            _check_activation(aq, t)
            _activation_pair(em, aq)
    if not layout.all_readers:
        return
    own = {id(n) for pair in em.after.values() for n in pair}
    for node in model.graph.node:
        if id(node) in own:
            continue
        for i, t in enumerate(node.input):
            if t in em.after:
                node.input[i] = em.after[t][-1].output[0]


def _export(model: onnx.ModelProto, table: QuantTable, deploy: bool, layout: Optional[Layout] = None
            ) -> onnx.ModelProto:
    work, layers, sk, converted = _prepare(model, table, layout.absorbed if layout is not None else ())
    em = _Emitter(work, *((layout.unsigned, layout.signed_weight_bits) if layout is not None else ()))
    for ly in layers:
        _rewrite_layer(em, ly, deploy, layout)
    if layout is not None:
        _place_layout(em, work, layout)
        for k, v in layout.metadata.items():
            work.metadata_props.add(key=k, value=v)
    _reorder(em, work)
    del em, layers  # no references into the graph while it is edited below (protobuf would copy them)
    return _finish(work, sk, model, converted)


def export_fake_quant(model: onnx.ModelProto, table: QuantTable, layout: Optional[Layout] = None
                      ) -> onnx.ModelProto:
    """The simulation model: float weights behind Q/DQ (NUQ: codes behind DQ), one Q/DQ pair per quantized
    activation tensor, float biases; with a deploy profile's ``layout``, its Q/DQ placement too, so the
    simulation computes what the deploy model computes. ``model`` is left unchanged; see the module docstring
    for the opsets."""
    return _export(model, table, deploy=False, layout=layout)


def export_deploy(model: onnx.ModelProto, table: QuantTable, layout: Optional[Layout] = None) -> onnx.ModelProto:
    """The deployment model: int8/int4 weight codes and int32 biases behind DequantizeLinear, one Q/DQ pair per
    quantized activation tensor; float weights removed. Without ``layout`` the pairs are on the quantized layers'
    inputs (AMCT's layout); a :class:`Layout` (a deploy profile's) adds its tensors. ``model`` is left
    unchanged."""
    return _export(model, table, deploy=True, layout=layout)


__all__ = ["Layout", "export_deploy", "export_fake_quant"]
