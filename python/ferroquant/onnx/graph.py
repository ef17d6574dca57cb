"""A small mutable view over an ONNX graph: who produces and who consumes each tensor, initializers as NumPy.

The view indexes ``model.graph`` once; every edit made through it (set an initializer, rewire a tensor, remove
a node) keeps the indexes right, so passes can look up, rewrite and look up again without rebuilding.

Subgraphs (the bodies of ``If``, ``Loop``, ``Scan``) are never edited: ferroquant leaves them as they are and
quantizes only the top-level graph. They are still seen: every outer-scope tensor a subgraph reads counts as
an input of the node that owns the subgraph (so a pass never removes or rewires a tensor a subgraph needs), and
names defined inside subgraphs are never reused for new tensors.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ferroquant.errors import ModelError


def node_label(node: onnx.NodeProto) -> str:
    """The name used for a node in reports and errors: its name, else ``op_type(first output)``."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else ''})"


#: the standard ops whose attributes hold graphs; nodes of the standard domain with no other op_type hold none,
#: so their attributes are not read (a model's every node is indexed, often several times per run)
_WITH_GRAPHS = frozenset({"If", "Loop", "Scan", "SequenceMap"})


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (``If`` branches, ``Loop``/``Scan`` bodies)."""
    if node.op_type not in _WITH_GRAPHS and node.domain in ("", "ai.onnx"):
        return
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _outer_names(graph: onnx.GraphProto) -> Set[str]:
    """Names ``graph`` (and the graphs nested in it) read from enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    used: Set[str] = {o.name for o in graph.output}
    for node in graph.node:
        used.update(i for i in node.input if i)
        for g in subgraphs(node):
            used |= _outer_names(g)
        defined.update(node.output)
    return used - defined


def implicit_inputs(node: onnx.NodeProto) -> List[str]:
    """The outer-scope tensors ``node``'s subgraphs read (empty for nodes without subgraphs), sorted."""
    names: Set[str] = set()
    for g in subgraphs(node):
        names |= _outer_names(g)
    return sorted(names)


def names_inside(graph: onnx.GraphProto) -> Set[str]:
    """Every tensor name defined or used in the graphs nested in ``graph``'s nodes (at any depth)."""
    out: Set[str] = set()
    for node in graph.node:
        for g in subgraphs(node):
            out |= {i.name for i in g.input} | {o.name for o in g.output} | {t.name for t in g.initializer}
            out |= {v.name for v in g.value_info}
            for n in g.node:
                out.update(x for x in list(n.input) + list(n.output) if x)
            out |= names_inside(g)
    return out


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every unnamed top-level node a unique name ``<op_type>_<index>`` (in place)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name, k = f"{node.op_type}_{i}", 0
            while name in taken:
                k += 1
                name = f"{node.op_type}_{i}_{k}"
            node.name = name
            taken.add(name)


