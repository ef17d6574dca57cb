"""Where a deploy target wants Q/DQ in an ONNX graph: a :class:`DeployPlan` read off the registry's placements.

For each quantized layer, its activation input (every target) and, where the target's placement says so, its
output; for each op without weights that has a rule for the target (:data:`ferroquant.quant.registry.OP_RULES`),
its float activation inputs and output. An absorbing activation (Relu, Clip from 0) right after a quantized
output, read by nothing else, is absorbed: the Q/DQ moves to its output and the node is removed in the deploy
model, which is exact because the asymmetric grid calibrated on that output starts at 0 (and the clip's upper
bound caps the range). Ops that only move values (Reshape, MaxPool...) carry their input's qparams to their
outputs. Only float tensors that are not constants are quantized; graph outputs keep their float values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import onnx

from ferroquant.onnx.graph import GraphView, node_label
from ferroquant.quant.registry import OP_RULES
from ferroquant.quant.table import LayerInfo

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class DeployPlan:
    """The Q/DQ layout of a deploy model for one target.

    ``calibrate``: tensors that need their own qparams (besides the layers' inputs), in graph order;
    ``carried``: tensor -> the tensor whose qparams it reuses; ``absorbed``: label of a removed activation node ->
    the quantized tensor that takes its place (its output, or the last output of a chain); ``bounds``: tensor -> (lo, hi) its values cannot leave (from an
    absorbed Relu/Clip), which the qparams must respect."""

    target: str
    calibrate: List[str] = field(default_factory=list)
    carried: Dict[str, str] = field(default_factory=dict)
    absorbed: Dict[str, str] = field(default_factory=dict)
    bounds: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    layer_outputs: Dict[str, str] = field(default_factory=dict)  # quantized tensor -> the layer it is the output of
    op_tensors: Set[str] = field(default_factory=set)  # inputs and outputs of the ops the target quantizes

    def needed(self, t: str, layer_inputs: Set[str], layers: Set[str]) -> bool:
        """Whether tensor ``t`` needs its Q/DQ when only ``layers`` (reading ``layer_inputs``) are quantized: it
        is a quantized layer's input or output, or an input or output of a quantized op."""
        t = self.carried.get(t, t)
        return t in layer_inputs or self.layer_outputs.get(t) in layers or t in self.op_tensors

    def quantized(self, layer_inputs: Sequence[str]) -> List[str]:
        """Every tensor that may get a Q/DQ pair: layer inputs and outputs, calibrated and carried tensors."""
        return list(dict.fromkeys([*layer_inputs, *self.layer_outputs, *self.calibrate, *self.carried]))


def tensor_types(model: onnx.ModelProto) -> Dict[str, int]:
    """Element type of every tensor whose type the graph declares (inputs, outputs, value_info, initializers)."""
    g = model.graph
    out = {t.name: t.data_type for t in g.initializer}
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = vi.type.tensor_type.elem_type
    return out


class _Planner:
    def __init__(self, model: onnx.ModelProto, target: str, asymmetric: bool) -> None:
        self.view, self.target, self.asymmetric = GraphView(model), target, asymmetric
        self.types = tensor_types(model)
        self.plan = DeployPlan(target)
        self.own: Dict[str, None] = {}  # tensors with their own qparams (ordered set)

    def is_activation(self, t: str) -> bool:
        return bool(t) and self.view.array(t) is None and t not in self.view.initializers and \
            self.types.get(t) in _FLOATS

    def clip_bounds(self, node: onnx.NodeProto) -> Optional[Tuple[float, float]]:
        """(lo, hi) of an absorbable activation, or None: Relu, or Clip with a constant min of 0."""
        if node.op_type == "Relu":
            return 0.0, math.inf
        lo = self.view.array(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = self.view.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if lo is None or lo.size != 1 or float(lo) != 0.0 or (hi is not None and hi.size != 1):
            return None
        return 0.0, math.inf if hi is None else float(hi)

    def absorb(self, t: str) -> str:
        """The tensor to quantize for output ``t``: past a Relu/Clip that only ``t`` feeds, when the target
        absorbs it (asymmetric activations only)."""
        users = self.view.consumers_of(t)
        if not self.asymmetric or len(users) != 1 or self.view.is_graph_output(t):
            return t
        node = users[0]
        rule = OP_RULES.get(node.op_type)
        if rule is None or not rule.absorbs or rule.placement(self.target) is None or node.input[0] != t:
            return t
        bounds = self.clip_bounds(node)
        if bounds is None or not self.is_activation(node.output[0]):
            return t
        out = node.output[0]
        lo, hi = self.plan.bounds.get(t, (-math.inf, math.inf))
        self.plan.bounds[out] = (max(lo, bounds[0]), min(hi, bounds[1]))
        final = self.absorb(out)
        self.plan.absorbed[node_label(node)] = final
        return final

    def add(self, t: str) -> None:
        if self.is_activation(t):
            self.own[t] = None

    def add_output(self, t: str) -> str:
        t = self.absorb(t)
        if not self.view.is_graph_output(t):
            self.add(t)
        return t

    def layers(self, layers: Sequence[LayerInfo], nodes: Dict[str, onnx.NodeProto]) -> None:
        for layer in layers:
            self.own[layer.activation] = None
            if layer.type.placement(self.target).output:
                out = self.add_output(nodes[layer.name].output[0])
                if out in self.own:
                    self.plan.layer_outputs[out] = layer.name

    def ops(self, skip: Set[str]) -> None:
        for node in self.view.nodes():
            rule = OP_RULES.get(node.op_type)
            p = rule.placement(self.target) if rule is not None else None
            if p is None or rule.carries or rule.absorbs or node_label(node) in skip or node.domain not in ("", "ai.onnx"):
                continue
            inputs = [t for i, t in enumerate(node.input) if t and (p.inputs is None or i in p.inputs)]
            if not inputs or not all(self.is_activation(t) for t in inputs):
                continue  # a constant or non-float input: the op stays float
            for t in inputs:
                self.add(t)
                self.plan.op_tensors.add(t)
            if p.output:
                self.plan.op_tensors.add(self.add_output(node.output[0]))

    def carry(self) -> None:
        """Ops that move values take their input's qparams (graph order, so chains propagate); Relu/Clip that were
        not absorbed get their output quantized when their input is."""
        for node in self.view.nodes():
            rule = OP_RULES.get(node.op_type)
            if rule is None or rule.placement(self.target) is None or node_label(node) in self.plan.absorbed:
                continue
            src = node.input[0] if node.input else ""
            quantized = src in self.own or src in self.plan.carried
            if not quantized:
                continue
            if rule.carries:
                root = self.plan.carried.get(src, src)
                for out in node.output:
                    if self.is_activation(out) and not self.view.is_graph_output(out):
                        self.plan.carried[out] = root
                        self.own.pop(out, None)
            elif rule.absorbs:
                self.plan.op_tensors.add(self.add_output(node.output[0]))


def plan_deploy(model: onnx.ModelProto, layers: Sequence[LayerInfo], target: str,
                asymmetric: bool = True) -> DeployPlan:
    """The Q/DQ layout of ``model`` (fused, float) for ``target`` (a registry placement name), given the quantized
    ``layers``. ``asymmetric``: whether the extra activations are calibrated asymmetrically (Relu/Clip are
    absorbed only then). For ``amct`` the plan is empty: layer inputs only."""
    planner = _Planner(model, target, asymmetric)
    if target == "amct":
        return planner.plan
    nodes = {node_label(n): n for n in model.graph.node}
    planner.layers(layers, nodes)
    planner.ops(set())
    planner.carry()
    layer_inputs = {l.activation for l in layers}
    planner.plan.calibrate = [t for t in planner.own if t not in layer_inputs and t not in planner.plan.carried]
    return planner.plan


__all__ = ["DeployPlan", "plan_deploy", "tensor_types"]
