"""Text images and the PaddleOCR pre/post-processing RapidOCR uses, in plain NumPy/Pillow/SciPy (no OpenCV):
text lines rendered with matplotlib's DejaVu fonts, pages of them, scikit-image's ``page.png``/``text.png``,
the det/rec/cls input transforms, CTC decoding with the model's own character list, and det boxes."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx

Box = Tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)


def fonts() -> List[Path]:
    """matplotlib's DejaVu TrueType fonts (sans, serif, mono; regular and bold)."""
    import matplotlib

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
             "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf"]
    return [root / n for n in names if (root / n).is_file()]


def _words() -> List[str]:
    from pydoc_data.topics import topics

    text = " ".join(topics.values())
    return [w for w in re.findall(r"[A-Za-z][A-Za-z0-9'.,:;()-]{1,14}", text) if w.isascii()]


def sentences(n: int, seed: int, words: Tuple[int, int] = (2, 6)) -> List[str]:
    """``n`` lines of 2..6 English words from Python's own documentation (``pydoc_data``), some with a
    number; deterministic for ``seed``."""
    vocab = _words()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(words[0], words[1] + 1))
        parts = [vocab[int(i)] for i in rng.integers(0, len(vocab), k)]
        if rng.random() < 0.3:
            parts.insert(int(rng.integers(0, k + 1)), str(int(rng.integers(0, 10000))))
        out.append(" ".join(parts))
    return out


def render_line(text: str, font: Path, size: int, rng: np.random.Generator) -> np.ndarray:
    """``text`` in ``font`` at ``size`` px, dark ink on a light background, a few px of margin: uint8 RGB."""
    from PIL import Image, ImageDraw, ImageFont

    f = ImageFont.truetype(str(font), size)
    x0, y0, x1, y1 = f.getbbox(text)
    pad = int(rng.integers(3, 9))
    bg = tuple(int(v) for v in rng.integers(215, 256, 3))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    im = Image.new("RGB", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), bg)
    ImageDraw.Draw(im).text((pad - x0, pad - y0), text, font=f, fill=ink)
    return np.asarray(im)


def rendered_lines(n: int, seed: int) -> List[Tuple[str, np.ndarray]]:
    """``n`` (text, image) pairs over every DejaVu font, sizes 18..40 px."""
    rng = np.random.default_rng(seed)
    fs = fonts()
    return [(t, render_line(t, fs[i % len(fs)], int(rng.integers(18, 41)), rng))
            for i, t in enumerate(sentences(n, seed))]


def page(lines: Sequence[np.ndarray], width: int = 900, seed: int = 0) -> np.ndarray:
    """The line images stacked on a white page (left margins and gaps vary): uint8 RGB."""
    rng = np.random.default_rng(seed)
    gaps = rng.integers(10, 30, len(lines))
    h = int(sum(l.shape[0] for l in lines) + gaps.sum() + 20)
    out = np.full((h, width, 3), 255, np.uint8)
    y = 10
    for img, gap in zip(lines, gaps):
        w = min(img.shape[1], width - 20)
        x = int(rng.integers(10, max(11, width - w - 10)))
        out[y:y + img.shape[0], x:x + w] = img[:, :w]
        y += img.shape[0] + int(gap)
    return out


