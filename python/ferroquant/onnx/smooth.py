"""SmoothQuant balancing of an ONNX model (issue 12) before static int8 calibration.

A *group* is a normalization (``LayerNormalization``, ``RMSNormalization`` or onnxruntime's
``SimplifiedLayerNormalization``, normalizing the last axis, with a constant scale and, when it has one, a constant
bias) whose first output is read only by MatMuls or Gemms that take it as their first input and have a constant 2-D
weight (``[K, N]``; ``[N, K]`` for a Gemm with ``transB``) read by nobody else (q/k/v after ``ln1``, fc1 after
``ln2`` in a transformer block). ``Shape`` readers are ignored and one ``Reshape`` that keeps the channels last is
looked through (GPT-2's Conv1D exports as ``Reshape -> Gemm``). For each group, per input channel ``j``, ``s_j =
max|X_j|^alpha / max|W_j|^(1-alpha)`` (``W``: the readers' weights side by side; ``ferroquant.ops.smooth_search``,
which also searches ``alpha`` on sampled calibration rows when none is fixed); the normalization's scale and bias
are divided by ``s`` and the weight rows multiplied by it. ``(y / s) @ (s W) = y @ W``: the float model computes
the same up to rounding, and the int8 activations of the MatMuls no longer have a few channels that take the whole
range.

A LayerNorm written out in elementary ops (``ReduceMean``, ``Sub``, ``Pow``, ``Sqrt``, ``Div``, then ``Mul`` by
gamma and ``Add`` of beta, as opset-11 exports are) is balanced through its last ``Mul -> Add``: any per-channel
affine ``x * gamma + beta`` on the last axis absorbs the division the same way, and so does a per-channel
``Mul`` alone (an RMSNorm written out, ``x / sqrt(mean(x^2) + eps) * gamma``, as torch exports Llama's).

Normalizations whose output something else reads (a residual Add, a graph output) are left alone and reported:
dividing them would change that reader's input.

Two more absorbers, for the MatMul inputs no normalization makes:
- a ``Mul`` by a scalar constant it alone reads (the ``* 0.5`` that ends a GELU written out, before fc2): the
  scalar becomes a per-channel vector;
- the linear layer that makes the tensor (``_linear_producer``): attention's output projection reads ``P.V``, whose
  channels are the value projection's, through the heads' reshapes and transposes; the value projection's weight
  columns and bias are divided. Whether the channels arrive one to one is not read off the reshapes (their shapes
  are often computed at run time) but checked in float on the first calibration batch, and a producer that fails
  is reported and left alone."""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import islice
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import onnx

from ferroquant import ops
from ferroquant.config.methods import SmoothQuantParams
from ferroquant.errors import DataError
from ferroquant.onnx.calibration import CalibrationData, _check_feed, iterate_batches, tapped_session
from ferroquant.onnx.graph import GraphView, get_attr, node_label
from ferroquant.quant.smooth import Smoothed, report
from ferroquant.quant.weight_only import RowSample

NORMS = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")


@dataclass(frozen=True)
class SmoothGroup:
    """A normalization ``norm`` (node name) whose output ``tensor`` (``k`` channels) feeds only the MatMuls or
    Gemms ``layers`` (node names), whose weights are the initializers ``weights``; ``scale`` and ``bias``: the
    normalization's initializers (``bias`` None when it has none)."""

    norm: str
    tensor: str
    k: int
    scale: str
    bias: Optional[str]
    layers: Tuple[str, ...]
    weights: Tuple[str, ...]
    #: per weight, whether it is stored ``[N, K]`` (a Gemm with ``transB``)
    transposed: Tuple[bool, ...] = ()
    #: ``scale`` keeps the channels on its first axis (a producing Gemm's ``[K, K']`` weight with ``transB``)
    scale_transposed: bool = False
    #: what absorbs the division: ``normalization`` (its scale/bias, or a per-channel ``Mul``), ``scalar`` (a
    #: ``Mul`` by a scalar constant, which becomes a vector) or ``linear`` (the MatMul/Gemm that makes the tensor,
    #: through reshapes, transposes and attention's P.V)
    absorber: str = "normalization"


