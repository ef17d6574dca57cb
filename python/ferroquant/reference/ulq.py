"""Specifies rust/ferroquant-core/src/ulq.rs: the ULQ forward/backward (spec §5.1) and the LSQ backward of
learned per-channel weight scales (spec §5.2)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant.errors import NonFiniteError, ParameterError, ScaleError, ShapeError
from ferroquant.reference._common import FLT_EPSILON, channels_first, qrange
from ferroquant._arrays import opt_axis
from ferroquant.ops.types import UlqBackward, UlqForward
from ferroquant.reference.affine import fake_quant
from ferroquant.reference.qparams import from_range

_LIMIT = np.float32(4194304.0)  # 2^22


def _check(x: np.ndarray, g: np.ndarray) -> None:
    if x.shape != g.shape:
        raise ShapeError(f"grad shape {g.shape} != x shape {x.shape}")
    bad = np.flatnonzero(~(np.isfinite(x) & np.isfinite(g)).reshape(-1))
    if bad.size:
        raise NonFiniteError(f"input contains a non-finite value at flat index {bad[0]}")


def ulq_fake_quant(x, clip_min: float, clip_max: float, bits: int = 8, symmetric: bool = False) -> UlqForward:
    """Specifies ulq.rs::ulq_fake_quant: fake-quant with the §0 qparams of [clip_min, clip_max]."""
    s, z = from_range(np.float32(clip_min), np.float32(clip_max), bits, symmetric)
    return UlqForward(fake_quant(np.asarray(x, np.float32), s, z, bits), float(s), int(z))


def ulq_backward(x, grad, clip_min: float, clip_max: float, bits: int = 8, symmetric: bool = False) -> UlqBackward:
    """Specifies ulq.rs::ulq_backward: (grad_x, d clip_max, d clip_min) with the masks, ``t`` and
    ``e = (round(t) - t) / (2^b - 1)`` of spec §5.1 (f32 element math, f64 sums)."""
    x, g = np.asarray(x, np.float32), np.asarray(grad, np.float32)
    _check(x, g)
    qmin, qmax = qrange(bits)
    s, z = from_range(np.float32(clip_min), np.float32(clip_max), bits, symmetric)
    s, o = np.float32(s), np.float32(z)
    t_up, t_lo = np.float32(clip_max) / s, np.float32(clip_min) / s
    if not (abs(t_up) < _LIMIT and abs(t_lo) < _LIMIT):
        raise ParameterError(f"clips [{clip_min}, {clip_max}] are more than 2^22 steps of scale {s} from zero")
    up = x > s * (np.float32(qmax) - o)
    lo = x < s * (np.float32(qmin) - o)
    t = np.where(up, t_up, np.where(lo, t_lo, x / s)).astype(np.float32)
    e = (np.rint(t) - t) * (np.float32(1.0) / np.float32((1 << bits) - 1))
    gx = np.where(up | lo, np.float32(0), g).astype(np.float32)
    gmax = np.sum((g * (e + up.astype(np.float32))).astype(np.float64))
    gmin = np.sum((g * (lo.astype(np.float32) - e)).astype(np.float64))
    return UlqBackward(gx, float(gmax), float(gmin))


def lsq_backward(w, grad, scale, bits: int = 8, axis: Optional[int] = 0) -> np.ndarray:
    """Specifies ulq.rs::lsq_backward: per channel, ``Σ grad·(round(w/s) − w/s | qmin | qmax)`` times
    ``1/sqrt(N_c·qmax)``, float32."""
    w, g, axis = np.asarray(w, np.float32), np.asarray(grad, np.float32), opt_axis(axis)
    _check(w, g)
    qmin, qmax = qrange(bits)
    wc, gc = channels_first(w, axis), channels_first(g, axis)
    s = np.atleast_1d(np.asarray(scale, np.float32)).reshape(-1)
    if s.size != wc.shape[0]:
        raise ShapeError(f"expected {wc.shape[0]} scales, got {s.size}")
    if not np.all(np.isfinite(s) & (s >= FLT_EPSILON)):
        raise ScaleError(f"invalid scale {s}: must be finite and >= FLT_EPSILON")
    t = wc / s[:, None]
    d = np.where(t < qmin, np.float32(qmin), np.where(t > qmax, np.float32(qmax), np.rint(t) - t)).astype(np.float32)
    sums = np.sum((gc * d).astype(np.float64), axis=1)
    return (sums / np.sqrt(np.float64(wc.shape[1]) * qmax)).astype(np.float32)

__all__ = ["lsq_backward", "ulq_backward", "ulq_fake_quant"]
