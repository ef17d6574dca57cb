"""Calibration data from files, for the CLI and scripts: ``.npy`` / ``.npz`` files, folders of them, or folders
of images with a preprocessing (:mod:`ferroquant.preprocess`).

- ``.npy``: one array of samples for a single-input model (split into batches along axis 0).
- ``.npz``: arrays keyed by input name (split into batches along axis 0); for a single-input model, any keys
  positional arrays (``np.savez(f, a, b)``: ``arr_0``, ``arr_1``...) are taken as consecutive chunks.
- a folder: every ``.npy``/``.npz`` in it (sorted by name), or every image (``.jpg .jpeg .png .bmp .webp
  .tif .tiff``), sorted by name, for a single-input model of shape [N, C, H, W] (C = 1 or 3).

:func:`load_calibration_data` returns a :class:`CalibrationSet`: it reads only array headers up front (names,
dtypes and shapes are checked there, with messages that name the file and the input), and loads or decodes
each batch when it is iterated to, after the batch limit is applied, so a folder of thousands of images
with ``limit=2`` decodes two batches' worth and memory does not grow with the folder. ``.npy`` files are
memory-mapped; ``.npz`` chunks are read one at a time. Dynamic dimensions (an image model's H and W) are
given with ``input_shapes`` (the CLI's ``--input-shape NAME:1,3,320,320``).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ferroquant.preprocess import PRESETS, Preprocess, load_image, preset
from ferroquant.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz")
PREPROCESSING = tuple(PRESETS)
Dim = Union[int, str, None]


@dataclass(frozen=True)
class InputSpec:
    """A model input: its name and shape (ints where fixed, names or None where dynamic)."""

    name: str
    shape: Tuple[Dim, ...]

    @property
    def batch_dim(self) -> Optional[int]:
        d = self.shape[0] if self.shape else None
        return d if isinstance(d, int) and d > 0 else None


def model_inputs(model) -> List[InputSpec]:  # noqa: ANN001 - an onnx.ModelProto
    """The graph inputs that are not initializers, with their shapes."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in i.type.tensor_type.shape.dim)
        out.append(InputSpec(i.name, dims))
    return out


def _fixed(d: Dim) -> bool:
    return isinstance(d, int) and d > 0


def parse_input_shape(text: str) -> Tuple[Optional[str], Tuple[Dim, ...]]:
    """``"x:1,3,320,320"`` -> ("x", (1, 3, 320, 320)); without ``NAME:`` the name is None (single-input
    models). ``-1``, ``?`` or a name leave a dimension dynamic."""
    name, sep, dims = text.rpartition(":")
    out: List[Dim] = []
    for d in dims.split(","):
        d = d.strip()
        if re.fullmatch(r"\d+", d) and int(d) > 0:
            out.append(int(d))
        elif d in ("-1", "?", "") or re.fullmatch(r"[A-Za-z_][\w.]*", d):
            out.append(None)
        else:
            raise DataError(f"--input-shape {text!r}: {d!r} is not a dimension (a positive integer, or -1/? for "
                            "dynamic)")
    return (name if sep else None), tuple(out)


def apply_input_shapes(specs: Sequence[InputSpec], shapes: Mapping[Optional[str], Sequence[Dim]]
                       ) -> List[InputSpec]:
    """``specs`` with dynamic dimensions filled in from ``shapes`` (by input name; key None for a single-input
    model). A shape of another rank, or one that contradicts a fixed dimension, is refused."""
    by_name = {s.name: s for s in specs}
    given: Dict[str, Sequence[Dim]] = {}
    for name, dims in shapes.items():
        if name is None:
            if len(specs) != 1:
                raise DataError(f"--input-shape without a name needs a single-input model; inputs: {list(by_name)}")
            name = specs[0].name
        if name not in by_name:
            raise DataError(f"--input-shape names {name!r}, not an input of the model ({list(by_name)})")
        given[name] = dims
    out = []
    for s in specs:
        dims = given.get(s.name)
        if dims is None:
            out.append(s)
            continue
        if len(dims) != len(s.shape):
            raise DataError(f"--input-shape {s.name}: {len(dims)} dims, the model's input has {len(s.shape)} "
                            f"({list(s.shape)})")
        for i, (want, got) in enumerate(zip(s.shape, dims)):
            if _fixed(want) and _fixed(got) and want != got:
                raise DataError(f"--input-shape {s.name}: dim {i} is fixed at {want} in the model, got {got}")
        out.append(InputSpec(s.name, tuple(w if _fixed(w) else g for w, g in zip(s.shape, dims))))
    return out


