"""Image preprocessing for calibration data: decode (8- and 16-bit), resize, normalize, to CHW float32.

One :class:`Preprocess` describes it: the resize mode, then ``(x * scale - mean) / std`` per channel on
0-255 values, the channel order, and the layout [C, H, W]. Named presets cover the usual exporters:

============  ===========  ================  ===================  ==========================
preset        resize       scale             mean / std           used by
============  ===========  ================  ===================  ==========================
imagenet      center-crop  1                 ImageNet (0-255)     torchvision classifiers
none          plain        1                 0 / 1                raw RGB 0-255
paddleocr     plain        1/255             0.5 / 0.5            PaddleOCR det/rec/cls
yolo          letterbox    1/255             0 / 1                YOLOv5/v8 (pad 114)
tf            plain        1                 127 / 128            TF/TFLite ``(x-127)/128``
============  ===========  ================  ===================  ==========================

Resize modes: ``center-crop`` resizes the short side to ``1/crop_fraction`` of the target (256 for 224) and
crops the centre; ``plain`` resizes to the target, ignoring the aspect ratio; ``letterbox`` fits the image
inside the target keeping its aspect ratio and pads the rest with ``pad_value`` (centred). Resizing works on
float32 values (bilinear), so 16-bit images keep their precision: a 16-bit image is read as ``value / 257``
(0-65535 onto 0-255), never clipped to 8 bits. Needs Pillow (``data`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ferroquant.errors import DataError
from ferroquant.images import IMAGENET_MEAN as _MEAN
from ferroquant.images import IMAGENET_STD as _STD
from ferroquant.images import pil

RESIZE_MODES = ("center-crop", "plain", "letterbox")
CHANNEL_ORDERS = ("RGB", "BGR")
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes one model input sample (see the module docstring)."""

    resize: str = "plain"
    scale: float = 1.0
    mean: Tuple[float, ...] = (0.0,)
    std: Tuple[float, ...] = (1.0,)
    channel_order: str = "RGB"
    crop_fraction: float = 224 / 256
    pad_value: float = 114.0

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise DataError(f"resize mode {self.resize!r} unknown (known: {list(RESIZE_MODES)})")
        if self.channel_order not in CHANNEL_ORDERS:
            raise DataError(f"channel order {self.channel_order!r} unknown (known: {list(CHANNEL_ORDERS)})")
        if not (np.isfinite(self.scale) and self.scale != 0):
            raise DataError(f"scale must be a finite non-zero number, got {self.scale!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, 3) or not all(np.isfinite(v) for v in values):
                raise DataError(f"{name} must be 1 or 3 finite numbers, got {list(values)}")
        if any(v == 0 for v in self.std):
            raise DataError(f"std must not be 0, got {list(self.std)}")
        if not 0 < self.crop_fraction <= 1:
            raise DataError(f"crop_fraction must be in (0, 1], got {self.crop_fraction!r}")

    def with_options(self, **options: object) -> "Preprocess":
        """A copy with the options that are not None replaced."""
        return replace(self, **{k: v for k, v in options.items() if v is not None})


IMAGENET_MEAN = tuple(float(v) for v in _MEAN)
IMAGENET_STD = tuple(float(v) for v in _STD)
PRESETS: Dict[str, Preprocess] = {
    "imagenet": Preprocess("center-crop", 1.0, IMAGENET_MEAN, IMAGENET_STD),
    "none": Preprocess("plain"),
    "paddleocr": Preprocess("plain", 1 / 255, (0.5,), (0.5,)),
    "yolo": Preprocess("letterbox", 1 / 255),
    "tf": Preprocess("plain", 1.0, (127.0,), (128.0,)),
}


def preset(name: Union[str, Preprocess, None], default: str = "imagenet") -> Preprocess:
    """A :class:`Preprocess` from a preset name (or one given as is; None: ``default``)."""
    if isinstance(name, Preprocess):
        return name
    key = default if name is None else name
    if key not in PRESETS:
        raise DataError(f"unknown preprocessing {key!r} (known: {list(PRESETS)})")
    return PRESETS[key]


def decode(path: Union[str, Path], channels: int) -> np.ndarray:
    """The image at ``path`` as float32 ``[H, W, channels]`` on the 0-255 scale (RGB for 3 channels,
    luminance for 1); 16-bit images are divided by 257, not clipped."""
    image = pil()
    try:
        with image.open(path) as im:
            im.load()
            if im.mode in _SIXTEEN_BIT or im.mode == "F":
                raw = np.asarray(im, np.float32)
                gray = raw / np.float32(257.0) if im.mode in _SIXTEEN_BIT else raw
                out = gray[..., None]
                return out if channels == 1 else np.repeat(out, 3, axis=2)
            mode = "L" if channels == 1 else "RGB"
            arr = np.asarray(im.convert(mode), np.float32)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image ({e})") from None
    return arr[..., None] if channels == 1 else arr


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of float32 ``[H, W, C]`` (each channel as a Pillow float image)."""
    if img.shape[0] == height and img.shape[1] == width:
        return img
    image = pil()
    chans = [np.asarray(image.fromarray(np.ascontiguousarray(img[..., c]), mode="F")
                        .resize((width, height), image.BILINEAR), np.float32) for c in range(img.shape[2])]
    return np.stack(chans, axis=2)


def fit(img: np.ndarray, height: int, width: int, p: Preprocess) -> np.ndarray:
    """``img`` (float32 ``[H, W, C]``) resized to ``height x width`` by ``p.resize``."""
    h, w = img.shape[:2]
    if p.resize == "plain":
        return _resize(img, width, height)
    if p.resize == "center-crop":
        s = max(height, width) / p.crop_fraction / min(h, w)
        nw, nh = max(width, round(w * s)), max(height, round(h * s))
        out = _resize(img, nw, nh)
        top, left = (nh - height) // 2, (nw - width) // 2
        return out[top:top + height, left:left + width]
    s = min(height / h, width / w)
    nw, nh = max(1, min(width, round(w * s))), max(1, min(height, round(h * s)))
    out = np.full((height, width, img.shape[2]), p.pad_value, np.float32)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top:top + nh, left:left + nw] = _resize(img, nw, nh)
    return out


def _per_channel(values: Sequence[float], channels: int, name: str) -> np.ndarray:
    if len(values) == 1:
        return np.full(channels, values[0], np.float32)
    if len(values) != channels:
        raise DataError(f"{name} has {len(values)} values but the input has {channels} channel(s)")
    return np.asarray(values, np.float32)


def load_image(path: Union[str, Path], height: int, width: int, p: Preprocess, channels: int = 3) -> np.ndarray:
    """One image as float32 ``[channels, height, width]``: decoded, resized, ``(x*scale - mean)/std``,
    in ``p.channel_order`` (mean/std are given in that order too)."""
    img = fit(decode(path, channels), height, width, p)
    if channels == 3 and p.channel_order == "BGR":
        img = img[..., ::-1]
    x = (img * np.float32(p.scale) - _per_channel(p.mean, channels, "mean")) / _per_channel(p.std, channels, "std")
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def parse_numbers(text: Optional[str], name: str) -> Optional[Tuple[float, ...]]:
    """``"0.5"``, ``"123.7,116.3,103.5"`` or fractions like ``"1/255"`` as floats (None passes through)."""
    if text is None:
        return None
    out = []
    for part in str(text).split(","):
        try:
            num, _, den = part.strip().partition("/")
            out.append(float(num) / (float(den) if den else 1.0))
        except (ValueError, ZeroDivisionError):
            raise DataError(f"{name}: {text!r} is not a number or a comma-separated list of numbers") from None
    return tuple(out)
