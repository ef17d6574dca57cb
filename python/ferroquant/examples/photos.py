"""The demo's photos: real colour photos that ship inside PyPI wheels, preprocessed for ImageNet models.

Sources (found with ``importlib`` without importing the packages): scikit-image ``skimage/data`` (astronaut,
chelsea, coffee, rocket, ...), scikit-learn ``datasets/images`` (china, flower) and matplotlib
``mpl-data/sample_data`` (grace_hopper). Only RGB photographs are listed; grayscale, synthetic and
transparent images are not. Photos of one scene (the motorcycle stereo pair) share a ``group`` so
:func:`calibration_and_eval_sets` never puts the same source in both sets. Needs Pillow (``data`` extra).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ferroquant.errors import DataError
from ferroquant.images import IMAGENET_MEAN, IMAGENET_STD, normalize_imagenet
from ferroquant.images import pil as _pil
from ferroquant.images import resize as _resize

# package -> (folder inside it, files); a file's group is its name up to the first "." or "_left"/"_right"
# (the two motorcycle views are one scene)
_FOLDERS = {
    "skimage": ("data", "astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png motorcycle_right.png "
                        "hubble_deep_field.jpg retina.jpg ihc.png"),
    "sklearn": ("datasets/images", "china.jpg flower.jpg"),
    "matplotlib": ("mpl-data/sample_data", "grace_hopper.jpg"),
}
_CATALOGUE = tuple((package, folder, file, file.split(".")[0].removesuffix("_left").removesuffix("_right"))
                   for package, (folder, files) in _FOLDERS.items() for file in files.split())
_PACKAGES = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}


@dataclass(frozen=True)
class Photo:
    """One photo: ``name`` (file stem), its ``path``, the ``package`` it ships in, and its scene ``group``."""

    name: str
    path: Path
    package: str
    group: str


@dataclass(frozen=True)
class PhotoSets:
    """Calibration and evaluation batches (NCHW float32) and the photos each was cut from (disjoint)."""

    calibration: np.ndarray
    evaluation: np.ndarray
    calibration_photos: Tuple[str, ...]
    evaluation_photos: Tuple[str, ...]


def _package_dir(package: str) -> Optional[Path]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def list_photos() -> Tuple[Photo, ...]:
    """The photos present on this machine, in a fixed order; :class:`DataError` when there are none."""
    found: List[Photo] = []
    for package, folder, file, group in _CATALOGUE:
        root = _package_dir(package)
        path = None if root is None else root / folder / file
        if path is not None and path.is_file():
            found.append(Photo(Path(file).stem, path, package, group))
    if not found:
        wanted = ", ".join(sorted(set(_PACKAGES.values())))
        raise DataError(f"no sample photos found: install one of {wanted} (pip install 'ferroquant[data]')")
    return tuple(found)


def load_photo(photo: Union[Photo, str]) -> np.ndarray:
    """A photo (a :class:`Photo` or a name from :func:`list_photos`) as uint8 RGB ``[H, W, 3]``."""
    if isinstance(photo, str):
        by_name = {p.name: p for p in list_photos()}
        if photo not in by_name:
            raise DataError(f"no photo named {photo!r}; available: {sorted(by_name)}")
        photo = by_name[photo]
    with _pil().open(photo.path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def preprocess_imagenet(rgb: np.ndarray, size: int = 224, resize: int = 256) -> np.ndarray:
    """The standard ImageNet evaluation transform as NCHW float32 ``[1, 3, size, size]``.

    Resize the short side to ``resize`` (PIL bilinear), crop the centre ``size`` x ``size``, normalize.
    """
    h, w = rgb.shape[:2]
    scale = resize / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = _resize(rgb, nw, nh)
    top, left = (nh - size) // 2, (nw - size) // 2
    return normalize_imagenet(img[top:top + size, left:left + size])[None]


def random_crops(rgb: np.ndarray, n: int, rng: np.random.Generator, size: int = 224,
                 area: Tuple[float, float] = (0.25, 1.0)) -> np.ndarray:
    """``n`` random resized crops (area fraction in ``area``, aspect 3/4..4/3, random horizontal flip) as
    NCHW float32 ``[n, 3, size, size]``; deterministic for a given ``rng`` state."""
    h, w = rgb.shape[:2]
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        frac, aspect = rng.uniform(*area), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, round(np.sqrt(frac * h * w / aspect))))
        cw = int(min(w, round(np.sqrt(frac * h * w * aspect))))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = _resize(np.ascontiguousarray(rgb[top:top + ch, left:left + cw]), size, size)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = normalize_imagenet(crop)
    return out


def _batch(photos: Sequence[Photo], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples cycling over ``photos``: each photo's centre crop first, then random crops."""
    if n == 0:
        return np.empty((0, 3, 224, 224), np.float32)
    images = [load_photo(p) for p in photos]
    counts = [n // len(photos) + (1 if i < n % len(photos) else 0) for i in range(len(photos))]
    parts = []
    for img, count in zip(images, counts):
        if count:
            parts.append(preprocess_imagenet(img))
            parts.append(random_crops(img, count - 1, rng))
    return np.concatenate(parts)


def calibration_and_eval_sets(n_calib: int, n_eval: int, seed: int = 0) -> PhotoSets:
    """Disjoint calibration and evaluation batches of ``n_calib`` and ``n_eval`` images.

    Photo groups are shuffled with ``seed`` and split in proportion to the two sizes (at least one group
    each), so no source photo (or scene) is in both sets; each set is enlarged with random crops and flips.
    """
    if n_calib < 0 or n_eval < 0 or n_calib + n_eval == 0:
        raise DataError(f"need non-negative set sizes with a positive total, got {n_calib} and {n_eval}")
    photos = list_photos()
    groups = sorted({p.group for p in photos})
    if len(groups) < 2:
        raise DataError(f"need photos of at least 2 scenes to keep the sets apart, found {groups}")
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    n_cal_groups = min(len(groups) - 1, max(1, round(len(groups) * n_calib / (n_calib + n_eval))))
    cal_groups = set(order[:n_cal_groups])
    cal = [p for p in photos if p.group in cal_groups]
    ev = [p for p in photos if p.group not in cal_groups]
    return PhotoSets(_batch(cal, n_calib, rng), _batch(ev, n_eval, rng),
                     tuple(p.name for p in cal), tuple(p.name for p in ev))
