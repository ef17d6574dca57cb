"""Affine quantization of arrays: qparams from a range or from data, quantize, dequantize, fake-quant."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ferroquant import _native
from ferroquant._arrays import as_f32, check_bits, named, opt_axis, per_channel
from ferroquant.errors import DTypeError
from ferroquant.ops._common import ArrayLike
from ferroquant.ops.types import QParams


def qparams_from_range(lo: float, hi: float, bits: int = 8, symmetric: bool = True) -> QParams:
    """Scale and zero point for ``[lo, hi]`` (spec §0: 127/128 rule, or the range widened to include 0);
    ``lo > hi`` raises :class:`ParameterError`."""
    return _native.qparams_from_range(float(lo), float(hi), check_bits(bits), bool(symmetric))


def min_max(x: ArrayLike, axis: Optional[int] = None, name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (min, max) along ``axis``; one pair when ``axis`` is None. NaN/Inf raise."""
    with named(name):
        return _native.min_max(as_f32(x), opt_axis(axis))


def qparams_from_data(
    x: ArrayLike,
    axis: Optional[int] = None,
    bits: int = 8,
    symmetric: bool = True,
    name: Optional[str] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, zero_point) from the data's min/max (ARQ's qparams without the quantization)."""
    with named(name):
        return _native.qparams_from_data(as_f32(x), opt_axis(axis), check_bits(bits), bool(symmetric))


def _grid(scale: ArrayLike, zero_point: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = per_channel(scale, np.float32, "scale")
    z = per_channel(zero_point, np.int32, "zero_point")
    if z.size == 1 and s.size > 1:
        z = np.full(s.shape, z[0], dtype=np.int32)
    return s, z


def _on_grid(native: Callable[..., np.ndarray], x: ArrayLike, scale: ArrayLike, zero_point: ArrayLike, bits: int,
             axis: Optional[int], name: Optional[str]) -> np.ndarray:
    """``native(x, scale, zero_point, bits, axis)`` with every argument checked (quantize, fake_quant)."""
    with named(name):
        b = check_bits(bits)
        s, z = _grid(scale, zero_point)
        return native(as_f32(x), s, z, b, opt_axis(axis))


def quantize(
    x: ArrayLike,
    scale: ArrayLike,
    zero_point: ArrayLike = 0,
    bits: int = 8,
    axis: Optional[int] = None,
    name: Optional[str] = None,
) -> np.ndarray:
    """``clamp(round_half_even(x / scale) + zero_point, qmin, qmax)``; int8 for bits <= 8, int16 above.

    With ``axis`` None, ``scale`` and ``zero_point`` are scalars; otherwise one per index of ``axis``.
    """
    return _on_grid(_native.quantize, x, scale, zero_point, bits, axis, name)


def dequantize(
    q: np.ndarray,
    scale: ArrayLike,
    zero_point: ArrayLike = 0,
    bits: int = 8,
    axis: Optional[int] = None,
    name: Optional[str] = None,
) -> np.ndarray:
    """``(q - zero_point) * scale`` as float32; ``q`` is int8, int16 or int32, every code in the ``bits`` range."""
    with named(name):
        b = check_bits(bits)
        a = np.asarray(q)
        if a.dtype not in (np.int8, np.int16, np.int32):
            raise DTypeError(f"q must be int8, int16 or int32, got {a.dtype}")
        s, z = _grid(scale, zero_point)
        return _native.dequantize(a if a.flags.c_contiguous else np.array(a, order="C"), s, z, b, opt_axis(axis))


def fake_quant(
    x: ArrayLike,
    scale: ArrayLike,
    zero_point: ArrayLike = 0,
    bits: int = 8,
    axis: Optional[int] = None,
    name: Optional[str] = None,
) -> np.ndarray:
    """Quantize then dequantize in one pass: the float value each deployed integer stands for."""
    return _on_grid(_native.fake_quant, x, scale, zero_point, bits, axis, name)

__all__ = ["dequantize", "fake_quant", "min_max", "qparams_from_data", "qparams_from_range", "quantize"]
