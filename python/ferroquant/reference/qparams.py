"""Specifies rust/ferroquant-core/src/qparams.rs."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant.errors import NonFiniteError, ParameterError, ScaleError
from ferroquant.ops.types import QParams
from ferroquant.reference._common import FLT_EPSILON, channels_first, check_finite, qrange

f32 = np.float32


def guard(scale: np.float32, zero_point: int, bits: int, symmetric: bool) -> tuple[np.float32, int]:
    """AMCT's ProcessScale: tiny scale -> 1 (offset qmin when asymmetric); non-finite or huge -> error."""
    qmin, _ = qrange(bits)
    if not np.isfinite(scale):
        raise ScaleError(f"invalid scale {scale}: not finite (range too wide)")
    if scale < FLT_EPSILON:
        return f32(1.0), (0 if symmetric else qmin)
    with np.errstate(over="ignore"):
        if f32(1.0) / scale < FLT_EPSILON:
            raise ScaleError(f"invalid scale {scale}: 1/scale is below FLT_EPSILON")
    return scale, zero_point


def qparams_from_range(lo: float, hi: float, bits: int = 8, symmetric: bool = True) -> QParams:
    """Specifies the binding's ``qparams_from_range``: qparams.rs::from_range of a range with ``lo <= hi``."""
    qrange(bits)
    if f32(lo) > f32(hi):
        raise ParameterError(f"invalid parameter range: lo {f32(lo)} > hi {f32(hi)}")
    s, z = from_range(lo, hi, bits, symmetric)
    return QParams(float(s), int(z))


def from_range(lo: float, hi: float, bits: int = 8, symmetric: bool = True) -> tuple[np.float32, int]:
    """Specifies qparams.rs::from_range: (scale, zero_point) as (float32, int)."""
    qmin, qmax = qrange(bits)
    lo, hi = f32(lo), f32(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise NonFiniteError(f"range [{lo}, {hi}] is not finite")
    with np.errstate(over="ignore", invalid="ignore"):
        if symmetric:
            a = hi if abs(hi) >= abs(lo) else lo
            s = a / f32(qmax) if a > 0 else abs(a) / f32(-qmin)
            z = 0
        else:
            big, small = max(hi, f32(0)), min(lo, f32(0))
            s = (big - small) / f32((1 << bits) - 1)
            if s > 0 and np.isfinite(s):
                z = int(np.clip(f32(qmin) - np.rint(small / s), qmin, qmax))
            else:
                z = qmin
    return guard(f32(s), z, bits, symmetric)


def min_max(x: np.ndarray, axis: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Specifies qparams.rs::min_max_per_channel."""
    x = np.asarray(x, np.float32)
    check_finite(x)
    c = channels_first(x, axis)
    return c.min(axis=1), c.max(axis=1)


def qparams_from_data(
    x: np.ndarray, axis: Optional[int] = None, bits: int = 8, symmetric: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Specifies qparams.rs::from_data."""
    lo, hi = min_max(x, axis)
    pairs = [from_range(a, b, bits, symmetric) for a, b in zip(lo, hi)]
    return np.array([p[0] for p in pairs], np.float32), np.array([p[1] for p in pairs], np.int32)

__all__ = ["min_max", "qparams_from_data", "qparams_from_range"]
