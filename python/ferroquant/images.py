"""Image decoding and the ImageNet normalization, for calibration data read from image folders (Pillow, the
``data`` extra)."""

from __future__ import annotations

import numpy as np

from ferroquant.errors import DataError

IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)


def pil():  # noqa: ANN201 - the PIL.Image module
    """``PIL.Image``, or a DataError that says how to install it."""
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError("reading images needs Pillow: pip install 'ferroquant[data]'") from e
    return Image


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` resized to ``width`` x ``height`` (PIL bilinear)."""
    image = pil()
    return np.asarray(image.fromarray(rgb).resize((width, height), image.BILINEAR), dtype=np.uint8)


def normalize_imagenet(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> float32 ``[3, H, W]``, ``(x - mean) / std`` with ImageNet's 0-255 stats."""
    x = (np.asarray(rgb, np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize_imagenet", "pil", "resize"]