#: A layer reading a group's tensor: the node, its weight initializer, whether the weight is ``[N, K]``.
Reader = Tuple[onnx.NodeProto, str, bool]


def _norm_ok(view: GraphView, node: onnx.NodeProto) -> Optional[str]:
    """Why ``node`` cannot be balanced, or None when it can (its scale/bias constants and axis)."""
    axis = int(get_attr(node, "axis", -1))
    x = view.array(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if x is None or x.ndim != 1:
        return "its scale is not a constant vector"
    if axis != -1:
        return f"it normalizes axis {axis} (only the last axis, -1, is balanced)"
    params = [i for i in node.input[1:3] if i]
    if node.op_type == "LayerNormalization" and len(params) == 2 and not view.is_constant(params[1]):
        return "its bias is not a constant"
    if any(not view.only_consumer(p, node) for p in params):
        return "its scale or bias is shared with other nodes"
    return None


def _through_identity(view: GraphView, tensor: str) -> Optional[List[Tuple[onnx.NodeProto, str]]]:
    """The nodes that read ``tensor``, looking through Identity nodes, each with the tensor it reads; None when
    ``tensor`` (or an Identity's output on the way) is a graph output or unused."""
    readers = view.consumers_of(tensor)
    if not readers or view.is_graph_output(tensor):
        return None
    out: List[Tuple[onnx.NodeProto, str]] = []
    for r in readers:
        if r.op_type == "Identity" and r.domain in ("", "ai.onnx"):
            more = _through_identity(view, r.output[0])
            if more is None:
                return None
            out += more
        else:
            out.append((r, tensor))
    return out


def _weight_layer(view: GraphView, r: onnx.NodeProto, read: str, k: int) -> Union[str, Reader]:
    """``r`` as a layer that multiplies ``read`` (``k`` channels) by a constant weight of its own: a MatMul
    (weight ``[K, N]``) or a Gemm without ``transA`` (``[K, N]``, or ``[N, K]`` with ``transB``); else why not."""
    gemm = r.op_type == "Gemm" and not get_attr(r, "transA", 0)
    w = view.array(r.input[1]) if r.op_type in ("MatMul", "Gemm") and len(r.input) > 1 else None
    if r.domain not in ("", "ai.onnx") or not (r.op_type == "MatMul" or gemm) or r.input[0] != read or w is None:
        return f"its output is also read by {r.op_type} {node_label(r)!r} (not a MatMul/Gemm with a constant weight)"
    transposed = bool(gemm and get_attr(r, "transB", 0))
    if w.ndim != 2 or w.shape[1 if transposed else 0] != k:
        return f"{r.op_type} {node_label(r)!r} has a weight of shape {list(w.shape)}, not [{k}, N]"
    if not view.only_consumer(r.input[1], r):
        return f"the weight of {r.op_type} {node_label(r)!r} is shared with other nodes"
    return r, r.input[1], transposed


def _readers_ok(view: GraphView, tensor: str, k: int, reshaped: bool = False) -> Tuple[Optional[str], List[Reader]]:
    """The layers that read ``tensor`` (``k`` channels on its last axis), each with its weight and whether the
    weight is stored ``[N, K]``; or why the tensor cannot be balanced. ``Shape`` readers are ignored (they read
    no values), and one ``Reshape`` that keeps the channels last is looked through (``[B, T, K] -> [B*T, K]``
    before a ``Gemm``, as GPT-2's Conv1D exports)."""
    found = _through_identity(view, tensor)
    if found is None:
        return "its output is a graph output or unused", []
    readers: List[Reader] = []
    for r, read in found:
        if r.op_type == "Shape" and r.domain in ("", "ai.onnx"):
            continue
        if r.op_type == "Reshape" and r.domain in ("", "ai.onnx") and r.input[0] == read and not reshaped:
            shape = view.declared_shape(r.output[0])
            if not shape or shape[-1] != k:
                return (f"its output is reshaped by {node_label(r)!r} to a shape whose last axis is not (or not "
                        f"known to be) its {k} channels"), []
            why, more = _readers_ok(view, r.output[0], k, reshaped=True)
            if why is not None:
                return why, []
            readers += more
            continue
        layer = _weight_layer(view, r, read, k)
        if isinstance(layer, str):
            return layer, []
        readers.append(layer)
    if not readers:
        return "its output feeds no MatMul/Gemm with a constant weight", []
    return None, readers


def _channel_vector(view: GraphView, name: str, node: onnx.NodeProto) -> Optional[int]:
    """The length K of constant ``name`` when it is a per-channel vector on the last axis (shape ``[K]`` or
    ``[1, .., 1, K]``) read only by ``node``; else None."""
    a = view.array(name)
    if a is None or a.ndim == 0 or any(d != 1 for d in a.shape[:-1]) or not view.only_consumer(name, node):
        return None
    return int(a.shape[-1])


def _affine(view: GraphView, add: onnx.NodeProto) -> Optional[Tuple[str, str, int]]:
    """For ``Add(Mul(x, gamma), beta)`` with per-channel constants (a LayerNorm written out in elementary ops,
    as older exporters do), ``(gamma, beta, K)``; else None."""
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
        return None
    for i in (0, 1):
        mul = view.producer(add.input[1 - i])
        if mul is None or mul.op_type != "Mul" or not view.only_consumer(add.input[1 - i], add):
            continue
        k = _channel_vector(view, add.input[i], add)
        for j in (0, 1):
            if k is not None and _channel_vector(view, mul.input[j], mul) == k:
                return mul.input[j], add.input[i], k
    return None


def _reads_a_weight(view: GraphView, tensor: str) -> bool:
    return any(r.op_type in ("MatMul", "Gemm") and len(r.input) > 1 and view.is_constant(r.input[1])
               for r, _ in _through_identity(view, tensor) or ())


def _reader_k(view: GraphView, tensor: str) -> Optional[int]:
    """The input size K of the first MatMul/Gemm with a constant 2-D weight that reads ``tensor``."""
    for r, _ in _through_identity(view, tensor) or ():
        w = view.array(r.input[1]) if r.op_type in ("MatMul", "Gemm") and len(r.input) > 1 else None
        if w is not None and w.ndim == 2:
            return int(w.shape[1 if r.op_type == "Gemm" and get_attr(r, "transB", 0) else 0])
    return None


def _scale_only(view: GraphView, mul: onnx.NodeProto) -> Optional[Tuple[str, None, int]]:
    """For ``Mul(x, gamma)`` with a per-channel constant ``gamma`` (an RMSNorm written out in elementary ops, as
    torch exports Llama's), or with a scalar constant read by this Mul alone (the ``* 0.5`` that ends a GELU
    written out, ``x * (1 + erf(x / sqrt 2)) * 0.5``, before fc2: it becomes a per-channel vector),
    ``(gamma, None, K)``; else None."""
    if mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or len(mul.input) != 2:
        return None
    for j in (0, 1):
        if view.is_constant(mul.input[1 - j]):
            continue
        k = _channel_vector(view, mul.input[j], mul)
        if k is None and _scalar(view, mul.input[j], mul):
            k = _reader_k(view, mul.output[0])
        if k is not None:
            return mul.input[j], None, k
    return None


def _scalar(view: GraphView, name: str, node: onnx.NodeProto) -> bool:
    a = view.array(name)
    return a is not None and a.size == 1 and a.dtype.kind == "f" and view.only_consumer(name, node)


#: Ops a producer's channels pass through unchanged in value, up to moves the float check confirms.
_CARRIERS = ("Reshape", "Transpose", "Identity")


def _single_reader(view: GraphView, tensor: str) -> Optional[onnx.NodeProto]:
    """The one node that reads the values of ``tensor`` (``Shape`` readers aside), or None."""
    if view.is_graph_output(tensor):
        return None
    readers = [r for r in view.consumers_of(tensor) if not (r.op_type == "Shape" and r.domain in ("", "ai.onnx"))]
    return readers[0] if len(readers) == 1 else None


def _linear_producer(view: GraphView, tensor: str, k: int) -> Optional[Tuple[onnx.NodeProto, str, bool, Optional[str]]]:
    """The MatMul/Gemm that makes ``tensor``'s ``k`` channels, walking back through reshapes, transposes,
    identities, a per-channel bias ``Add`` and attention's ``P.V`` (a MatMul of two activations, the path through
    its second input: scaling V's channels scales the output's), each step's output read by the next step alone:
    ``(node, weight, whether the weight is stored [K, K'] (a Gemm with transB), bias)``; None when there is
    none. Whether the channels arrive in order (a transpose may move them) is left to the float check of
    :func:`balance`."""
    bias: Optional[str] = None
    t = tensor
    for _ in range(16):
        p = view.producer(t)
        if p is None or p.domain not in ("", "ai.onnx") or (t != tensor and _single_reader(view, t) is None):
            return None
        if p.op_type in _CARRIERS:
            t = p.input[0]
        elif p.op_type == "Add" and bias is None and len(p.input) == 2:
            j = next((j for j in (0, 1) if _channel_vector(view, p.input[j], p) == k), None)
            if j is None or view.is_constant(p.input[1 - j]):
                return None
            bias, t = p.input[j], p.input[1 - j]
        elif p.op_type == "MatMul" and not view.is_constant(p.input[0]) and not view.is_constant(p.input[1]):
            t = p.input[1]  # P.V: V's channels are the output's
        elif p.op_type in ("MatMul", "Gemm") and len(p.input) > 1 and view.is_constant(p.input[1]):
            w = view.array(p.input[1])
            transposed = p.op_type == "Gemm" and bool(get_attr(p, "transB", 0))
            if (p.op_type == "Gemm" and (get_attr(p, "transA", 0) or len(p.input) > 2)) or w is None or \
                    w.ndim != 2 or w.shape[0 if transposed else 1] != k or not view.only_consumer(p.input[1], p):
                return None
            return p, p.input[1], transposed, bias
        else:
            return None
    return None


def _producer_groups(view: GraphView, taken: set) -> Tuple[List[SmoothGroup], List[Tuple[str, str]]]:
    """Groups whose tensor a linear layer makes (see :func:`_linear_producer`): attention's output projection,
    whose input is ``P.V`` of the value projection's output. ``taken``: tensors already in a group."""
    groups, skipped = [], []
    for node in view.nodes():
        x = node.input[0] if node.input else ""
        if node.op_type not in ("MatMul", "Gemm") or x in taken or len(node.input) < 2 or \
                not view.is_constant(node.input[1]):
            continue
        taken.add(x)
        k = _reader_k(view, x)
        found = None if k is None else _linear_producer(view, x, k)
        if found is None:
            continue
        producer, weight, transposed, bias = found
        why, readers = _readers_ok(view, x, k)
        if why is not None:
            skipped.append((node_label(producer), why))
            continue
        groups.append(replace(_group(producer, k, weight, bias, readers), tensor=x, scale_transposed=transposed,
                              absorber="linear"))
    return groups, skipped


def _affine_groups(view: GraphView) -> Tuple[List[SmoothGroup], List[Tuple[str, str]]]:
    """Groups whose producer is a per-channel ``Mul -> Add`` (see :func:`_affine`) or a per-channel ``Mul``
    alone (see :func:`_scale_only`); only those that feed a MatMul/Gemm with a constant weight are considered
    (and reported when they cannot be balanced)."""
    groups, skipped = [], []
    for node in view.nodes():
        if node.op_type not in ("Add", "Mul") or not _reads_a_weight(view, node.output[0]):
            continue
        found = _affine(view, node) if node.op_type == "Add" else _scale_only(view, node)
        if found is None:
            continue
        gamma, beta, k = found
        why, readers = _readers_ok(view, node.output[0], k)
        if why is not None:
            skipped.append((node_label(node), why))
            continue
        scalar = view.array(gamma).size == 1
        groups.append(replace(_group(node, k, gamma, beta, readers), absorber="scalar" if scalar else "normalization"))
    return groups, skipped


def _group(node: onnx.NodeProto, k: int, scale: str, bias: Optional[str], readers: List[Reader]) -> SmoothGroup:
    return SmoothGroup(node_label(node), node.output[0], k, scale, bias, tuple(node_label(r) for r, _, _ in readers),
                       tuple(w for _, w, _ in readers), tuple(t for _, _, t in readers))


def smooth_groups(model: onnx.ModelProto) -> Tuple[List[SmoothGroup], List[Tuple[str, str]]]:
    """The groups of ``model`` that can be balanced, and ``(norm, reason)`` for the normalizations that cannot:
    per-channel ``Mul -> Add`` pairs (``norm`` names the Add) and per-channel ``Mul`` nodes (RMSNorm written
    out), then normalization ops."""
    view = GraphView(model)
    groups, skipped = _affine_groups(view)
    for node in view.nodes():
        if node.op_type not in NORMS or node.domain not in ("", "ai.onnx", "com.microsoft"):
            continue
        why = _norm_ok(view, node)
        readers: List[Reader] = []
        if why is None:
            k = int(view.array(node.input[1]).shape[0])
            why, readers = _readers_ok(view, node.output[0], k)
        if why is not None:
            skipped.append((node_label(node), why))
            continue
        bias = node.input[2] if node.op_type == "LayerNormalization" and len(node.input) > 2 and node.input[2] \
            else None
        groups.append(_group(node, k, node.input[1], bias, readers))
    more, why = _producer_groups(view, {g.tensor for g in groups})
    return groups + more, skipped + why


def collect_inputs(model: onnx.ModelProto, groups: List[SmoothGroup], data: CalibrationData,
                   max_batches: Optional[int], max_rows: int, first: Optional[List[Dict[str, np.ndarray]]] = None
                   ) -> Dict[str, Tuple[ops.ChannelStats, RowSample]]:
    """Per group tensor, the per-channel statistics over every calibration batch (at most ``max_batches``) and
    a sample of at most ``max_rows`` rows. NaN/Inf in a tensor raise a NonFiniteError naming it. ``first``: a
    list the first batch's feed is appended to (the data may be readable once)."""
    taps = [g.tensor for g in groups]
    where = {g.tensor: f"{g.tensor} (output of {g.norm})" for g in groups}
    stats = {g.tensor: (ops.ChannelStats(g.k, where[g.tensor]), RowSample(g.k, max_rows, where[g.tensor]))
             for g in groups}
    sess = tapped_session(model, taps)
    inputs = {i.name: i for i in sess.get_inputs()}
    unranked = {i.name for i in model.graph.input if not i.type.tensor_type.HasField("shape")}
    n = 0
    for n, feed in enumerate(islice(iterate_batches(data, list(inputs)), max_batches), 1):
        feed = _check_feed(feed, inputs, n - 1, unranked)
        if n == 1 and first is not None:
            first.append(feed)
        for t, arr in zip(taps, sess.run(taps, feed)):
            stats[t][0].observe(arr)
            stats[t][1].observe(arr)
    if n == 0:
        raise DataError("the calibration data yielded no batch")
    return stats


def balance(model: onnx.ModelProto, params: SmoothQuantParams, data: CalibrationData,
            max_batches: Optional[int] = None, weight_bits: Optional[Mapping[str, int]] = None
            ) -> Tuple[onnx.ModelProto, List[Smoothed], List[Tuple[str, str]]]:
    """A balanced copy of ``model`` (``model`` itself when no group is found), what was done per group, and the
    normalizations skipped with the reason. ``weight_bits``: the bit width each layer's weight will deploy with
    (by node name; 8 for a layer it does not name); a group's search models its readers' smallest."""
    groups, skipped = smooth_groups(model)
    if not groups:
        return model, [], skipped
    first: List[Dict[str, np.ndarray]] = []
    stats = collect_inputs(model, groups, data, max_batches, params.max_rows, first)
    groups, wrong = _check_producers(model, groups, first[0])
    skipped = skipped + wrong
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out)
    done = []
    for g in groups:
        ws = _weights_kn(view, g)
        alphas = params.alphas if params.alpha is None else (params.alpha,)
        bits = min((weight_bits or {}).get(l, 8) for l in g.layers)
        r = ops.smooth_search(stats[g.tensor][0].absmax, np.concatenate(ws, axis=1), stats[g.tensor][1].rows,
                              alphas, 8, name=g.tensor, w_bits=bits)
        s = r.channel_scale.astype(np.float32)
        _apply(view, g, s)
        done.append(Smoothed.of(g.norm, g.layers, r, s, g.tensor, bits, g.absorber))
    return out, done, skipped


