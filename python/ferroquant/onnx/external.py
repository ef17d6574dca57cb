"""Models over protobuf's 2 GB limit: they cannot be serialized in one piece, so nothing may call
``SerializeToString`` on them (onnx's in-memory checker, shape inference and version converter all do, and
onnxruntime sessions made from bytes too).

Two tools, neither of which copies the weights:

- :func:`skeleton` / :func:`reattach`: a copy of the model whose large initializers are *detached*: each
  becomes a graph input of the same type and shape. Shape inference, the checker and the version converter
  only need the shapes, so they run on the skeleton, and the QDQ exporter rewrites one; :func:`reattach`
  then copies the tensors the result still reads from the original model, one at a time.
- :func:`write_external`: writes a model and its weights to ``<file>`` and ``<file>.data`` (each tensor at an
  offset aligned to 4 KiB, so onnxruntime can map it) one tensor at a time, optionally with extra graph
  outputs, for :func:`ferroquant.onnx.io.save_onnx` and, through :func:`session_source`, for onnxruntime
  sessions made from a path.
"""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ferroquant.outputs import replacing

PROTOBUF_LIMIT = 2**31 - 1
#: a model whose tensors hold more than this is treated as large (headroom for the graph itself)
LARGE = PROTOBUF_LIMIT - (64 << 20)
#: above this many bytes of weights, onnx's in-memory checker and shape inference (which serialize and parse
#: the whole model, several transient copies) run on a skeleton instead
MEDIUM = 64 << 20
#: tensors of at least this many bytes are detached from skeletons and written to the data file
DETACH_BYTES = 1 << 10
_ALIGN = 4096
_SUB_BYTE = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2") if hasattr(TensorProto, n)}


@functools.lru_cache(maxsize=None)
def _itemsize(data_type: int) -> int:
    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def tensor_bytes(t: TensorProto) -> int:
    """The size of ``t``'s data (0 when external), from its dims and type: reading ``raw_data`` (or
    ``ByteSize()``) would copy the bytes, a second per 256 MB."""
    if t.data_location == TensorProto.EXTERNAL:
        return 0
    if t.HasField("raw_data"):
        if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
            return 0
        numel = math.prod(t.dims)  # Python integers: no overflow, no NumPy call per tensor
        return numel * _itemsize(t.data_type) if t.data_type not in _SUB_BYTE else (numel + 1) // 2
    return (4 * (len(t.float_data) + len(t.int32_data)) + 8 * (len(t.int64_data) + len(t.double_data)
            + len(t.uint64_data)) + sum(len(s) for s in t.string_data))


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _graph_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graph_tensors(g)


