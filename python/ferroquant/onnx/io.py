"""Load, check, upgrade and save ONNX models.

:func:`load_model` is the one door models come in by: it reads the file (with external data), refuses what
ferroquant cannot work on with a :class:`~ferroquant.errors.ModelError` that names the node at fault, upgrades
models older than opset 13, turns weights held in ``Constant`` nodes into initializers, runs the checker and
shape inference. :func:`save_onnx` writes weights to an external data file when the model passes 2 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ferroquant.errors import ModelError
from ferroquant.onnx.graph import GraphView, node_label

MIN_OPSET = 13
_PROTOBUF_LIMIT = 2**31 - 1
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
    opset = default_opset(model)
    if opset >= MIN_OPSET:
        return model
    try:
        upgraded = onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError or C++ errors
        raise ModelError(
            f"the model uses opset {opset}; ferroquant needs opset >= {MIN_OPSET} and the ONNX version "
            f"converter could not upgrade it ({type(e).__name__}: {e}). Re-export it with opset {MIN_OPSET} "
            "or newer."
        ) from None
    min_ir = onnx.helper.find_min_ir_version_for(list(upgraded.opset_import))
    upgraded.ir_version = max(upgraded.ir_version, min_ir)
    return upgraded


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


def _check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"the ONNX checker refuses the model: {e}") from None
    except ValueError as e:  # models over 2 GB cannot be checked in memory
        if "2GB" not in str(e):
            raise ModelError(f"the ONNX checker refuses the model: {e}") from None


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as e:
        raise ModelError(f"shape inference fails (ill-formed graph): {e}") from None
    except ValueError:  # over 2 GB: keep the model without inferred shapes
        return model


def load_model(model: ModelLike, *, check: bool = True, infer_shapes: bool = True) -> onnx.ModelProto:
    """Read ``model`` (a path or a ``ModelProto``, which is copied) and make it ready for ferroquant's passes.

    Steps: read with external data; refuse empty or ill-formed graphs; upgrade opset < 13 with the ONNX
    version converter (or refuse it with a clear message); convert ``Constant`` nodes to initializers; run
    infer shapes; run ``onnx.checker``. Every refusal is a :class:`ModelError` naming the node when there is one.
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
    if infer_shapes:
        loaded = _infer_shapes(loaded)
    if check:
        _check(loaded)
    return loaded


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _weights_size(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) + 4 * len(t.float_data) + 8 * len(t.int64_data) for t in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, path: Union[str, Path], *, external_data: "bool | None" = None) -> Path:
    """Write ``model`` to ``path``; weights go to ``<name>.data`` beside it when over 2 GB (or when asked).

    ``external_data=None`` decides by size. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = _weights_size(model) > _PROTOBUF_LIMIT - (64 << 20)
    try:
        if external_data:  # onnx rewrites the tensors it externalizes: work on a copy
            model = _copy(model)
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=0)
        else:
            onnx.save_model(model, str(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot save the model to {path}: {e}") from None
    return path