def _weights_kn(view: GraphView, g: SmoothGroup) -> List[np.ndarray]:
    """The group's reader weights as they are now, each ``[K, N]`` float32."""
    flips = g.transposed or (False,) * len(g.weights)
    return [w.T if t else w for w, t in zip((view.array(w).astype(np.float32) for w in g.weights), flips)]


def _apply(view: GraphView, g: SmoothGroup, s: np.ndarray) -> None:
    """Divide what makes ``g``'s tensor by ``s`` per channel and multiply the readers' weight rows by it."""
    for name in (g.scale, g.bias):
        if name is None:
            continue
        a = view.array(name)
        if name == g.scale and g.scale_transposed:
            new = a / s[:, None]
        elif a.size == 1:  # a scalar becomes a per-channel vector on the last axis
            new = (a.reshape(()) / s).reshape((1,) * (a.ndim - 1) + (-1,))
        else:
            new = a / s.reshape((1,) * (a.ndim - 1) + (-1,))
        view.set_initializer(name, np.ascontiguousarray(new).astype(a.dtype))
    flips = g.transposed or (False,) * len(g.weights)
    for name, w, t in zip(g.weights, _weights_kn(view, g), flips):
        scaled = w * s[:, None]
        view.set_initializer(name, np.ascontiguousarray(scaled.T if t else scaled).astype(view.array(name).dtype))


