"""Calibration data from files, for the CLI and scripts: ``.npy`` / ``.npz`` files, folders of them, or folders
of images with a named preprocessing.

- ``.npy``: one array of samples for a single-input model (split into batches along axis 0).
- ``.npz``: arrays keyed by input name (split into batches along axis 0); for a single-input model, any keys
  positional arrays (``np.savez(f, a, b)``: ``arr_0``, ``arr_1``...) are taken as consecutive chunks.
- a folder: every ``.npy``/``.npz`` in it (sorted by name), or every image (``.jpg .jpeg .png .bmp .webp``).
- images: ``imagenet`` preprocessing resizes the short side to ``256/224`` of the model's input size, crops
  the centre ``H x W`` and normalizes with ImageNet's mean/std (RGB, 0-255); ``none`` only resizes to ``H x W``
  (RGB, 0-255 floats). Both give NCHW float32.

Shapes are checked against the model's inputs here, with messages that name the file and the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ferroquant.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ARRAY_SUFFIXES = (".npy", ".npz")
PREPROCESSING = ("imagenet", "none")
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


def _check(name: str, a: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    if a.dtype.kind not in "fiub":
        raise DataError(f"{where}: input {name!r} holds {a.dtype}, expected numbers")
    if a.ndim != len(spec.shape) or any(isinstance(d, int) and d > 0 and d != s
                                        for d, s in zip(spec.shape[1:], a.shape[1:])):
        raise DataError(f"{where}: input {name!r} has shape {list(a.shape)}, the model expects "
                        f"{[d if isinstance(d, int) and d > 0 else '?' for d in spec.shape]}")
    # floats become float32; integers and bools (token ids, masks) are kept as they are
    return np.ascontiguousarray(a, dtype=np.float32 if a.dtype.kind == "f" else a.dtype)


def _arrays_of(path: Path, specs: Sequence[InputSpec]) -> List[Dict[str, np.ndarray]]:
    """The chunks of samples in one .npy/.npz file, as dicts keyed by input name."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as a NumPy file ({e})") from None
    names = [s.name for s in specs]
    if isinstance(loaded, np.ndarray):
        if len(specs) != 1:
            raise DataError(f"{path}: a .npy file holds one array, but the model has inputs {names}; "
                            "use a .npz keyed by input name")
        return [{names[0]: loaded}]
    with loaded:
        keys = list(loaded.files)
        if set(keys) == set(names):
            return [{k: loaded[k] for k in names}]
        if len(specs) == 1 and keys and all(re.fullmatch(r"arr_\d+", k) for k in keys):
            return [{names[0]: loaded[k]} for k in keys]
        raise DataError(f"{path}: arrays {keys} do not match the model's inputs {names}")


def _image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: Path, height: int, width: int, preprocess: str) -> np.ndarray:
    """One image as float32 ``[3, height, width]`` (see the module docstring for ``preprocess``)."""
    from ferroquant.images import normalize_imagenet
    from ferroquant.images import pil as _pil
    from ferroquant.images import resize as _resize

    try:
        with _pil().open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read the image ({e})") from None
    if preprocess == "none":
        return np.ascontiguousarray(_resize(rgb, width, height).astype(np.float32).transpose(2, 0, 1))
    h, w = rgb.shape[:2]
    scale = max(height, width) * 256 / 224 / min(h, w)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    img = _resize(rgb, nw, nh)
    top, left = (nh - height) // 2, (nw - width) // 2
    return normalize_imagenet(img[top:top + height, left:left + width])


def _images(files: Sequence[Path], spec: InputSpec, preprocess: str) -> np.ndarray:
    s = spec.shape
    if len(s) != 4 or not all(isinstance(d, int) and d > 0 for d in s[2:]) or s[1] not in (3, None, "C"):
        raise DataError(f"images need a model input of shape [N, 3, H, W] with fixed H and W; input "
                        f"{spec.name!r} is {list(s)}")
    return np.stack([load_image(f, int(s[2]), int(s[3]), preprocess) for f in files])


def _batches(samples: Mapping[str, np.ndarray], batch_size: int) -> List[Dict[str, np.ndarray]]:
    n = len(next(iter(samples.values())))
    return [{k: v[i:i + batch_size] for k, v in samples.items()} for i in range(0, n, batch_size)]


def load_calibration_data(path: Union[str, Path], inputs: Sequence[InputSpec], batch_size: Optional[int] = None,
                          preprocess: Optional[str] = None, limit: Optional[int] = None
                          ) -> List[Dict[str, np.ndarray]]:
    """Batches ``{input name: float32 array}`` from ``path`` (see the module docstring).

    ``batch_size`` defaults to the model's fixed batch dimension, else 8. ``preprocess`` is for images
    (default ``imagenet``); arrays are used as they are. ``limit`` keeps only the first batches.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"calibration data not found: {p}")
    if preprocess is not None and preprocess not in PREPROCESSING:
        raise DataError(f"unknown preprocessing {preprocess!r} (known: {list(PREPROCESSING)})")
    if not inputs:
        raise DataError("the model has no input to feed")
    fixed = inputs[0].batch_dim
    if batch_size is not None and batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    bs = batch_size or fixed or 8
    if fixed and bs != fixed:
        raise DataError(f"the model's batch dimension is fixed at {fixed}; got batch size {bs}")
    specs = {s.name: s for s in inputs}
    if p.is_dir():
        arrays = sorted(f for f in p.iterdir() if f.suffix in ARRAY_SUFFIXES)
        images = _image_files(p)
        if not arrays and not images:
            raise DataError(f"{p}: no .npy, .npz or image files in this folder")
        if arrays and images:
            raise DataError(f"{p}: holds both arrays and images; keep one kind per folder")
        if images:
            if len(inputs) != 1:
                raise DataError(f"images feed single-input models; this one has {[s.name for s in inputs]}")
            x = _images(images, inputs[0], preprocess or "imagenet")
            return _batches({inputs[0].name: x}, bs)[:limit]
        files = arrays
    elif p.suffix in ARRAY_SUFFIXES:
        files = [p]
    else:
        raise DataError(f"{p}: expected a .npy or .npz file, or a folder of them or of images")
    chunks = [({k: _check(k, np.asarray(v), specs[k], str(f)) for k, v in c.items()}, f)
              for f in files for c in _arrays_of(f, inputs)]
    out: List[Dict[str, np.ndarray]] = []
    for c, f in chunks:
        lengths = {len(v) for v in c.values()}
        if len(lengths) != 1:
            raise DataError(f"{f}: inputs hold different numbers of samples {sorted(lengths)}")
        out.extend(_batches(c, bs))
        if limit is not None and len(out) >= limit:
            break
    return out[:limit]
