"""Where a deploy target wants Q/DQ in an ONNX graph: a :class:`DeployPlan` read off the registry's placements.

For each quantized layer, its activation input (every target) and, where the target's placement says so, its
output; for each op without weights that has a rule for the target (:data:`ferroquant.quant.registry.OP_RULES`),
its float activation inputs and output when they extend an integer chain (see :meth:`_Planner.walk`). An absorbing activation (Relu, Clip from 0) right after a quantized
output, read by nothing else, is absorbed: the Q/DQ moves to its output and the node is removed in the deploy
model, which is exact because the asymmetric grid calibrated on that output starts at 0 (and the clip's upper
bound caps the range). Ops that only move values (Reshape, MaxPool...) carry their input's qparams to their
outputs. Only float tensors that are not constants are quantized; graph outputs keep their float values. An
output that no integer node reads is left float (its producer then runs in float): an extra rounding that
feeds only float ops (a conv before a HardSigmoid, a GELU) costs accuracy and buys nothing downstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

import onnx

from ferroquant.onnx.graph import GraphView, node_label
from ferroquant.quant.registry import OP_RULES, Placement
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
    def __init__(self, model: onnx.ModelProto, target: str, asymmetric: bool, excluded: Set[str],
                 opt_in: FrozenSet[str] = frozenset()) -> None:
        self.view, self.target, self.asymmetric, self.excluded = GraphView(model), target, asymmetric, excluded
        self.opt_in = opt_in
        self.types = tensor_types(model)
        self.plan = DeployPlan(target)
        self.own: Dict[str, None] = {}  # tensors with their own qparams (ordered set)
        self.outputs: Dict[str, str] = {}  # quantized output tensor -> the layer or op that makes it
        self.quantized_nodes: Set[str] = set()  # layers and ops that run on integers

    def is_activation(self, t: str) -> bool:
        return bool(t) and t not in self.view.initializers and self.types.get(t) in _FLOATS

    def clip_bounds(self, node: onnx.NodeProto) -> Optional[Tuple[float, float]]:
        """(lo, hi) of an absorbable activation, or None: Relu, or Clip with a constant min of 0."""
        if node.op_type == "Relu":
            return 0.0, math.inf
        lo = self.view.array(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        hi = self.view.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if lo is None or lo.size != 1 or float(lo) != 0.0 or (hi is not None and hi.size != 1):
            return None
        return 0.0, math.inf if hi is None else float(hi)

    def absorb(self, t: str) -> Tuple[str, List[Tuple[str, str, Tuple[float, float]]]]:
        """The tensor to quantize for output ``t``: past the Relu/Clip nodes that only it feeds, when the target
        absorbs them (asymmetric activations only); and the chain of (node label, output, bounds) passed."""
        chain: List[Tuple[str, str, Tuple[float, float]]] = []
        lo, hi = self.plan.bounds.get(t, (-math.inf, math.inf))
        while self.asymmetric and not self.view.is_graph_output(t):
            users = self.view.consumers_of(t)
            node = users[0] if len(users) == 1 else None
            rule = OP_RULES.get(node.op_type) if node is not None else None
            if rule is None or not rule.absorbs or rule.placement(self.target) is None or node.input[0] != t:
                break
            bounds = self.clip_bounds(node)
            if bounds is None or not self.is_activation(node.output[0]):
                break
            lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
            t = node.output[0]
            chain.append((node_label(node), t, (lo, hi)))
        return t, chain

    def add(self, t: str) -> None:
        if self.is_activation(t):
            self.own[t] = None

    def add_output(self, t: str) -> Optional[str]:
        """Quantize output ``t`` (past what it absorbs) unless it is a graph output or excluded; returns the
        quantized tensor, or None."""
        final, chain = self.absorb(t)
        if self.view.is_graph_output(final) or final in self.excluded or not self.is_activation(final):
            return None
        for label, out, bounds in chain:
            self.plan.absorbed[label] = final
            self.plan.bounds[out] = bounds
        self.add(final)
        return final

    def layers(self, layers: Sequence[LayerInfo], nodes: Dict[str, onnx.NodeProto]) -> None:
        for layer in layers:
            self.own[layer.activation] = None
            self.quantized_nodes.add(layer.name)
            if layer.type.placement(self.target).output:
                out = self.add_output(nodes[layer.name].output[0])
                if out is not None:
                    self.plan.layer_outputs[out] = layer.name
                    self.outputs[out] = layer.name

    def quantized(self, t: str) -> bool:
        return t in self.own or t in self.plan.carried

    def walk(self) -> None:
        """The ops without weights, in graph order (so integer regions grow from the quantized layers):

        - an op that moves values (Reshape, MaxPool...) carries its input's qparams to its outputs when the
          input is quantized;
        - an op with a quantized output (QLinearAdd, QLinearConcat...) is quantized when each of its activation
          inputs is already quantized (a layer's input or output, or another such op's output): this extends
          integer chains and leaves float islands float (the Add/Mul inside a decomposed GELU or LayerNorm);
        - an op with quantized inputs only (TensorRT's residual Add) takes its float activation inputs;
        - a Relu/Clip that was not absorbed gets its output quantized when its input is.
        """
        for node in self.view.nodes():
            rule = OP_RULES.get(node.op_type)
            if rule is not None and rule.opt_in is not None and rule.opt_in not in self.opt_in:
                continue
            p = rule.placement(self.target) if rule is not None else None
            if p is None or node_label(node) in self.plan.absorbed or node.domain not in ("", "ai.onnx"):
                continue
            src = node.input[0] if node.input else ""
            if rule.carries:
                if self.quantized(src):
                    self.quantized_nodes.add(node_label(node))
                    root = self.plan.carried.get(src, src)
                    for out in node.output:
                        if self.is_activation(out) and not self.view.is_graph_output(out):
                            self.plan.carried[out] = root
                            self.own.pop(out, None)
            elif rule.absorbs:
                if self.quantized(src):
                    self.op_output(node)
            else:
                self.op(node, p)

    def op(self, node: onnx.NodeProto, p: Placement) -> None:
        inputs = [t for i, t in enumerate(node.input) if t and (p.inputs is None or i in p.inputs)]
        if not inputs or not all(self.is_activation(t) for t in inputs):
            return  # a constant or non-float input: the op stays float
        if p.output and not all(self.quantized(t) for t in inputs):
            return  # not fed by integer tensors: nothing to fuse with
        for t in inputs:
            self.add(t)
            self.plan.op_tensors.add(t)
        self.quantized_nodes.add(node_label(node))
        if p.output:
            self.op_output(node)

    def op_output(self, node: onnx.NodeProto) -> None:
        out = self.add_output(node.output[0])
        if out is not None:
            self.plan.op_tensors.add(out)
            self.outputs[out] = node_label(node)

    def unread(self) -> Set[str]:
        """Quantized outputs that no integer node reads: quantizing them makes their producer an integer kernel
        at the price of an extra rounding, for nothing downstream (a conv before a float activation)."""
        out = set()
        for t in self.outputs:
            readers = [node_label(n) for n in self.view.consumers_of(t)]
            if not any(r in self.quantized_nodes for r in readers):
                out.add(t)
        return out


def plan_deploy(model: onnx.ModelProto, layers: Sequence[LayerInfo], target: str,
                asymmetric: bool = True, opt_in: FrozenSet[str] = frozenset()) -> DeployPlan:
    """The Q/DQ layout of ``model`` (fused, float) for ``target`` (a registry placement name), given the quantized
    ``layers``. ``asymmetric``: whether the extra activations are calibrated asymmetrically (Relu/Clip are
    absorbed only then); ``opt_in``: the opt-in rules that apply (``activation_matmul``: attention's
    activation x activation MatMuls). For ``amct`` the plan is empty: layer inputs only."""
    excluded: Set[str] = set()
    planner = _Planner(model, target, asymmetric, excluded, opt_in)
    if target == "amct":
        return planner.plan
    nodes = {node_label(n): n for n in model.graph.node}
    while True:  # leave out the outputs no integer node reads, until none is left (each round drops some)
        planner.layers(layers, nodes)
        planner.walk()
        unread = planner.unread()
        if not unread:
            break
        excluded |= unread
        planner = _Planner(model, target, asymmetric, excluded, opt_in)
    layer_inputs = {l.activation for l in layers}
    planner.plan.calibrate = [t for t in planner.own if t not in layer_inputs and t not in planner.plan.carried]
    return planner.plan


__all__ = ["DeployPlan", "plan_deploy", "tensor_types"]