def skimage_text_images() -> List[Tuple[str, np.ndarray]]:
    """scikit-image's scanned ``page.png`` and ``text.png`` as uint8 RGB (grayscale repeated)."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("skimage")
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    out = []
    for name in ("page.png", "text.png"):
        with Image.open(root / name) as im:
            out.append((name, np.asarray(im.convert("RGB"))))
    return out


# ---------------------------------------------------------------- PaddleOCR transforms (as RapidOCR does them)


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((max(1, w), max(1, h)), Image.BILINEAR))


def _norm(img: np.ndarray) -> np.ndarray:
    """RGB uint8 -> BGR (PaddleOCR reads with OpenCV) float32 CHW, (x/255 - 0.5)/0.5."""
    x = img[..., ::-1].astype(np.float32) / 255.0
    return ((x - 0.5) / 0.5).transpose(2, 0, 1)


def rec_input(img: np.ndarray, height: int = 48, base_width: int = 320) -> np.ndarray:
    """[1, 3, 48, W]: height 48 keeping the aspect ratio, padded with zeros to at least 320 wide."""
    h, w = img.shape[:2]
    width = int(height * max(base_width / height, w / h))
    rw = min(width, int(math.ceil(height * w / h)))
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :rw] = _norm(_resize(img, rw, height))
    return out[None]


def cls_input(img: np.ndarray, shape: Tuple[int, int] = (48, 192)) -> np.ndarray:
    """[1, 3, 48, 192]: height 48 keeping the aspect ratio (at most 192 wide), zero padding."""
    h, w = img.shape[:2]
    rw = min(shape[1], int(math.ceil(shape[0] * w / h)))
    out = np.zeros((3, *shape), np.float32)
    out[:, :, :rw] = _norm(_resize(img, rw, shape[0]))
    return out[None]


def det_input(img: np.ndarray, limit: int = 736) -> Tuple[np.ndarray, float, float]:
    """[1, 3, H, W] with the short side at least ``limit`` and both multiples of 32; and the (x, y) ratios
    from map to image coordinates."""
    h, w = img.shape[:2]
    r = limit / min(h, w) if min(h, w) < limit else 1.0
    nh, nw = max(32, int(round(h * r / 32)) * 32), max(32, int(round(w * r / 32)) * 32)
    return _norm(_resize(img, nw, nh))[None], w / nw, h / nh


def characters(model_path: Path) -> List[str]:
    """The rec model's character list from its metadata, with ``blank`` first and a space last (RapidOCR)."""
    m = onnx.load(str(model_path), load_external_data=False)
    chars = next(p.value for p in m.metadata_props if p.key == "character").splitlines()
    return ["blank"] + chars + [" "]


def ctc_decode(probs: np.ndarray, chars: Sequence[str]) -> str:
    """Greedy CTC: argmax per step, repeats merged, blanks (index 0) dropped. ``probs``: [T, C]."""
    idx = probs.argmax(-1)
    keep = np.ones(len(idx), bool)
    keep[1:] = idx[1:] != idx[:-1]
    return "".join(chars[i] for i in idx[keep] if i != 0 and i < len(chars))


@dataclass(frozen=True)
class DetBox:
    box: Box
    score: float


def det_boxes(prob: np.ndarray, rx: float, ry: float, thresh: float = 0.3, box_thresh: float = 0.5,
              unclip: float = 1.6, min_size: int = 3) -> List[DetBox]:
    """Axis-aligned text boxes from a det probability map [H, W] (RapidOCR's defaults: threshold 0.3,
    dilation, box score >= 0.5, unclip 1.6), in image coordinates, top to bottom."""
    from scipy import ndimage

    bitmap = ndimage.binary_dilation(prob > thresh, structure=np.ones((2, 2), bool))
    labels, _ = ndimage.label(bitmap)
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels), 1):
        if sl is None:
            continue
        ys, xs = sl
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if min(h, w) < min_size:
            continue
        score = float(prob[sl][labels[sl] == i].mean())
        if score < box_thresh:
            continue
        d = w * h * unclip / (2 * (w + h))
        x0, y0 = max(0.0, xs.start - d), max(0.0, ys.start - d)
        x1, y1 = min(prob.shape[1], xs.stop + d), min(prob.shape[0], ys.stop + d)
        out.append(DetBox((int(x0 * rx), int(y0 * ry), int(math.ceil(x1 * rx)), int(math.ceil(y1 * ry))), score))
    return sorted(out, key=lambda b: (b.box[1], b.box[0]))


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def crop(img: np.ndarray, box: Box) -> Optional[np.ndarray]:
    x0, y0, x1, y1 = box
    c = img[max(0, y0):y1, max(0, x0):x1]
    return c if c.shape[0] >= 4 and c.shape[1] >= 4 else None
