"""Inputs and post-processing for the YOLO and voice-activity models of the corpus: photos letterboxed for
YOLOv8 (with ferroquant's own ``yolo`` preprocessing), YOLOv8 box decoding with NMS, and synthetic audio."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

#: photos with faces (what nudenet detects) are kept for evaluation; the others calibrate
EVAL_PHOTOS = ("astronaut", "grace_hopper", "camera")


def _photos(which: str) -> List[np.ndarray]:
    import importlib.util
    from pathlib import Path

    from PIL import Image

    from ferroquant.examples.photos import list_photos, load_photo

    photos = [load_photo(p) for p in list_photos() if (p.name in EVAL_PHOTOS) == (which == "evaluation")]
    if which == "evaluation":
        root = Path(list(importlib.util.find_spec("skimage").submodule_search_locations)[0]) / "data"
        with Image.open(root / "camera.png") as im:
            photos.append(np.asarray(im.convert("RGB")))
    return photos


def yolo_inputs(which: str, size: int = 320) -> List[np.ndarray]:
    """[1, 3, size, size] float32 inputs: each photo whole, its left and right halves, and its mirror image,
    letterboxed with ferroquant's ``yolo`` preprocessing (x/255, pad 114)."""
    from ferroquant.preprocess import fit, preset

    p = preset("yolo")
    out = []
    for rgb in _photos(which):
        img = rgb.astype(np.float32)
        w = img.shape[1]
        for view in (img, img[:, : w * 2 // 3], img[:, w // 3:], img[:, ::-1]):
            x = fit(np.ascontiguousarray(view), size, size, p) * np.float32(p.scale)
            out.append(np.ascontiguousarray(x.transpose(2, 0, 1))[None])
    return out


def box_iou(a, b) -> float:  # noqa: ANN001 - (x0, y0, x1, y1) sequences
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def yolo_boxes(out: np.ndarray, conf: float = 0.25, nms: float = 0.45) -> List[Tuple[float, ...]]:
    """YOLOv8 output [4 + classes, anchors] -> (x0, y0, x1, y1, score, class) after per-class NMS."""
    scores = out[4:]
    cls, best = scores.argmax(0), scores.max(0)
    keep = np.flatnonzero(best > conf)
    cx, cy, w, h = out[:4, keep]
    cand = sorted(zip(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, best[keep], cls[keep]), key=lambda b: -b[4])
    picked: List[Tuple[float, ...]] = []
    for b in cand:
        if all(p[5] != b[5] or box_iou(p, b) < nms for p in picked):
            picked.append(tuple(float(v) for v in b))
    return picked


def audio(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """A synthetic signal in [-1, 1]: voiced-like bursts (harmonics of a gliding 90-250 Hz pitch under a
    syllable envelope), noise and silence, in random order; length a multiple of 512 samples."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate) // 512 * 512
    out = np.zeros(n, np.float32)
    pos = 0
    while pos < n:
        seg = min(n - pos, int(rng.integers(rate // 8, rate // 2)))
        t = np.arange(seg) / rate
        kind = rng.integers(0, 3)
        if kind == 0:
            f0 = rng.uniform(90, 250) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
            phase = 2 * np.pi * np.cumsum(f0) / rate
            voice = sum(np.sin(k * phase) / k for k in range(1, 12))
            env = np.sin(np.pi * t / t[-1]) ** 2 * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
            out[pos:pos + seg] = 0.3 * voice * env
        elif kind == 1:
            out[pos:pos + seg] = rng.normal(0, rng.uniform(0.005, 0.05), seg)
        pos += seg
    return np.clip(out + rng.normal(0, 0.002, n).astype(np.float32), -1, 1)
