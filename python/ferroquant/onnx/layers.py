"""Which nodes of an ONNX graph are quantizable layers: the registry's op types whose weight input is a constant
float initializer and whose activation input is not, minus what the entry refuses (Gemm with transA, a MatMul
with a 1-D weight...). Op knowledge (weight axis, groups, bias input) comes from :mod:`ferroquant.quant.registry`."""

from __future__ import annotations

from typing import List, Sequence, Set

import onnx

from ferroquant.onnx.graph import GraphView, get_attr, node_label
from ferroquant.quant.registry import REGISTRY
from ferroquant.quant.table import LayerInfo


def quantizable_layers(model: onnx.ModelProto) -> List[LayerInfo]:
    """The quantizable layers of ``model``'s top-level graph, in graph order."""
    view = GraphView(model)
    out: List[LayerInfo] = []
    for node in view.nodes():
        t = REGISTRY.get(node.op_type)
        if t is None or node.domain not in ("", "ai.onnx") or len(node.input) <= t.weight_input:
            continue
        w = view.array(node.input[t.weight_input])
        if w is None or w.dtype.kind != "f" or view.is_constant(node.input[0]):
            continue

        def attr(name, default, node=node):  # noqa: ANN001, ANN202
            return get_attr(node, name, default)

        if t.refuse(attr, w.ndim) is not None:
            continue
        bias = None
        if t.bias_input is not None and len(node.input) > t.bias_input and node.input[t.bias_input]:
            bias = node.input[t.bias_input] if view.is_constant(node.input[t.bias_input]) else None
        out.append(LayerInfo(node_label(node), node.op_type, node.input[0], node.input[t.weight_input], bias,
                             t.axis(attr, w.ndim), t.groups(attr)))
    return out


def is_depthwise(view: GraphView, node: onnx.NodeProto) -> bool:
    """A Conv whose every output channel reads one input channel: ``group`` > 1 and weight ``[C_out, 1, ...]``."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    w = view.array(node.input[1])
    return w is not None and w.ndim >= 3 and w.shape[1] == 1 and int(get_attr(node, "group", 1)) > 1


def depthwise_inputs(model: onnx.ModelProto, layers: Sequence[LayerInfo]) -> Set[str]:
    """The activation tensors that only depthwise Convs among ``layers`` read: those can take per-channel
    scales (a channel's scale factors out of its own products)."""
    view = GraphView(model)
    nodes = {node_label(n): n for n in model.graph.node}
    readers: dict = {}
    for l in layers:
        readers.setdefault(l.activation, []).append(is_depthwise(view, nodes[l.name]))
    return {t for t, dw in readers.items() if all(dw)}


__all__ = ["depthwise_inputs", "is_depthwise", "quantizable_layers"]
