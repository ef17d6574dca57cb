"""Cross-layer equalization of an ONNX model (issue 15): ``Conv -> Relu -> Conv`` and ``Conv -> Conv`` chains,
depthwise and grouped Convs included, after BatchNormalization folding and before calibration. The arithmetic
is :mod:`ferroquant.quant.equalize`; this pass finds the pairs and rewrites their initializers.

A pair is taken when layer 1's output (and the Relu's) has no other reader and is no graph output, and both
weights (and layer 1's bias) are initializers. ReLU6 (``Clip(0, 6)``) does not commute with scaling: with
``relu6_to_relu`` it is replaced by Relu (which changes the FP32 model where the clip was reached; measure it
with :func:`max_relative_difference`), otherwise the pair is skipped and the report says why. Equalizing every
pair once is repeated (``iterations`` rounds at most, until every scale is within 1e-6 of 1), so chains such as
``expand -> depthwise -> project`` settle on the depthwise layer.

Bias absorption (``bias_absorption``) then moves ``c = max(0, beta - 3 |gamma|)`` (scaled like the channel)
from layer 1's bias into layer 2's, for pairs with a Relu between whose layer 1 had a BatchNormalization folded
into it (``beta``, ``gamma``: that BN's, from the fusion report) and whose layer 2 reads no zero padding: exact
wherever the pre-activation stays above ``beta - 3 |gamma|`` (the BN's statistics say it nearly always does), so
equalization with absorption is only nearly exact in float; the bench measures it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import onnx

from ferroquant.config.methods import EqualizationParams
from ferroquant.onnx.graph import GraphView, ensure_node_names, get_attr, node_label
from ferroquant.quant.equalize import absorb_bias, equalize_pair, pair_fits

_TOL = 1e-6


@dataclass(frozen=True)
class EqualizedPair:
    """``first`` -> (``activation``: the op between, or "") -> ``second``, with the largest and smallest
    cumulative scale applied to the channels between them."""

    first: str
    activation: str
    second: str
    scale_min: float = 1.0
    scale_max: float = 1.0


@dataclass(frozen=True)
class EqualizationReport:
    """What :func:`equalize` did: the pairs equalized, the pairs skipped (``(first, second, reason)``), the
    ReLU6 nodes replaced by Relu and the rounds run."""

    pairs: Tuple[EqualizedPair, ...] = ()
    skipped: Tuple[Tuple[str, str, str], ...] = ()
    relu6_replaced: Tuple[str, ...] = ()
    rounds: int = 0
    absorbed: Tuple[Tuple[str, str, int], ...] = ()  # (first, second, channels with c > 0)

    def to_json(self) -> Dict[str, Any]:
        return {"pairs": [{"first": p.first, "activation": p.activation, "second": p.second,
                           "scale_min": p.scale_min, "scale_max": p.scale_max} for p in self.pairs],
                "skipped": [{"first": a, "second": b, "reason": r} for a, b, r in self.skipped],
                "relu6_replaced": list(self.relu6_replaced), "rounds": self.rounds,
                "absorbed": [{"first": a, "second": b, "channels": n} for a, b, n in self.absorbed]}


def _clip_bounds(view: GraphView, node: onnx.NodeProto) -> Optional[Tuple[float, float]]:
    """A Clip's (min, max) (``-inf`` / ``inf`` when absent), or None when they are not constants."""
    if node.domain not in ("", "ai.onnx") or node.op_type != "Clip":
        return None
    if len(node.input) == 1 and (get_attr(node, "min") is not None or get_attr(node, "max") is not None):
        return float(get_attr(node, "min", -np.inf)), float(get_attr(node, "max", np.inf))
    out = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        if len(node.input) <= i or not node.input[i]:
            out.append(default)
            continue
        a = view.array(node.input[i])
        if a is None or a.size != 1:
            return None
        out.append(float(a.ravel()[0]))
    return out[0], out[1]