def get_attr(node: onnx.NodeProto, name: str, default=None):  # noqa: ANN001, ANN201 - any attribute type
    """The value of attribute ``name`` of ``node``, or ``default`` when it is absent."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:  # noqa: ANN001 - any attribute type
    """Set (or add) attribute ``name`` of ``node``."""
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


class GraphView:
    """Producers, consumers and initializers of ``model.graph``, kept current across edits."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers: Dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self.producers: Dict[str, onnx.NodeProto] = {}
        self.consumers: Dict[str, List[onnx.NodeProto]] = {}
        #: id(node) -> outer-scope tensors its subgraphs read (only nodes that have subgraphs)
        self.implicit: Dict[int, List[str]] = {}
        self._inner: Optional[Set[str]] = None
        for node in self.graph.node:
            self._index(node)
        self.outputs: Set[str] = {o.name for o in self.graph.output}
        #: initializers that are also graph inputs: defaults a caller may override, so not constants
        self.overridable: Set[str] = {i.name for i in self.graph.input} & set(self.initializers)

    def _index(self, node: onnx.NodeProto) -> None:
        for out in node.output:
            if out:
                self.producers[out] = node
        implicit = implicit_inputs(node)
        if implicit:
            self.implicit[id(node)] = implicit
        for inp in list(node.input) + implicit:
            if inp:
                self.consumers.setdefault(inp, []).append(node)

    def reads(self, node: onnx.NodeProto) -> List[str]:
        """The tensors ``node`` reads: its inputs and the outer-scope tensors its subgraphs read."""
        return [i for i in node.input if i] + self.implicit.get(id(node), [])

    def nodes(self, op_type: Optional[str] = None) -> Iterator[onnx.NodeProto]:
        """A snapshot of the nodes (of one op type when given), safe to iterate while editing."""
        return iter([n for n in self.graph.node if op_type is None or n.op_type == op_type])

    def producer(self, tensor: str) -> Optional[onnx.NodeProto]:
        """The node that makes ``tensor`` (None for graph inputs and initializers)."""
        return self.producers.get(tensor)

    def consumers_of(self, tensor: str) -> List[onnx.NodeProto]:
        """The nodes that read ``tensor`` (a node reading it twice appears twice)."""
        return list(self.consumers.get(tensor, ()))

    def is_graph_output(self, tensor: str) -> bool:
        """Whether ``tensor`` is one of the graph's outputs."""
        return tensor in self.outputs

    def only_consumer(self, tensor: str, node: onnx.NodeProto) -> bool:
        """Whether ``node`` is the one and only reader of ``tensor`` and ``tensor`` is not a graph output."""
        users = self.consumers.get(tensor, [])
        return len(users) == 1 and users[0] is node and not self.is_graph_output(tensor)

    def declared_shape(self, name: str) -> Optional[Tuple[Optional[int], ...]]:
        """The shape ``name`` is declared with in the graph (value_info, as shape inference leaves it, then the
        graph inputs and outputs; the first entry that has a shape), each axis its size or None where it is
        symbolic or unknown; None when no entry gives a shape."""
        g = self.graph
        for vi in (*g.value_info, *g.input, *g.output):
            if vi.name == name and vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                return tuple(int(d.dim_value) if d.HasField("dim_value") else None
                             for d in vi.type.tensor_type.shape.dim)
        return None

    def is_constant(self, name: str) -> bool:
        """Whether ``name`` is a constant: an initializer that is not also a graph input (what :meth:`array`
        returns an array for), told without converting it."""
        return name in self.initializers and name not in self.overridable

    def array(self, name: str) -> Optional[np.ndarray]:
        """The constant ``name`` as a NumPy array (a copy), or None when it is not an initializer or is an
        overridable one (also a graph input)."""
        tensor = None if name in self.overridable else self.initializers.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor).copy()

    def set_initializer(self, name: str, value: np.ndarray) -> None:
        """Create initializer ``name`` or replace its value (and dtype/shape) with ``value``."""
        arr = np.asarray(value)
        # np.ascontiguousarray would turn a 0-d value into shape (1,): keep the shape as it is
        new = numpy_helper.from_array(arr if arr.flags.c_contiguous else arr.copy(order="C"), name)
        old = self.initializers.get(name)
        if old is None:
            self.graph.initializer.append(new)
            self.initializers[name] = self.graph.initializer[-1]
        else:
            old.CopyFrom(new)

    def unique_name(self, base: str) -> str:
        """A tensor name not used by any initializer, node output, node input, graph input or subgraph."""
        if self._inner is None:
            self._inner = names_inside(self.graph)
        used = set(self.initializers) | set(self.producers) | set(self.consumers) | self._inner
        used |= {i.name for i in self.graph.input}
        name, k = base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        return name

    def write_input(self, node: onnx.NodeProto, index: int, value: np.ndarray, suffix: str) -> None:
        """Give input ``index`` of ``node`` the constant ``value``.

        The initializer is overwritten in place when ``node`` is its only reader; otherwise (shared, or the
        input is empty or absent) a new initializer named after the node and ``suffix`` is made and wired in.
        """
        current = node.input[index] if index < len(node.input) else ""
        if current and current in self.initializers and self.only_consumer(current, node):
            self.set_initializer(current, value)
            return
        name = self.unique_name(f"{node_label(node)}.{suffix}")
        self.set_initializer(name, value)
        while len(node.input) <= index:
            node.input.append("")
        if current:
            self.consumers[current] = [n for n in self.consumers[current] if n is not node]
        node.input[index] = name
        self.consumers.setdefault(name, []).append(node)

    def replace_input(self, node: onnx.NodeProto, old: str, new: str) -> None:
        """Make ``node`` read ``new`` wherever it reads ``old`` as an input (not inside its subgraphs)."""
        hits = [i for i, name in enumerate(node.input) if name == old]
        if not hits:
            return
        for i in hits:
            node.input[i] = new
        if old not in self.implicit.get(id(node), []):
            self.consumers[old] = [n for n in self.consumers.get(old, []) if n is not node]
            if not self.consumers[old]:
                del self.consumers[old]
        self.consumers.setdefault(new, []).append(node)

    def bypass(self, node: onnx.NodeProto, keep: str) -> None:
        """Remove single-output ``node``, making ``keep`` (one of its inputs) stand in for its output.

        The producer of ``keep`` is renamed to write the removed node's output, so graph outputs and all
        readers stay valid. ``keep`` must be read only by ``node`` and not be a graph output.
        """
        if not self.only_consumer(keep, node):
            raise ModelError(f"cannot bypass: {keep!r} has other readers", node_label(node))
        out = node.output[0]
        producer = self.producers.get(keep)
        if producer is None:
            raise ModelError(f"cannot bypass: {keep!r} has no producing node", node_label(node))
        self.remove_node(node)
        producer.output[list(producer.output).index(keep)] = out
        del self.producers[keep]
        self.producers[out] = producer

    def remove_node(self, node: onnx.NodeProto) -> None:
        """Remove ``node`` from the graph and the indexes (its outputs must be unused by then)."""
        for inp in self.reads(node):
            if inp in self.consumers:
                self.consumers[inp] = [n for n in self.consumers[inp] if n is not node]
                if not self.consumers[inp]:
                    del self.consumers[inp]
        for out in node.output:
            if self.producers.get(out) is node:
                del self.producers[out]
        self.implicit.pop(id(node), None)
        for i, n in enumerate(self.graph.node):
            if n is node:
                del self.graph.node[i]
                return

    def prune_initializers(self) -> List[str]:
        """Delete initializers no node (nor any subgraph) reads and that are no graph output; return their
        names. Deleted one by one, with no reference kept to them: removing a message that Python still
        references makes protobuf copy it first (the whole weights of a large model)."""
        used = {i for n in self.graph.node for i in self.reads(n)} | self.outputs
        dead = [t.name for t in self.graph.initializer if t.name not in used]
        if dead:
            gone = set(dead)
            for name in dead:
                self.initializers.pop(name, None)
            for i in reversed([i for i, t in enumerate(self.graph.initializer) if t.name in gone]):
                del self.graph.initializer[i]
            for i in reversed([i for i, v in enumerate(self.graph.input) if v.name in gone]):
                del self.graph.input[i]
        return dead
