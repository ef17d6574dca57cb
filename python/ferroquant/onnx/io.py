"""Load, check, upgrade and save ONNX models.

:func:`load_model` is the one door models come in by: it reads the file (with external data), refuses what
ferroquant cannot work on with a :class:`~ferroquant.errors.ModelError` that names the node at fault, upgrades
models older than opset 13 with the ONNX version converter, turns weights held in ``Constant`` nodes (and
``Identity`` nodes of a constant) into initializers, infers shapes (:mod:`ferroquant.onnx.shapes`: a failure of
onnx's shape inference is never blamed on the model) and runs the checker. Everything else is kept as it is:
names, value_info, metadata, doc strings, opset imports of other domains, graph outputs, and the subgraphs of
``If``/``Loop``/``Scan`` nodes (ferroquant quantizes the top-level graph only; subgraphs stay in float).
Models from opset 7 (older ones when the converter manages) to the newest opset the installed ``onnx``
knows are accepted. :func:`save_onnx` writes the weights to an external data file when the model passes 2 GB;
models that large are never serialized in one piece (:mod:`ferroquant.onnx.external`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ferroquant.errors import ModelError
from ferroquant.outputs import write_bytes
from ferroquant.onnx.external import MEDIUM, is_large, reattach, skeleton, weights_size, write_external
from ferroquant.onnx.graph import GraphView, get_attr, node_label
from ferroquant.onnx.shapes import infer_or_keep

MIN_OPSET = 13
_KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")

ModelLike = Union[str, Path, onnx.ModelProto]


@dataclass(frozen=True)
class ConstantsReport:
    """What :func:`constants_to_initializers` did: the tensors it turned into initializers."""

    converted: Tuple[str, ...]


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset for the default ONNX domain (0 when it imports none)."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def newest_opset() -> int:
    """The newest opset of the default domain the installed ``onnx`` knows."""
    return int(onnx.defs.onnx_opset_version())


def min_ir_version(model: onnx.ModelProto) -> int:
    """The lowest IR version the model's opset imports need (domains onnx does not know are ignored)."""
    return int(onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """``model`` converted to opset ``target`` by the ONNX version converter (which raises on failure).

    A model over 2 GB is converted as a skeleton without its weights, which are then copied over (drop
    ``model`` afterwards to free them)."""
    if is_large(model):
        sk = skeleton(model)
        converted = onnx.version_converter.convert_version(sk.model, target)
        out = reattach(sk, converted, model)
    else:
        out = onnx.version_converter.convert_version(model, target)
    out.ir_version = max(out.ir_version, min_ir_version(out))
    return out


def _read(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"not a file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except DecodeError as e:
        raise ModelError(f"{path}: not an ONNX protobuf ({e})") from None
    except (FileNotFoundError, OSError) as e:
        raise ModelError(f"{path}: external data could not be read ({e})") from None
    except Exception as e:  # noqa: BLE001 - onnx raises assorted types for corrupt files
        raise ModelError(f"{path}: cannot read the model ({type(e).__name__}: {e})") from None
    if not model.HasField("graph") or model.ir_version == 0:
        raise ModelError(f"{path}: not an ONNX model (no graph or no IR version)")
    return model


def _check_supported(model: onnx.ModelProto) -> None:
    """Refuse graphs ferroquant does not handle: no nodes, unknown domains, tensors nobody makes."""
    graph = model.graph
    if len(graph.node) == 0:
        raise ModelError("the graph has no nodes")
    opset = default_opset(model)
    if opset > newest_opset():
        raise ModelError(f"the model uses opset {opset}, newer than the installed onnx knows ({newest_opset()}); "
                         "upgrade onnx (pip install -U onnx)")
    imported = {imp.domain for imp in model.opset_import}
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        if node.domain not in _KNOWN_DOMAINS and node.domain not in imported:
            raise ModelError(f"op {node.domain}::{node.op_type} from a domain the model does not import",
                             node_label(node))
        for inp in node.input:
            if inp not in known:
                raise ModelError(f"input {inp!r} is made by no node, initializer or graph input "
                                 "(or not before it is used)", node_label(node))
        known.update(node.output)


def _upgrade(model: onnx.ModelProto) -> onnx.ModelProto:
    """Models below opset 13 (per-axis Q/DQ needs 13) go through the version converter; a model that
    imports no default-domain opset (only other domains) has nothing to upgrade."""
    opset = default_opset(model)
    if opset == 0 or opset >= MIN_OPSET:
        return model
    before = _interface(model)
    try:
        upgraded = convert_opset(model, MIN_OPSET)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError or C++ errors
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise ModelError(
            f"the model uses opset {opset}; ferroquant needs opset >= {MIN_OPSET} and the ONNX version "
            f"converter could not upgrade it ({detail}). Re-export it with opset {MIN_OPSET} or newer."
        ) from None
    after = _interface(upgraded)
    changed = [name for name in before if before[name] != after.get(name)]
    if changed:
        raise ModelError(
            f"the model uses opset {opset}; ferroquant needs opset >= {MIN_OPSET}, and the ONNX version converter's "
            f"upgrade changes the model's inputs/outputs {changed} (e.g. Scan-8 -> 9 drops the batch axis). "
            f"Re-export it with opset {MIN_OPSET} or newer.")
    return upgraded


def _interface(model: onnx.ModelProto) -> dict:
    """Graph inputs (not initializers) and outputs by name: element type and rank."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in [i for i in model.graph.input if i.name not in inits] + list(model.graph.output):
        t = vi.type.tensor_type
        out[vi.name] = (vi.type.WhichOneof("value"), t.elem_type,
                        len(t.shape.dim) if t.HasField("shape") else None)
    return out


def _initializers_not_inputs(model: onnx.ModelProto) -> None:
    """IR < 4 had to list every initializer as a graph input as well; in IR >= 4 that would make them
    overridable inputs, which passes must not fold. Drop them from the inputs (they are weights)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def _attr_constant(node: onnx.NodeProto):  # noqa: ANN202 - ndarray or None
    """The value of a ``Constant`` node as an array, or None for sparse/string constants we leave alone."""
    import numpy as np

    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), np.int64)
    return None