def weights_size(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held in ``model`` (initializers and constant attributes, at any depth)."""
    return sum(tensor_bytes(t) for t in _graph_tensors(model.graph))


def is_large(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is too large to serialize in one piece (with headroom for the graph)."""
    return weights_size(model) > LARGE


def _detachable(t: TensorProto, threshold: int = DETACH_BYTES) -> bool:
    return t.data_type != TensorProto.STRING and tensor_bytes(t) >= max(1, threshold)


def _repeated(fd) -> bool:  # noqa: ANN001 - a protobuf FieldDescriptor
    is_repeated = getattr(fd, "is_repeated", None)  # protobuf >= 5; older ones have only ``label``
    return bool(is_repeated) if is_repeated is not None else fd.label == fd.LABEL_REPEATED


def _copy_fields(src, dst, skip: str) -> None:  # noqa: ANN001 - two protobuf messages of one type
    """Copy every set field of ``src`` into ``dst`` except ``skip``."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if _repeated(fd):
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _shell(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its top-level initializers (everything else copied)."""
    out = onnx.ModelProto()
    _copy_fields(model, out, "graph")
    _copy_fields(model.graph, out.graph, "initializer")
    return out


def _external_copy(t: TensorProto, location: str, offset: int, length: int) -> TensorProto:
    """``t``'s name, type and dims, its data at ``location`` (``offset``, ``length``)."""
    d = TensorProto()
    d.name, d.data_type = t.name, t.data_type
    d.dims.extend(t.dims)
    d.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = d.external_data.add()
        entry.key, entry.value = key, value
    return d


@dataclass
class Skeleton:
    """A model without its large initializers (they became graph inputs of the same type and shape) and the
    names of the tensors detached from it."""

    model: onnx.ModelProto
    detached: List[str]
    added_inputs: List[str]


#: the tensor types :func:`skeleton` detaches with ``floats_only``: weights, never shape arithmetic
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def skeleton(model: onnx.ModelProto, floats_only: bool = False) -> Skeleton:
    """``model`` without its top-level initializers of 1 KiB or more: each becomes a graph input of the same
    type and shape (so the checker, shape inference and the version converter see a valid model with every
    shape they need), nothing is copied but the small tensors (shapes, axes, scalars) passes may read.
    ``floats_only``: only floating-point tensors are detached, so every integer tensor that shape inference
    may compute with (data propagation) stays."""
    out = _shell(model)
    inputs = {i.name for i in model.graph.input}
    detached, added = [], []
    for t in model.graph.initializer:
        if not _detachable(t) or (floats_only and t.data_type not in _FLOATS):
            out.graph.initializer.append(t)
            continue
        detached.append(t.name)
        if t.name not in inputs:
            out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            added.append(t.name)
    return Skeleton(out, detached, added)


def _read_names(graph: onnx.GraphProto) -> set:
    from ferroquant.onnx.graph import implicit_inputs

    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(implicit_inputs(node))
    return names


def reattach(sk: Skeleton, result: onnx.ModelProto, source: onnx.ModelProto, unread: bool = False
             ) -> onnx.ModelProto:
    """Put the tensors detached from ``sk`` that ``result`` (a model derived from ``sk.model``) still reads
    (``unread``: all of them) back into it, copied from ``source``, and drop the graph inputs that stood in for
    them (in place). The initializers keep ``source``'s order; ones ``result`` added go last. (Protobuf frees a
    model's bytes only with the whole model, so a caller that no longer needs ``source`` should drop it.)"""
    attach = set(sk.detached) if unread else set(sk.detached) & _read_names(result.graph)
    kept = {}
    for t in result.graph.initializer:  # small tensors: copied, so clearing the field below keeps them
        kept[t.name] = TensorProto()
        kept[t.name].CopyFrom(t)
    order = [t.name for t in source.graph.initializer]
    new = [n for n in kept if n not in set(order)]
    by_name = {t.name: t for t in source.graph.initializer if t.name in attach}
    added = set(sk.added_inputs)
    for i in reversed([i for i, v in enumerate(result.graph.input) if v.name in added]):
        del result.graph.input[i]
    del result.graph.initializer[:]
    for name in order + new:
        t = by_name.get(name) if name in attach else kept.get(name)
        if t is not None:
            result.graph.initializer.add().CopyFrom(t)
    return result


def _raw(t: TensorProto) -> bytes:
    if t.HasField("raw_data"):
        return t.raw_data
    return numpy_helper.to_array(t).astype(np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder(
        "<"), copy=False).tobytes()


def model_digest(model: onnx.ModelProto) -> str:
    """SHA-256 of ``model``: its graph without the large weights (deterministic serialization), then each large
    weight's name and bytes (models over 2 GB too: nothing is serialized in one piece)."""
    import hashlib

    h = hashlib.sha256(skeleton(model).model.SerializeToString(deterministic=True))
    for t in model.graph.initializer:
        if _detachable(t):
            h.update(t.name.encode())
            h.update(_raw(t) if t.data_location != TensorProto.EXTERNAL else
                     repr([(e.key, e.value) for e in t.external_data]).encode())
    return h.hexdigest()


def write_external(model: onnx.ModelProto, path: Union[str, Path], extra_outputs: Sequence[str] = (),
                   size_threshold: int = DETACH_BYTES, deferred: bool = True) -> Path:
    """Write ``model`` to ``path`` with every top-level initializer of ``size_threshold`` bytes or more in
    ``<path>.data`` (4 KiB-aligned offsets), one tensor at a time, never copying the model; ``extra_outputs``
    are appended as float graph outputs (taps for calibration). ``model`` is not changed. Returns ``path``.
    Both files are replaced whole (:func:`ferroquant.outputs.replacing`; ``deferred=False`` for scratch copies
    read back at once)."""
    path = Path(path)
    data_name = path.name + ".data"
    out = _shell(model)
    have = {o.name for o in out.graph.output}
    for name in extra_outputs:
        if name not in have:
            out.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            have.add(name)
    with replacing(path.parent / data_name, deferred=deferred) as f:
        for t in model.graph.initializer:
            if not _detachable(t, size_threshold):
                out.graph.initializer.append(t)
                continue
            offset = -f.tell() % _ALIGN + f.tell()
            f.seek(offset)
            blob = _raw(t)
            f.write(blob)
            out.graph.initializer.append(_external_copy(t, data_name, offset, len(blob)))
            del blob
    with replacing(path, deferred=deferred) as f:
        f.write(out.SerializeToString())
    return path


def session_source(model: onnx.ModelProto, extra_outputs: Sequence[str] = ()
                   ) -> Tuple[Union[bytes, str], Optional[tempfile.TemporaryDirectory]]:
    """What to build an onnxruntime session from: the serialized model with ``extra_outputs`` added (float
    outputs), or, for a model over 2 GB, the path of a copy written with external data (and the temporary
    folder holding it, which must live as long as the session)."""
    if is_large(model):
        tmp = tempfile.TemporaryDirectory(prefix="ferroquant-session-")
        path = write_external(model, Path(tmp.name) / "model.onnx", extra_outputs, deferred=False)
        return str(path), tmp
    # The model's bytes, then those of a model holding only the extra outputs: a parser merges a message that
    # appears twice, appending repeated fields, so this reads as the model with the outputs added, without
    # the copy of the whole model that adding them to a ModelProto would take.
    have = {o.name for o in model.graph.output}
    extra = [name for name in dict.fromkeys(extra_outputs) if name not in have]
    data = model.SerializeToString()
    if extra:
        patch = onnx.ModelProto()
        patch.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in extra)
        data += patch.SerializeToString()
    return data, None
