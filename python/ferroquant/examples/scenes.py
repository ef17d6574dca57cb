"""A larger pool of real photos for accuracy benchmarks: the wheels' photos (:mod:`ferroquant.examples.photos`)
plus, when Debian's ``opencv-doc`` is installed, its natural photos under
``/usr/share/doc/opencv-doc/examples/data`` (about 30 more scenes; logos, charts, chessboards and synthetic
pictures are left out, stereo pairs and edits of one photo share a scene).

:func:`scene_sets` keeps calibration and evaluation apart by *scene*: a few scenes give every calibration crop,
every other scene gives evaluation crops, so no photo (or view of the same scene) is in both. Each evaluation crop
carries its scene index, so a benchmark can bootstrap over scenes (crops of one photo are not independent).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ferroquant.errors import DataError
from ferroquant.examples.photos import Photo, list_photos, load_photo, preprocess_imagenet, random_crops

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")

#: (file, scene) of opencv-doc's natural photos.
OPENCV_PHOTOS = (
    ("HappyFish.jpg", "happyfish"), ("aero1.jpg", "aero"), ("aero3.jpg", "aero"), ("aloeL.jpg", "aloe"),
    ("aloeR.jpg", "aloe"), ("apple.jpg", "apple"), ("baboon.jpg", "baboon"), ("board.jpg", "board"),
    ("building.jpg", "building"), ("butterfly.jpg", "butterfly"), ("ela_original.jpg", "ela"),
    ("fruits.jpg", "fruits"), ("graf1.png", "graf"), ("graf3.png", "graf"), ("home.jpg", "home"),
    ("leuvenA.jpg", "leuven"), ("leuvenB.jpg", "leuven"), ("left.jpg", "stereo_lr"), ("right.jpg", "stereo_lr"),
    ("licenseplate_motion.jpg", "licenseplate"), ("messi5.jpg", "messi"), ("orange.jpg", "orange"),
    ("pca_test1.jpg", "pca_test1"), ("rubberwhale1.png", "rubberwhale"), ("rubberwhale2.png", "rubberwhale"),
    ("smarties.png", "smarties"), ("squirrel_cls.jpg", "squirrel"), ("starry_night.jpg", "starry_night"),
    ("stuff.jpg", "stuff"), ("chicky_512.png", "chicky"), ("basketball1.png", "basketball"),
    ("basketball2.png", "basketball"), ("box_in_scene.png", "box_in_scene"), ("Blender_Suzanne1.jpg", "suzanne"),
    ("Blender_Suzanne2.jpg", "suzanne"),
)


@dataclass(frozen=True)
class SceneSets:
    """Calibration crops, evaluation crops (NCHW float32), each evaluation crop's scene index, and the scenes
    of each set (disjoint)."""

    calibration: np.ndarray
    evaluation: np.ndarray
    evaluation_scene: np.ndarray
    calibration_scenes: Tuple[str, ...]
    evaluation_scenes: Tuple[str, ...]


def list_scene_photos(opencv: bool = True) -> Tuple[Photo, ...]:
    """The wheels' photos and (with ``opencv``, when installed) opencv-doc's, in a fixed order."""
    found: List[Photo] = list(list_photos())
    if opencv and OPENCV_DATA.is_dir():
        for file, group in OPENCV_PHOTOS:
            path = OPENCV_DATA / file
            if path.is_file():
                found.append(Photo(Path(file).stem, path, "opencv-doc", group))
    return tuple(found)


def _crops(photos: Sequence[Photo], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` crops spread over ``photos``: each photo's centre crop first, then random crops and flips."""
    counts = [n // len(photos) + (1 if i < n % len(photos) else 0) for i in range(len(photos))]
    parts = []
    for photo, count in zip(photos, counts):
        if count:
            img = load_photo(photo)
            parts.append(preprocess_imagenet(img))
            parts.append(random_crops(img, count - 1, rng))
    return np.concatenate(parts) if parts else np.empty((0, 3, 224, 224), np.float32)


def scene_sets(n_calib: int, n_eval: int, calib_scenes: int = 8, seed: int = 0, opencv: bool = True,
               calibration_scenes: Optional[Sequence[str]] = None) -> SceneSets:
    """``n_calib`` calibration crops from ``calib_scenes`` scenes (drawn with ``seed``, or the scenes named in
    ``calibration_scenes``) and ``n_eval`` evaluation crops spread evenly over every other scene."""
    photos = list_scene_photos(opencv)
    groups = sorted({p.group for p in photos})
    rng = np.random.default_rng(seed)
    if calibration_scenes is not None:
        cal_groups = list(calibration_scenes)
        unknown = sorted(set(cal_groups) - set(groups))
        if unknown:
            raise DataError(f"calibration_scenes: no photos of {unknown} here")
    else:
        if not 1 <= calib_scenes < len(groups):
            raise DataError(f"calib_scenes must be in [1, {len(groups) - 1}] with {len(groups)} scenes here")
        cal_groups = [groups[i] for i in rng.permutation(len(groups))[:calib_scenes]]
    ev_groups = [g for g in groups if g not in set(cal_groups)]
    calib = _crops([p for p in photos if p.group in set(cal_groups)], n_calib, rng)
    per = [n_eval // len(ev_groups) + (1 if i < n_eval % len(ev_groups) else 0) for i in range(len(ev_groups))]
    parts, scene = [], []
    for i, (g, count) in enumerate(zip(ev_groups, per)):
        if count:
            parts.append(_crops([p for p in photos if p.group == g], count, rng))
            scene.extend([i] * count)
    return SceneSets(calib, np.concatenate(parts), np.asarray(scene, np.int64), tuple(sorted(cal_groups)),
                     tuple(ev_groups))


__all__ = ["OPENCV_DATA", "OPENCV_PHOTOS", "SceneSets", "list_scene_photos", "scene_sets"]
