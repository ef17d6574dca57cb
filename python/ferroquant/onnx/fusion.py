"""Deployment fusion of BatchNormalization (spec section 6): Conv/ConvTranspose/Gemm + BN, BN + Mul, BN + Add.

BN computes ``y = gamma * (x - mean) / sqrt(var + eps) + beta``; with ``k = gamma / sqrt(var + eps)`` per
channel, each fold below rewrites constants in float64 and casts back to the original dtype:

- :func:`fold_conv_batch_norm`: ``W'[o] = W[o] * k[o]``, ``b' = (b - mean) * k + beta``; the BN is removed.
  The output-channel axis is 0 for Conv, 0/1 for Gemm with transB=1/0, and for ConvTranspose (weight
  ``[C_in, C_out/g, ...]``) axis 1 within each group: output ``o = gi * (C_out/g) + j`` scales
  ``W[gi*(C_in/g):(gi+1)*(C_in/g), j]``.
- :func:`fold_batch_norm_mul`: ``gamma' = gamma * m``, ``beta' = beta * m``; the Mul is removed.
- :func:`fold_batch_norm_add`: ``beta' = beta + c``; the Add is removed.

A fold is skipped (and the report says why) when: the node or the BN is named in ``skip_fusion_layers``; the
BN is in training mode (``training_mode=1``) or its running-statistics outputs are used; its parameters are
not all initializers; ``var + eps <= 0`` for some channel; for Conv+BN, the conv output has another reader or
is a graph output; for BN+Mul/Add, the BN output has another reader or is a graph output, the Mul/Add output
is a graph output, or the constant is not per-channel on axis 1 (``[]``, ``[1]``, ``[C,1,..]``,
``[1,C,1,..]``; ``[C]`` only for rank-2 inputs) or of another dtype. :func:`fuse` runs all passes to a
fixed point. The arithmetic lives in :mod:`ferroquant.quant.fold` and which producers fold a BN (and how) in the
layer registry (:mod:`ferroquant.quant.registry`); this module decides and rewires.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, FrozenSet, Iterable, List, Optional, Tuple, Union

import numpy as np
import onnx

from ferroquant.onnx.graph import GraphView, ensure_node_names, get_attr, node_label, set_attr
from ferroquant.quant import fold as fm
from ferroquant.quant.registry import folding_producer


@dataclass(frozen=True)
class Folded:
    """One fold done: BN ``node`` merged into ``into`` (a Conv/ConvTranspose/Gemm), or Mul/Add ``into``
    merged into BN ``node`` (``kind`` is ``"conv_bn"``, ``"bn_mul"`` or ``"bn_add"``). A ``conv_bn`` fold keeps
    the BN's ``beta`` and ``|gamma|`` per channel: the mean and spread of the folded layer's output that the BN
    was trained for (bias absorption in cross-layer equalization reads them)."""

    kind: str
    node: str
    into: str
    beta: Tuple[float, ...] = ()
    spread: Tuple[float, ...] = ()

    @property
    def removed(self) -> str:
        """The name of the node the fold removed from the graph."""
        return self.node if self.kind == "conv_bn" else self.into


@dataclass(frozen=True)
class Skipped:
    """A fold that was possible in shape but not done, and why."""

    kind: str
    node: str
    reason: str


@dataclass(frozen=True)
class FusionReport:
    """What a fusion pass (or :func:`fuse`) folded and skipped."""

    folded: Tuple[Folded, ...] = ()
    skipped: Tuple[Skipped, ...] = ()
    enabled: bool = True

    @property
    def removed_nodes(self) -> Tuple[str, ...]:
        """Names of the nodes removed from the graph."""
        return tuple(f.removed for f in self.folded)

    def summary(self) -> str:
        """One line per fold and per skip, for logs and the CLI."""
        lines = [f"folded {f.kind}: {f.node} <- {f.into}" for f in self.folded]
        lines += [f"skipped {s.kind}: {s.node}: {s.reason}" for s in self.skipped]
        return "\n".join(lines) if lines else ("fusion disabled" if not self.enabled else "nothing to fold")


class _Log:
    def __init__(self, skip: FrozenSet[str]) -> None:
        self.skip, self.folded, self.skipped = skip, [], []  # type: ignore[var-annotated]

    def report(self) -> FusionReport:
        return FusionReport(tuple(self.folded), tuple(self.skipped))


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    ensure_node_names(out)
    return out


def _bn_params(view: GraphView, bn: onnx.NodeProto) -> Union[fm.BatchNormParams, str]:
    """The BN's constants in float64, or the reason it cannot be folded."""
    if get_attr(bn, "training_mode", 0):
        return "BatchNormalization in training mode (training_mode=1)"
    if any(out for out in bn.output[1:]):
        return "its running-statistics outputs are used"
    if len(bn.input) < 5:
        return "BatchNormalization with fewer than 5 inputs"
    arrays = [view.array(name) for name in bn.input[1:5]]
    if any(a is None for a in arrays):
        return "scale, bias, mean and var are not all initializers"
    params = fm.BatchNormParams.make(*arrays, eps=float(get_attr(bn, "epsilon", 1e-5)))  # type: ignore[misc]
    return params


