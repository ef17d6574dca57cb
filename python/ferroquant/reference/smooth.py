"""Specifies rust/ferroquant-core/src/channel_stats.rs (streaming per-channel min/max/|x| sums over the last
axis) and smooth.rs (the SmoothQuant balancing search)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ferroquant.errors import EmptyInputError, ParameterError, ShapeError
from ferroquant.ops.groupwise import DEFAULT_ALPHAS, SmoothResult
from ferroquant.reference._common import check_finite, qrange
from ferroquant.reference.qparams import qparams_from_range

f32, f64 = np.float32, np.float64
MIN_SMOOTH = 1e-5


def _check_stats(lo: np.ndarray, hi: np.ndarray, abs_sum: np.ndarray) -> int:
    c = lo.shape[0]
    if lo.dtype != f32 or hi.dtype != f32 or abs_sum.dtype != f64 or hi.shape != (c,) or abs_sum.shape != (c,):
        raise ShapeError("per-channel statistics must be float32 min/max and float64 abs_sum vectors of one length")
    return c


def channel_stats_update(min: np.ndarray, max: np.ndarray, abs_sum: np.ndarray, x: object) -> int:
    """Specifies channel_stats.rs::channel_stats_update: folds the batch ``x`` ``[..., C]`` into the running
    ``(min, max, abs_sum)`` in place (unchanged when it raises); returns the row count."""
    c = _check_stats(min, max, abs_sum)
    x = np.asarray(x, f32)
    if x.shape[-1] != c:
        raise ShapeError(f"x must have K={c} values in its last axis, got shape {x.shape}")
    check_finite(x)
    x = x.reshape(-1, c)
    np.minimum(min, x.min(axis=0, initial=np.inf), out=min)
    np.maximum(max, x.max(axis=0, initial=-np.inf), out=max)
    abs_sum += np.abs(x).astype(f64).sum(axis=0)
    return x.shape[0]


def channel_stats_merge(min: np.ndarray, max: np.ndarray, abs_sum: np.ndarray, min2: np.ndarray, max2: np.ndarray,
                        abs_sum2: np.ndarray) -> None:
    """Specifies channel_stats.rs::StatsMut::merge: folds the second statistics into the first, in place."""
    c = _check_stats(min, max, abs_sum)
    if _check_stats(min2, max2, abs_sum2) != c:
        raise ShapeError(f"cannot merge statistics of {min2.shape[0]} channels into {c}")
    np.minimum(min, min2, out=min)
    np.maximum(max, max2, out=max)
    abs_sum += abs_sum2


def smooth_scales(act_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """``max(a^alpha / max(w, 1e-5)^(1-alpha), 1e-5)`` per channel, float32."""
    return np.array([max(math.pow(float(a), alpha) / math.pow(max(float(w), MIN_SMOOTH), 1.0 - alpha), MIN_SMOOTH)
                     for a, w in zip(act_absmax, w_absmax)], f64).astype(f32)


def _fq(v: np.ndarray, step, bits: int) -> np.ndarray:
    qmin, qmax = qrange(bits)
    return (np.clip(np.rint(v / step), qmin, qmax).astype(f32) * step).astype(f32)


def balanced_error(act: np.ndarray, w: np.ndarray, x: np.ndarray, s: np.ndarray, bits: int, w_bits: int) -> float:
    rng = max(f32(0), np.max(act / s))
    step = f32(qparams_from_range(-rng, rng, bits, True).scale)
    xq = _fq((x / s).astype(f32), step, bits).astype(f64)
    ws = (w * s[:, None]).astype(f32)
    wsteps = np.array([qparams_from_range(lo, hi, w_bits, True).scale for lo, hi in zip(ws.min(0), ws.max(0))], f32)
    wq = _fq(ws, wsteps[None, :], w_bits).astype(f64)
    y = x.astype(f64) @ w.astype(f64) - xq @ wq
    return float((y * y).sum()) / (x.shape[0] * w.shape[1])


def smooth_search(act_absmax: object, w: object, x: object, alphas: Sequence[float] = DEFAULT_ALPHAS,
                  bits: int = 8, w_bits: Optional[int] = None) -> SmoothResult:
    """Specifies smooth.rs::smooth_search."""
    act, w = np.asarray(act_absmax, f32).reshape(-1), np.asarray(w, f32)
    k = act.shape[0]
    if len(alphas) == 0:
        raise EmptyInputError("no alphas")
    if w.shape[0] != k or np.asarray(x).shape[-1] != k:
        raise ShapeError(f"act_absmax [{k}], w {w.shape} and x {np.shape(x)} do not fit")
    if not np.all(np.isfinite(act) & (act >= 0)):
        raise ParameterError("act_absmax must be finite and >= 0")
    if any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ParameterError(f"alphas must lie in [0, 1], got {list(alphas)}")
    x = np.asarray(x, f32).reshape(-1, k)
    check_finite(w)
    check_finite(x)
    w_bits = bits if w_bits is None else w_bits
    qrange(bits)
    qrange(w_bits)
    w_absmax = np.abs(w).max(axis=1)
    losses = np.array([balanced_error(act, w, x, smooth_scales(act, w_absmax, a), bits, w_bits) for a in alphas])
    best = int(np.argmin(losses))
    return SmoothResult(smooth_scales(act, w_absmax, alphas[best]), float(alphas[best]), np.asarray(alphas, f64),
                        losses, balanced_error(act, w, x, np.ones(k, f32), bits, w_bits))

__all__ = ["channel_stats_merge", "channel_stats_update", "smooth_search"]