def _conv_weight(view: GraphView, node: Optional[onnx.NodeProto]) -> bool:
    return (node is not None and node.op_type == "Conv" and node.domain in ("", "ai.onnx") and len(node.input) > 1
            and view.is_constant(node.input[1])
            and (len(node.input) < 3 or not node.input[2] or view.is_constant(node.input[2])))


def _activation(view: GraphView, act: onnx.NodeProto, allow_relu6: bool) -> Tuple[bool, str]:
    """Whether ``act`` commutes with positive per-channel scaling (``relu6`` true when a Clip(0, max) must be
    replaced first), or the reason it does not."""
    if act.op_type == "Relu" and act.domain in ("", "ai.onnx"):
        return False, ""
    bounds = _clip_bounds(view, act)
    if bounds is None:
        return False, f"{act.op_type} {node_label(act)!r} between the layers does not commute with scaling"
    lo, hi = bounds
    if lo != 0.0:
        return False, f"Clip {node_label(act)!r} has min {lo}, not 0"
    if np.isinf(hi):
        return False, ""
    if not allow_relu6:
        return False, (f"Clip(0, {hi:g}) {node_label(act)!r} between the layers does not commute with scaling "
                       "(methods.equalization.relu6_to_relu replaces it by Relu)")
    return True, ""


def _pair(view: GraphView, second: onnx.NodeProto, allow_relu6: bool
          ) -> Tuple[Optional[Tuple[onnx.NodeProto, Optional[onnx.NodeProto], bool]], str]:
    """(first, activation, replace-relu6) for the Conv ``second``, or None and the reason (None and "" when
    no Conv feeds it)."""
    x = second.input[0]
    prev = view.producer(x)
    act: Optional[onnx.NodeProto] = None
    if prev is not None and prev.op_type != "Conv":
        act, prev = prev, view.producer(prev.input[0]) if prev.input else None
    if not _conv_weight(view, prev):
        return None, ""
    relu6, reason = (False, "") if act is None else _activation(view, act, allow_relu6)
    if reason:
        return None, reason
    links = [(prev.output[0], act if act is not None else second)] + ([(act.output[0], second)] if act else [])
    for tensor, reader in links:
        if not view.only_consumer(tensor, reader):
            return None, f"{tensor!r} has other readers or is a graph output"
    w1, w2 = view.array(prev.input[1]), view.array(second.input[1])
    b1 = view.array(prev.input[2]) if len(prev.input) > 2 and prev.input[2] else None
    reason = pair_fits(w1, b1, w2, int(get_attr(second, "group", 1)))
    return ((prev, act, relu6), "") if not reason else (None, reason)


def _to_relu(act: onnx.NodeProto) -> None:
    inp, out, name = act.input[0], act.output[0], act.name
    act.Clear()
    act.op_type, act.name = "Relu", name
    act.input.append(inp)
    act.output.append(out)


def _round(view: GraphView, pairs: List[Tuple[onnx.NodeProto, onnx.NodeProto]], total: List[np.ndarray]) -> float:
    """Equalize every pair once; returns the largest ``|log s|``."""
    worst = 0.0
    for k, (first, second) in enumerate(pairs):
        w1, w2 = view.array(first.input[1]), view.array(second.input[1])
        has_bias = len(first.input) > 2 and bool(first.input[2])
        b1 = view.array(first.input[2]) if has_bias else None
        eq = equalize_pair(w1, b1, w2, int(get_attr(second, "group", 1)))
        view.write_input(first, 1, eq.w1.astype(w1.dtype), "weight_equalized")
        if eq.b1 is not None:
            view.write_input(first, 2, eq.b1.astype(b1.dtype), "bias_equalized")
        view.write_input(second, 1, eq.w2.astype(w2.dtype), "weight_equalized")
        total[k] = total[k] * eq.scales
        worst = max(worst, float(np.abs(np.log(eq.scales)).max(initial=0.0)))
    return worst