def _conv_candidate(view: GraphView, bn: onnx.NodeProto, skip: FrozenSet[str]) -> Tuple[Optional[onnx.NodeProto], str]:
    """The Conv/ConvTranspose/Gemm to fold ``bn`` into, or None and the reason."""
    conv = view.producer(bn.input[0])
    if conv is None or folding_producer(conv.op_type, conv.domain) is None:
        return None, "its input is not made by a Conv, ConvTranspose or Gemm"
    if bn.name in skip or conv.name in skip:
        return None, "named in skip_fusion_layers"
    if not view.only_consumer(bn.input[0], bn):
        return None, f"the output of {node_label(conv)} has other readers or is a graph output"
    if not view.is_constant(conv.input[1]):
        return None, f"the weight of {node_label(conv)} is not an initializer"
    if len(conv.input) > 2 and conv.input[2] and not view.is_constant(conv.input[2]):
        return None, f"the bias of {node_label(conv)} is not an initializer"
    return conv, ""


def _fold_into_conv(view: GraphView, bn: onnx.NodeProto, conv: onnx.NodeProto,
                    params: fm.BatchNormParams) -> str:
    """Rewrite ``conv``'s weight and bias and remove ``bn``; returns "" or the reason nothing changed."""
    w = view.array(conv.input[1])
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    b = view.array(conv.input[2]) if has_bias else None
    if not np.issubdtype(w.dtype, np.floating):
        return f"weight dtype {w.dtype} is not floating point"
    t = folding_producer(conv.op_type, conv.domain)
    if t is not None and t.fold == "gemm":
        folded = fm.fold_gemm(w, b, params, bool(get_attr(conv, "transB", 0)), float(get_attr(conv, "beta", 1.0)))
    else:
        folded = fm.fold_conv(w, b, params, int(get_attr(conv, "group", 1)), t is not None and t.transposed)
    if isinstance(folded, str):
        return folded
    new_w, new_b = folded
    view.write_input(conv, 1, new_w.astype(w.dtype), "weight_folded")
    view.write_input(conv, 2, new_b.astype(w.dtype), "bias_folded")
    if t is not None and t.fold == "gemm":
        set_attr(conv, "beta", 1.0)
    view.bypass(bn, keep=bn.input[0])
    return ""


def _conv_pass(view: GraphView, log: _Log) -> None:
    for bn in view.nodes("BatchNormalization"):
        conv, reason = _conv_candidate(view, bn, log.skip)
        if conv is not None:
            params = _bn_params(view, bn)
            reason = params if isinstance(params, str) else _fold_into_conv(view, bn, conv, params)
        if reason:
            log.skipped.append(Skipped("conv_bn", bn.name, reason))
        else:
            log.folded.append(Folded("conv_bn", bn.name, conv.name,  # type: ignore[union-attr]
                                     tuple(params.beta.tolist()), tuple(np.abs(params.gamma).tolist())))


def _rank(view: GraphView, names: Iterable[str]) -> Optional[int]:
    """The rank of the first of ``names`` whose shape is known (from shape inference or graph I/O)."""
    for name in names:
        shape = view.declared_shape(name)
        if shape is not None:
            return len(shape)
    return None


def _elementwise_candidate(view: GraphView, node: onnx.NodeProto) -> Optional[Tuple[onnx.NodeProto, str]]:
    """The BN feeding ``node`` and the name of ``node``'s constant input, or None when not that pattern."""
    for i in (0, 1):
        if len(node.input) != 2:
            return None
        bn = view.producer(node.input[i])
        const = node.input[1 - i]
        if bn is not None and bn.op_type == "BatchNormalization" and view.is_constant(const):
            return bn, const
    return None


def _elementwise_reason(view: GraphView, bn: onnx.NodeProto, node: onnx.NodeProto, c: np.ndarray,
                        params: fm.BatchNormParams, skip: FrozenSet[str]) -> str:
    if bn.name in skip or node.name in skip:
        return "named in skip_fusion_layers"
    if not view.only_consumer(bn.output[0], node):
        return f"the output of {bn.name} has other readers or is a graph output"
    if view.is_graph_output(node.output[0]):
        return f"the output of {node.name} is a graph output"
    if c.dtype != params.dtype:
        return f"constant dtype {c.dtype} differs from the BN's {params.dtype}"
    rank = _rank(view, (bn.output[0], bn.input[0]))
    return fm.per_channel_reason(c.shape, params.channels, rank)