def _check_header(name: str, shape: Tuple[int, ...], dtype: np.dtype, spec: InputSpec, where: str) -> None:
    if dtype.kind not in "fiub":
        raise DataError(f"{where}: input {name!r} holds {dtype}, expected numbers")
    if len(shape) != len(spec.shape) or any(_fixed(d) and d != s for d, s in zip(spec.shape[1:], shape[1:])):
        raise DataError(f"{where}: input {name!r} has shape {list(shape)}, the model expects "
                        f"{[d if _fixed(d) else '?' for d in spec.shape]}")


def _as_feed(a: np.ndarray) -> np.ndarray:
    # floats become float32; integers and bools (token ids, masks) are kept as they are
    return np.ascontiguousarray(a, dtype=np.float32 if a.dtype.kind == "f" else a.dtype)


def _npz_header(z: zipfile.ZipFile, key: str) -> Tuple[Tuple[int, ...], np.dtype]:
    with z.open(key + ".npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), np.dtype(dtype)


@dataclass(frozen=True)
class _Chunk:
    """Samples in one array file: ``keys`` maps input name -> member (``""`` for a .npy); ``n`` samples."""

    path: Path
    keys: Tuple[Tuple[str, str], ...]
    n: int

    def load(self) -> Dict[str, np.ndarray]:
        if self.path.suffix == ".npy":
            return {self.keys[0][0]: np.load(self.path, mmap_mode="r", allow_pickle=False)}
        with np.load(self.path, allow_pickle=False) as z:
            return {name: z[key] for name, key in self.keys}


def _headers(path: Path, specs: Sequence[InputSpec]) -> Tuple[Dict[str, Tuple], List[Dict[str, str]]]:
    """Shapes and dtypes of the arrays in ``path`` (headers only) and the chunks as {input: member}."""
    names = [s.name for s in specs]
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise DataError(f"{path}: a .npy file holds one array, but the model has inputs {names}; "
                                "use a .npz keyed by input name")
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            return {"": (tuple(a.shape), a.dtype)}, [{names[0]: ""}]
        with zipfile.ZipFile(path) as z:
            keys = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            heads = {k: _npz_header(z, k) for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read it as a NumPy file ({e})") from None
    if set(keys) == set(names):
        return heads, [{k: k for k in names}]
    if len(specs) == 1 and keys and all(re.fullmatch(r"arr_\d+", k) for k in keys):
        return heads, [{names[0]: k} for k in sorted(keys, key=lambda k: int(k[4:]))]
    raise DataError(f"{path}: arrays {keys} do not match the model's inputs {names}")


def _array_chunks(files: Sequence[Path], specs: Sequence[InputSpec]) -> List[_Chunk]:
    by_name = {s.name: s for s in specs}
    chunks = []
    for f in files:
        heads, maps = _headers(f, specs)
        for m in maps:
            for name, key in m.items():
                _check_header(name, heads[key][0], heads[key][1], by_name[name], str(f))
            lengths = {heads[key][0][0] if heads[key][0] else 0 for key in m.values()}
            if len(lengths) != 1:
                raise DataError(f"{f}: inputs hold different numbers of samples {sorted(lengths)}")
            chunks.append(_Chunk(f, tuple(m.items()), lengths.pop()))
    return chunks


class CalibrationSet:
    """Batches ``{input name: array}`` read on demand: ``len()`` is known up front, each iteration loads or
    decodes one batch at a time (re-iterable; ``set[i]`` reads batch ``i`` alone)."""

    def __init__(self, refs: List[Tuple[object, int, int]], loader) -> None:  # noqa: ANN001 - a callable
        self._refs, self._loader = refs, loader

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
        source, start, stop = self._refs[i]
        return self._loader(source, start, stop, None)

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        cache: Dict[str, object] = {}
        for source, start, stop in self._refs:
            yield self._loader(source, start, stop, cache)


def _image_set(files: Sequence[Path], spec: InputSpec, p: Preprocess, bs: int, limit: Optional[int]
               ) -> CalibrationSet:
    s = spec.shape
    if len(s) != 4 or not all(_fixed(d) for d in s[2:]) or s[1] not in (1, 3, None, "C"):
        raise DataError(f"images need a model input of shape [N, C, H, W] (C = 1 or 3) with H and W known; "
                        f"input {spec.name!r} is {list(s)}: give them with --input-shape "
                        f"{spec.name}:1,3,H,W")
    channels, height, width = (s[1] if _fixed(s[1]) else 3), int(s[2]), int(s[3])
    files = list(files)[: None if limit is None else limit * bs]  # the limit applies before any decoding
    refs = [(None, i, min(i + bs, len(files))) for i in range(0, len(files), bs)]

    def load(_src: object, start: int, stop: int, _cache: object) -> Dict[str, np.ndarray]:
        return {spec.name: np.stack([load_image(f, height, width, p, channels) for f in files[start:stop]])}

    return CalibrationSet(refs, load)


def _array_set(chunks: Sequence[_Chunk], bs: int, limit: Optional[int]) -> CalibrationSet:
    refs: List[Tuple[object, int, int]] = []
    for c in chunks:
        refs.extend((c, i, min(i + bs, c.n)) for i in range(0, c.n, bs))
    refs = refs[:limit]

    def load(chunk: _Chunk, start: int, stop: int, cache: Optional[Dict[str, object]]) -> Dict[str, np.ndarray]:
        if cache is not None and cache.get("chunk") is chunk:
            arrays = cache["arrays"]
        else:
            arrays = chunk.load()
            if cache is not None:  # one chunk held at a time
                cache["chunk"], cache["arrays"] = chunk, arrays
        return {k: _as_feed(v[start:stop]) for k, v in arrays.items()}  # type: ignore[union-attr]

    return CalibrationSet(refs, load)


def load_calibration_data(path: Union[str, Path], inputs: Sequence[InputSpec], batch_size: Optional[int] = None,
                          preprocess: Union[str, Preprocess, None] = None, limit: Optional[int] = None,
                          input_shapes: Optional[Mapping[Optional[str], Sequence[Dim]]] = None
                          ) -> CalibrationSet:
    """Batches ``{input name: array}`` from ``path`` (see the module docstring), read lazily.

    ``batch_size`` defaults to the model's fixed batch dimension (after ``input_shapes``), else 8.
    ``preprocess`` is for images: a preset name (default ``imagenet``) or a :class:`Preprocess`; arrays are
    used as they are. ``limit`` keeps only the first batches (applied before anything is read).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"calibration data not found: {p}")
    prep = preset(preprocess)
    if not inputs:
        raise DataError("the model has no input to feed")
    inputs = apply_input_shapes(inputs, input_shapes or {})
    if limit is not None and limit < 1:
        raise DataError(f"the batch limit must be >= 1, got {limit}")
    fixed = inputs[0].batch_dim
    if batch_size is not None and batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    bs = batch_size or fixed or 8
    if fixed and bs != fixed:
        raise DataError(f"the model's batch dimension is fixed at {fixed}; got batch size {bs}")
    if p.is_dir():
        arrays = sorted(f for f in p.iterdir() if f.suffix in ARRAY_SUFFIXES)
        images = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not arrays and not images:
            raise DataError(f"{p}: no .npy, .npz or image files in this folder")
        if arrays and images:
            raise DataError(f"{p}: holds both arrays and images; keep one kind per folder")
        if images:
            if len(inputs) != 1:
                raise DataError(f"images feed single-input models; this one has {[s.name for s in inputs]}")
            return _image_set(images, inputs[0], prep, bs, limit)
        files = arrays
    elif p.suffix in ARRAY_SUFFIXES:
        files = [p]
    else:
        raise DataError(f"{p}: expected a .npy or .npz file, or a folder of them or of images")
    return _array_set(_array_chunks(files, inputs), bs, limit)