#: How close a producer-absorbed tensor must come back (relative to its largest value) in the float check.
PRODUCER_CHECK_TOL = 1e-4


def _check_producers(model: onnx.ModelProto, groups: List[SmoothGroup], feed: Dict[str, np.ndarray]
                     ) -> Tuple[List[SmoothGroup], List[Tuple[str, str]]]:
    """Keep the producer-absorbed groups whose channels reach their tensor in order: with every one scaled by
    random factors ``r`` (producer divided, readers multiplied), each tensor must be its float value over ``r``
    on ``feed``; those that fail are dropped (with the reason) and the rest checked again, since a wrong one
    also changes what is downstream of it."""
    keep = [g for g in groups if g.absorber != "linear"]
    cand = [g for g in groups if g.absorber == "linear"]
    wrong: List[Tuple[str, str]] = []
    rng = np.random.default_rng(0)
    while cand:
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        view = GraphView(trial)
        factors = [rng.uniform(0.5, 2.0, g.k).astype(np.float32) for g in cand]
        for g, r in zip(cand, factors):
            _apply(view, g, r)
        taps = [g.tensor for g in cand]
        before = tapped_session(model, taps).run(taps, feed)
        after = tapped_session(trial, taps).run(taps, feed)
        bad = []
        for g, r, b, a in zip(cand, factors, before, after):
            err = float(np.max(np.abs(a * r - b), initial=0.0)) / max(float(np.max(np.abs(b), initial=0.0)), 1e-30)
            if not err <= PRODUCER_CHECK_TOL:
                bad.append(g)
                wrong.append((g.norm, f"its output channels do not reach {g.tensor!r} one to one (scaled by random "
                                      f"factors, the tensor differs from the float one over them by {err:.2g} of "
                                      f"its largest value)"))
        if not bad:
            break
        cand = [g for g in cand if g not in bad]
    return keep + cand, wrong


__all__ = ["NORMS", "SmoothGroup", "Smoothed", "balance", "collect_inputs", "report", "smooth_groups"]