def _elementwise_pass(view: GraphView, log: _Log, op: str) -> None:
    kind = "bn_mul" if op == "Mul" else "bn_add"
    for node in view.nodes(op):
        found = _elementwise_candidate(view, node)
        if found is None:
            continue
        bn, const = found
        params = _bn_params(view, bn)
        reason = params if isinstance(params, str) else _elementwise_reason(
            view, bn, node, view.array(const), params, log.skip)
        if reason:
            log.skipped.append(Skipped(kind, bn.name, str(reason)))
            continue
        gamma, beta = fm.fold_elementwise(params, view.array(const), op)  # type: ignore[arg-type]
        view.write_input(bn, 1, gamma, "scale_folded")
        view.write_input(bn, 2, beta, "bias_folded")
        view.bypass(node, keep=bn.output[0])
        log.folded.append(Folded(kind, bn.name, node.name))


def _run(model: onnx.ModelProto, skip_fusion_layers: Iterable[str],
         body: Callable[[GraphView, _Log], None]) -> Tuple[onnx.ModelProto, FusionReport]:
    out, log = _copy(model), _Log(frozenset(skip_fusion_layers))
    view = GraphView(out)  # one index for every pass: the view follows each edit
    body(view, log)
    view.prune_initializers()
    return out, log.report()


def fold_conv_batch_norm(model: onnx.ModelProto, skip_fusion_layers: Iterable[str] = ()
                         ) -> Tuple[onnx.ModelProto, FusionReport]:
    """Fold each BatchNormalization into the Conv (1-D/2-D/3-D, grouped, depthwise), ConvTranspose or Gemm
    before it; returns a new model and the report. Conditions are in the module docstring."""
    return _run(model, skip_fusion_layers, _conv_pass)


def fold_batch_norm_mul(model: onnx.ModelProto, skip_fusion_layers: Iterable[str] = ()
                        ) -> Tuple[onnx.ModelProto, FusionReport]:
    """Fold each Mul by a per-channel constant that follows a BatchNormalization into its gamma and beta."""
    return _run(model, skip_fusion_layers, lambda m, log: _elementwise_pass(m, log, "Mul"))


def fold_batch_norm_add(model: onnx.ModelProto, skip_fusion_layers: Iterable[str] = ()
                        ) -> Tuple[onnx.ModelProto, FusionReport]:
    """Fold each Add of a per-channel constant that follows a BatchNormalization into its beta."""
    return _run(model, skip_fusion_layers, lambda m, log: _elementwise_pass(m, log, "Add"))


def _fixed_point(view: GraphView, log: _Log) -> None:
    """Fold BN+Mul/Add until none is left, then Conv+BN; repeat until a round folds nothing.

    The element-wise folds must finish first: once a BN is folded into its conv, a Mul or Add after it can
    no longer be folded (a chain BN -> Mul -> Add -> Mul folds completely only in that order).
    """
    folded: List[Folded] = []
    while True:
        start = len(folded)
        while True:
            log.folded, log.skipped = [], []
            _elementwise_pass(view, log, "Mul")
            _elementwise_pass(view, log, "Add")
            folded += log.folded
            if not log.folded:
                break
        elementwise_skips = log.skipped
        log.folded, log.skipped = [], []
        _conv_pass(view, log)
        folded += log.folded
        log.skipped = elementwise_skips + log.skipped
        if len(folded) == start:
            break
    log.folded = folded


def fuse(model: onnx.ModelProto, do_fusion: bool = True, skip_fusion_layers: Iterable[str] = ()
         ) -> Tuple[onnx.ModelProto, FusionReport]:
    """Run BN+Mul, BN+Add and Conv+BN folding until nothing changes; returns a new model and the report.

    BN+Mul and BN+Add go first in each round, so a chain BN -> Mul -> Add folds one node at a time into the
    BN, which then folds into the conv before it. ``skip_fusion_layers`` names nodes (Conv, BN, Mul or Add)
    to leave alone; ``do_fusion=False`` returns an unchanged copy. The report's ``skipped`` lists the folds
    still not done at the fixed point, with the reason.
    """
    skip = frozenset(skip_fusion_layers)
    names = {n.name for n in model.graph.node}
    unknown = sorted(skip - names)
    if unknown:
        warnings.warn(f"skip_fusion_layers names no node of the model: {unknown}", stacklevel=2)
    if not do_fusion:
        return _copy(model), FusionReport(enabled=False)
    return _run(model, skip, _fixed_point)