def constants_to_initializers(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, ConstantsReport]:
    """Turn each top-level ``Constant`` node into an initializer of the same name (in place).

    Weights held in ``Constant`` nodes (PaddleOCR exports, for example) are invisible to passes that look only
    at initializers. Constants that are graph outputs, sparse or string-valued are left as they are.
    """
    view = GraphView(model)
    converted = []
    for node in view.nodes("Constant"):
        out = node.output[0]
        value = _attr_constant(node)
        if value is None or view.is_graph_output(out) or out in view.initializers:
            continue
        view.remove_node(node)
        view.set_initializer(out, value)
        converted.append(out)
    return model, ConstantsReport(tuple(converted))


def fold_constant_identities(model: onnx.ModelProto) -> List[str]:
    """Make the readers of ``Identity(constant)`` read the constant itself (in place), so a weight reached
    through an Identity (torch exports write them for shared weights) is seen as a constant; the Identity is
    removed unless its output is a graph output or a subgraph reads it. Returns the Identity outputs
    bypassed."""
    view = GraphView(model)
    done = []
    for node in view.nodes("Identity"):
        src, out = node.input[0], node.output[0]
        if not view.is_constant(src):
            continue
        readers = view.consumers_of(out)
        for reader in readers:
            view.replace_input(reader, out, src)
        if not view.is_graph_output(out) and not view.consumers_of(out):
            view.remove_node(node)
        done.append(out)
    return done


def fold_constant_transposes(model: onnx.ModelProto) -> Dict[str, str]:
    """Replace each ``Transpose`` of a constant (torch exports ``nn.Linear`` on 3-D inputs, or without bias, as
    ``MatMul(x, Transpose(weight))``) by an initializer holding the transposed values (a layout copy, no
    arithmetic), in place, so the MatMul is seen with a constant weight. The new initializer takes the
    source's name when the Transpose was its only reader (the source is dropped), else ``<source>_transposed``.
    Transposes whose output is a graph output are kept. Returns {source name: folded initializer name}."""
    view = GraphView(model)
    done: Dict[str, str] = {}
    for node in list(view.nodes("Transpose")):
        src, out = node.input[0], node.output[0]
        a = view.array(src)
        if a is None or view.is_graph_output(out):
            continue
        perm = get_attr(node, "perm", None)
        folded = np.transpose(a, None if perm is None else list(perm))
        only = view.only_consumer(src, node) and not view.is_graph_output(src)
        name = src if only else view.unique_name(f"{src}_transposed")
        view.remove_node(node)
        view.set_initializer(name, np.ascontiguousarray(folded))
        for reader in view.consumers_of(out):
            view.replace_input(reader, out, name)
        stale = [i for i, v in enumerate(model.graph.value_info) if v.name == out]
        for i in reversed(stale):
            del model.graph.value_info[i]
        done[src] = name
    return done