def _reads_no_padding(node: onnx.NodeProto) -> bool:
    auto = get_attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    return auto in ("NOTSET", "VALID", "") and not any(get_attr(node, "pads") or ())


def _absorb(view: GraphView, first: onnx.NodeProto, act: Optional[onnx.NodeProto], second: onnx.NodeProto,
            stats: Mapping[str, Tuple[Tuple[float, ...], Tuple[float, ...]]], scale: np.ndarray) -> int:
    """Bias absorption for one pair (see the module docstring); returns the channels moved."""
    if act is None or act.op_type != "Relu" or first.name not in stats or not _reads_no_padding(second):
        return 0
    if len(first.input) < 3 or not first.input[2]:
        return 0
    beta, spread = (np.asarray(v, np.float64) for v in stats[first.name])
    if beta.shape != scale.shape:
        return 0
    c = np.maximum(beta - 3.0 * spread, 0.0) / scale
    if not np.any(c > 0):
        return 0
    b1, w2 = view.array(first.input[2]), view.array(second.input[1])
    b2 = view.array(second.input[2]) if len(second.input) > 2 and second.input[2] else None
    new_b1, new_b2 = absorb_bias(b1, w2, b2, c, int(get_attr(second, "group", 1)))
    view.write_input(first, 2, new_b1.astype(b1.dtype), "bias_absorbed")
    view.write_input(second, 2, new_b2.astype(w2.dtype), "bias_absorbed")
    return int(np.count_nonzero(c > 0))


def equalize(model: onnx.ModelProto, params: EqualizationParams = EqualizationParams(enabled=True),
             stats: Optional[Mapping[str, Tuple[Tuple[float, ...], Tuple[float, ...]]]] = None
             ) -> Tuple[onnx.ModelProto, EqualizationReport]:
    """A copy of ``model`` with its Conv pairs equalized (see the module docstring), and the report. ``stats``:
    per Conv node name, the ``(beta, |gamma|)`` of the BN folded into it (bias absorption)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    ensure_node_names(out)
    view = GraphView(out)
    pairs, labels, skipped, replaced, acts = [], [], [], [], []
    taken = set()
    for second in view.nodes("Conv"):
        if not _conv_weight(view, second):
            continue
        found, reason = _pair(view, second, params.relu6_to_relu)
        if found is None:
            if reason:
                skipped.append(("", node_label(second), reason))
            continue
        first, act, relu6 = found
        if id(first) in taken:
            continue
        taken.add(id(first))
        if relu6:
            replaced.append(node_label(act))
            _to_relu(act)
        pairs.append((first, second))
        acts.append(act)
        labels.append((node_label(first), node_label(act) if act is not None else "", node_label(second)))
    total = [np.ones(view.array(f.input[1]).shape[0]) for f, _ in pairs]
    rounds = 0
    for rounds in range(1, params.iterations + 1):
        if _round(view, pairs, total) < _TOL:
            break
    done = tuple(EqualizedPair(a, b, c, float(t.min(initial=1.0)), float(t.max(initial=1.0)))
                 for (a, b, c), t in zip(labels, total))
    absorbed = []
    if params.bias_absorption and stats:
        for (first, second), act, t in zip(pairs, acts, total):
            n = _absorb(view, first, act, second, stats, t)
            if n:
                absorbed.append((node_label(first), node_label(second), n))
    view.prune_initializers()
    return out, EqualizationReport(done, tuple(skipped), tuple(replaced), rounds if pairs else 0, tuple(absorbed))


def max_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max |a|`` (0 when both are 0): how far an equalized model's output is from the
    original's."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.abs(a).max(initial=0.0))
    diff = float(np.abs(a - b).max(initial=0.0))
    return diff / scale if scale > 0 else diff


__all__ = ["EqualizationReport", "EqualizedPair", "equalize", "max_relative_difference"]
