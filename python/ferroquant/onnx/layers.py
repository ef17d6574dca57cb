"""Which nodes of an ONNX graph are quantizable layers: the registry's op types whose weight input is a constant
float initializer and whose activation input is not, minus what the entry refuses (Gemm with transA, a MatMul
with a 1-D weight...). Op knowledge (weight axis, groups, bias input) comes from :mod:`ferroquant.quant.registry`."""

from __future__ import annotations

from typing import List

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
        if w is None or w.dtype.kind != "f" or view.array(node.input[0]) is not None:
            continue

        def attr(name, default, node=node):  # noqa: ANN001, ANN202
            return get_attr(node, name, default)

        if t.refuse(attr, w.ndim) is not None:
            continue
        bias = None
        if t.bias_input is not None and len(node.input) > t.bias_input and node.input[t.bias_input]:
            bias = node.input[t.bias_input] if view.array(node.input[t.bias_input]) is not None else None
        out.append(LayerInfo(node_label(node), node.op_type, node.input[0], node.input[t.weight_input], bias,
                             t.axis(attr, w.ndim), t.groups(attr)))
    return out


__all__ = ["quantizable_layers"]
