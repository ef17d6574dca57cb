"""Specifies rust/ferroquant-core/src/affine.rs."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant._arrays import opt_axis, per_channel
from ferroquant.errors import DTypeError, NonFiniteError, ParameterError, ScaleError, ShapeError, ZeroPointError
from ferroquant.reference._common import broadcast_shape, channels_first, qrange


def _grid(x: np.ndarray, scale, zero_point, bits: int, axis: Optional[int]):
    qmin, qmax = qrange(bits)
    channels = channels_first(x, axis).shape[0] if x.size or axis is not None else 1
    s = per_channel(scale, np.float32, "scale")
    z = per_channel(zero_point, np.int32, "zero_point")
    if z.size == 1 and s.size > 1:
        z = np.full(s.shape, z[0], np.int32)
    if s.size != channels or z.size != channels:
        raise ShapeError(f"expected {channels} scale/zero_point values, got {s.size}/{z.size}")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ScaleError(f"invalid scale {s}: must be finite and > 0")
    if np.any((z < qmin) | (z > qmax)):
        raise ZeroPointError(f"zero point {z} outside [{qmin}, {qmax}]")
    shape = broadcast_shape(x, axis)
    return s.reshape(shape), z.reshape(shape), qmin, qmax


def _codes(x: np.ndarray, s: np.ndarray, z: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """Float codes: clamp x/s one step outside the range, round half to even, add z, clamp."""
    flat = x.reshape(-1)
    bad = np.flatnonzero(~np.isfinite(flat))
    if bad.size:
        raise NonFiniteError(f"input contains a non-finite value ({flat[bad[0]]}) at flat index {bad[0]}")
    zf = z.astype(np.float32)
    with np.errstate(over="ignore", divide="ignore"):
        t = x / s
    t = np.minimum(np.maximum(t, (qmin - z - 1).astype(np.float32)), (qmax - z + 1).astype(np.float32))
    return np.minimum(np.maximum(np.rint(t) + zf, np.float32(qmin)), np.float32(qmax))


def quantize(x, scale, zero_point=0, bits: int = 8, axis: Optional[int] = None) -> np.ndarray:
    """Specifies affine.rs::quantize: int8 for bits <= 8, int16 above."""
    x, axis = np.asarray(x, np.float32), opt_axis(axis)
    s, z, qmin, qmax = _grid(x, scale, zero_point, bits, axis)
    return _codes(x, s, z, qmin, qmax).astype(np.int8 if bits <= 8 else np.int16)


def dequantize(q, scale, zero_point=0, bits: int = 8, axis: Optional[int] = None) -> np.ndarray:
    """Specifies affine.rs::dequantize: every code must lie in ``[qmin, qmax]`` of ``bits``."""
    q = np.asarray(q)
    if q.dtype not in (np.int8, np.int16, np.int32):
        raise DTypeError(f"q must be int8, int16 or int32, got {q.dtype}")
    s, z, qmin, qmax = _grid(q, scale, zero_point, bits, opt_axis(axis))
    flat = q.reshape(-1)
    bad = np.flatnonzero((flat < qmin) | (flat > qmax))
    if bad.size:
        raise ParameterError(f"invalid parameter q: code {flat[bad[0]]} at flat index {bad[0]} is outside "
                             f"[{qmin}, {qmax}] for {bits} bits")
    return (q.astype(np.float32) - z.astype(np.float32)) * s


def fake_quant(x, scale, zero_point=0, bits: int = 8, axis: Optional[int] = None) -> np.ndarray:
    """Specifies affine.rs::fake_quant."""
    x, axis = np.asarray(x, np.float32), opt_axis(axis)
    s, z, qmin, qmax = _grid(x, scale, zero_point, bits, axis)
    return (_codes(x, s, z, qmin, qmax) - z.astype(np.float32)) * s

__all__ = ["dequantize", "fake_quant", "quantize"]
