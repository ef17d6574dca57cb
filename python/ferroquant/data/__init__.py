"""Sample data that installs offline: real photos from scikit-image, scikit-learn and matplotlib."""

from __future__ import annotations

from ferroquant.data.photos import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Photo,
    PhotoSets,
    calibration_and_eval_sets,
    list_photos,
    load_photo,
    normalize_imagenet,
    preprocess_imagenet,
    random_crops,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Photo",
    "PhotoSets",
    "calibration_and_eval_sets",
    "list_photos",
    "load_photo",
    "normalize_imagenet",
    "preprocess_imagenet",
    "random_crops",
]