#: weights above which :func:`check_model` checks a skeleton and the weights one by one
CHECK_SKELETON_BYTES = 8 << 20


def check_model(model: onnx.ModelProto) -> None:
    """``onnx.checker.check_model`` (structure, not shapes) that works on models over 2 GB and does not insist
    on shapes for graph inputs and outputs: onnxruntime runs models whose I/O declare a type without a shape,
    and nothing ferroquant does needs them. Raises ``ValidationError``.

    Over :data:`CHECK_SKELETON_BYTES` of weights, the checker reads a skeleton without them (serializing
    MobileNetV2's 14 MB for it took 8-25 ms of its load, the skeleton and the checks below 7-9); up to 64 MiB,
    each weight left out then goes through the checker's own tensor check (its size against its shape and type,
    one value field), one tensor at a time. Smaller models (the exports' weightless working copies) are checked
    whole, which costs less than a skeleton."""
    size = weights_size(model)
    sk = skeleton(model) if size > CHECK_SKELETON_BYTES else None
    m = sk.model if sk is not None else model
    io = [vi for vi in list(m.graph.input) + list(m.graph.output)
          if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape")]
    if io:
        if m is model:
            m = _copy(model)
        names = {vi.name for vi in io}
        for vi in list(m.graph.input) + list(m.graph.output):
            if vi.name in names and not vi.type.tensor_type.HasField("shape"):
                vi.type.tensor_type.shape.SetInParent()  # for the checker only: "some shape"
    onnx.checker.check_model(m, full_check=False)
    if sk is not None and sk.detached and size <= MEDIUM:
        detached = set(sk.detached)
        for t in model.graph.initializer:
            if t.name in detached:
                onnx.checker.check_tensor(t)


def _check(model: onnx.ModelProto) -> None:
    try:
        check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise ModelError(f"the ONNX checker refuses the model: {' '.join(str(e).split())}") from None


def load_model(model: ModelLike, *, check: bool = True, infer_shapes: bool = True) -> onnx.ModelProto:
    """Read ``model`` (a path or a ``ModelProto``, which is copied) and make it ready for ferroquant's passes.

    Steps: read with external data; refuse empty or ill-formed graphs; upgrade opset < 13 with the ONNX
    version converter (or refuse it with a clear message); convert ``Constant`` nodes to initializers and
    bypass ``Identity`` nodes of constants; infer shapes (falling back to weaker modes, see
    :mod:`ferroquant.onnx.shapes`); run ``onnx.checker``. Every refusal is a :class:`ModelError` naming the
    node when there is one.
    """
    if isinstance(model, onnx.ModelProto):
        loaded = _copy(model)
    elif isinstance(model, (str, Path)):
        loaded = _read(Path(model))
    else:
        raise ModelError(f"expected a path or an onnx.ModelProto, got {type(model).__name__}")
    _check_supported(loaded)
    ir_version = loaded.ir_version
    loaded = _upgrade(loaded)
    if ir_version < 4:
        _initializers_not_inputs(loaded)
    loaded, _ = constants_to_initializers(loaded)
    fold_constant_identities(loaded)
    if infer_shapes:
        loaded = infer_or_keep(loaded)
    if check:
        _check(loaded)
    return loaded


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def save_onnx(model: onnx.ModelProto, path: Union[str, Path], *, external_data: "bool | None" = None) -> Path:
    """Write ``model`` to ``path``; its initializers go to ``<name>.data`` beside it when the model passes
    2 GB (or when asked), one tensor at a time (the model is neither copied nor changed). Both files are
    replaced whole (:mod:`ferroquant.outputs`): never a half-written model.

    ``external_data=None`` decides by size. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = is_large(model)
    try:
        if external_data:
            write_external(model, path, size_threshold=0)
        else:
            write_bytes(path, model.SerializeToString())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot save the model to {path}: {e}") from None
    return path
