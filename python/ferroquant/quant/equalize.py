"""The arithmetic of cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"), in float64,
independent of any graph (the ONNX pass is :mod:`ferroquant.onnx.equalize`).

Two layers in a chain ``y = W2 * f(W1 * x + b1) + b2`` with ``f`` positively homogeneous (Relu, or nothing:
``f(x / s) = f(x) / s`` for ``s > 0``) compute the same function after output channel ``i`` of layer 1 is divided
by ``s_i`` (its weight rows and bias) and the weights of layer 2 that read input channel ``i`` are multiplied by
``s_i``. With ``r1_i`` the largest ``|w|`` of layer 1's output channel ``i`` and ``r2_i`` the largest ``|w|``
among layer 2's weights that read channel ``i``, ``s_i = sqrt(r1_i / r2_i)`` makes both ranges
``sqrt(r1_i * r2_i)``, which evens out the channels of a per-tensor (or per-output-channel) weight grid and, with
them, the ranges of the activation between the layers.

Layer 2 may be grouped: a weight ``[C2, C/g, k...]`` reads input channel ``i`` in group ``i // (C/g)``, column
``i % (C/g)``, rows of that group; a depthwise layer (``g == C``) reads channel ``i`` in its own rows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


def _input_major(w2: np.ndarray, groups: int) -> np.ndarray:
    """``w2`` ``[C2, C/g, k...]`` as ``[C, C2/g, k...]``: row ``i`` holds the weights that read input channel ``i``
    (a view-free copy in float64)."""
    c2, per = w2.shape[0], w2.shape[1]
    r = w2.astype(np.float64).reshape(groups, c2 // groups, per, -1)  # [g, C2/g, C/g, taps]
    return r.transpose(0, 2, 1, 3).reshape(groups * per, c2 // groups, -1)


def _output_major(w: np.ndarray, groups: int, shape: Tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`_input_major`."""
    c, c2g = w.shape[0], w.shape[1]
    per = c // groups
    return w.reshape(groups, per, c2g, -1).transpose(0, 2, 1, 3).reshape(shape)


@dataclass(frozen=True)
class Equalized:
    """A pair after equalization: new weights and bias of layer 1, new weight of layer 2 (float64), and the
    scales ``s`` (one per channel between the layers)."""

    w1: np.ndarray
    b1: Optional[np.ndarray]
    w2: np.ndarray
    scales: np.ndarray


def channel_ranges(w1: np.ndarray, w2: np.ndarray, groups2: int) -> Tuple[np.ndarray, np.ndarray]:
    """``r1`` (largest ``|w|`` per output channel of ``w1``) and ``r2`` (per input channel of ``w2``)."""
    r1 = np.abs(w1.astype(np.float64).reshape(w1.shape[0], -1)).max(axis=1)
    r2 = np.abs(_input_major(w2, groups2).reshape(w1.shape[0], -1)).max(axis=1)
    return r1, r2


def pair_fits(w1: np.ndarray, b1: Optional[np.ndarray], w2: np.ndarray, groups2: int) -> str:
    """"" when ``(w1, b1, w2)`` can be equalized, else why not."""
    c = w1.shape[0]
    if w1.ndim < 2 or w2.ndim < 2:
        return "weights of rank < 2"
    if groups2 < 1 or w2.shape[0] % groups2 or w2.shape[1] * groups2 != c:
        return f"layer 2 reads {w2.shape[1] * max(groups2, 1)} channels in {groups2} groups, layer 1 makes {c}"
    if b1 is not None and b1.shape != (c,):
        return f"layer 1's bias has shape {b1.shape}, not ({c},)"
    if not (np.all(np.isfinite(w1)) and np.all(np.isfinite(w2))):
        return "non-finite weights"
    return ""


def equalize_pair(w1: np.ndarray, b1: Optional[np.ndarray], w2: np.ndarray, groups2: int = 1) -> Equalized:
    """One equalization step of a pair (see the module docstring); channels where either range is 0 keep
    ``s = 1``. The caller checks :func:`pair_fits` first."""
    r1, r2 = channel_ranges(w1, w2, groups2)
    s = np.ones_like(r1)
    ok = (r1 > 0) & (r2 > 0)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    shape1 = (-1,) + (1,) * (w1.ndim - 1)
    new_w1 = w1.astype(np.float64) / s.reshape(shape1)
    new_b1 = None if b1 is None else b1.astype(np.float64) / s
    wi = _input_major(w2, groups2) * s[:, None, None]
    return Equalized(new_w1, new_b1, _output_major(wi, groups2, w2.shape), s)


def absorb_bias(b1: np.ndarray, w2: np.ndarray, b2: Optional[np.ndarray], c: np.ndarray, groups2: int = 1
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Bias absorption (Nagel et al. 2019, section 4.1): move ``c`` (>= 0, per channel between the layers) out of
    layer 1's bias into layer 2's: ``b1 - c`` and ``b2 + W2 c`` (summed over the kernel taps). Exact through a
    Relu wherever layer 1's output stays at or above ``c``, and only when layer 2 reads no zero padding."""
    wi = _input_major(w2, groups2)  # [C, C2/g, taps]
    per = wi.shape[0] // groups2
    contrib = (wi.sum(axis=2) * c[:, None]).reshape(groups2, per, -1).sum(axis=1).reshape(-1)
    base = np.zeros(w2.shape[0]) if b2 is None else b2.astype(np.float64)
    return b1.astype(np.float64) - c, base + contrib


__all__ = ["Equalized", "absorb_bias", "channel_ranges", "equalize_pair", "pair_fits"]
