"""Typed array API over the native kernels.

Every function here has a NumPy twin of the same name in :mod:`ferroquant.reference` that specifies it; the
tests check that the two agree (integer codes bit for bit). Float arrays are taken without a copy when they are
C-contiguous float32; float16 and float64 are converted once; any other dtype raises :class:`DTypeError`. The
native work runs with the GIL released.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from ferroquant import _native
from ferroquant._arrays import as_f32, named, per_channel
from ferroquant.errors import DTypeError, ParameterError, ShapeError

ArrayLike = Union[np.ndarray, float, int, list]


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor (plain Python numbers)."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class ArqResult:
    """What ARQ returns: one scale and zero point per channel (one in all when per tensor)."""

    scale: np.ndarray
    zero_point: np.ndarray
    codes: np.ndarray
    fake: np.ndarray
    axis: Optional[int]
    bits: int


@dataclass(frozen=True)
class NuqResult:
    """What NUQ returns: the int8 levels kept, a scale per channel, codes restricted to the levels."""

    levels: np.ndarray
    scale: np.ndarray
    codes: np.ndarray
    fake: np.ndarray
    mse: float
    iteration: int
    num_steps: int

    @property
    def zero_point(self) -> np.ndarray:
        return np.zeros_like(self.scale, dtype=np.int32)

    @property
    def complete(self) -> bool:
        """False when the weights had fewer distinct codes than ``num_steps`` (they are then kept as is)."""
        return len(self.levels) == self.num_steps


@dataclass(frozen=True)
class Comparison:
    """How closely ``test`` follows ``reference``: the f64 sums, and SQNR / cosine / MSE derived from them."""

    ref_sq: float
    test_sq: float
    dot: float
    diff_sq: float
    max_abs_diff: float
    size: int

    @property
    def sqnr_db(self) -> float:
        """``10 log10(sum r^2 / sum (r-t)^2)``; +inf when identical."""
        return float("inf") if self.diff_sq == 0 else 10.0 * math.log10(self.ref_sq / self.diff_sq)

    @property
    def cosine(self) -> float:
        """Cosine similarity; NaN when either side is all zeros."""
        den = math.sqrt(self.ref_sq * self.test_sq)
        return float("nan") if den == 0 else max(-1.0, min(1.0, self.dot / den))

    @property
    def mse(self) -> float:
        return self.diff_sq / self.size

    def __add__(self, other: "Comparison") -> "Comparison":
        """Sums over two batches (SQNR and cosine of the union)."""
        return Comparison(self.ref_sq + other.ref_sq, self.test_sq + other.test_sq, self.dot + other.dot,
                          self.diff_sq + other.diff_sq, max(self.max_abs_diff, other.max_abs_diff),
                          self.size + other.size)


def compare(reference: ArrayLike, test: ArrayLike, name: Optional[str] = None) -> Comparison:
    """Compare ``test`` with ``reference`` (same number of elements, any shapes) in one native pass."""
    with named(name):
        r, t = as_f32(reference, "reference"), as_f32(test, "test")
        return Comparison(*_native.compare(r, t), size=r.size)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in native kernels (0: one per core). Results do not depend on it."""
    _native.set_num_threads(int(n))


def get_num_threads() -> int:
    return int(_native.get_num_threads())


def qparams_from_range(lo: float, hi: float, bits: int = 8, symmetric: bool = True) -> QParams:
    """Scale and zero point for ``[lo, hi]`` (spec §0: 127/128 rule, or the range widened to include 0)."""
    s, z = _native.qparams_from_range(float(lo), float(hi), int(bits), bool(symmetric))
    return QParams(float(s), int(z))


def min_max(x: ArrayLike, axis: Optional[int] = None, name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (min, max) along ``axis``; one pair when ``axis`` is None. NaN/Inf raise."""
    with named(name):
        return _native.min_max(as_f32(x), axis)


def qparams_from_data(
    x: ArrayLike,
    axis: Optional[int] = None,
    bits: int = 8,
    symmetric: bool = True,
    name: Optional[str] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, zero_point) from the data's min/max (ARQ's qparams without the quantization)."""
    with named(name):
        return _native.qparams_from_data(as_f32(x), axis, int(bits), bool(symmetric))


def _grid(scale: ArrayLike, zero_point: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = per_channel(scale, np.float32, "scale")
    z = per_channel(zero_point, np.int32, "zero_point")
    if z.size == 1 and s.size > 1:
        z = np.full(s.shape, z[0], dtype=np.int32)
    return s, z


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
    with named(name):
        s, z = _grid(scale, zero_point)
        return _native.quantize(as_f32(x), s, z, int(bits), axis)


def dequantize(
    q: np.ndarray,
    scale: ArrayLike,
    zero_point: ArrayLike = 0,
    bits: int = 8,
    axis: Optional[int] = None,
    name: Optional[str] = None,
) -> np.ndarray:
    """``(q - zero_point) * scale`` as float32; ``q`` is int8, int16 or int32."""
    with named(name):
        a = np.asarray(q)
        if a.dtype not in (np.int8, np.int16, np.int32):
            raise DTypeError(f"q must be int8, int16 or int32, got {a.dtype}")
        s, z = _grid(scale, zero_point)
        return _native.dequantize(np.ascontiguousarray(a), s, z, int(bits), axis)


def fake_quant(
    x: ArrayLike,
    scale: ArrayLike,
    zero_point: ArrayLike = 0,
    bits: int = 8,
    axis: Optional[int] = None,
    name: Optional[str] = None,
) -> np.ndarray:
    """Quantize then dequantize in one pass: the float value each deployed integer stands for."""
    with named(name):
        s, z = _grid(scale, zero_point)
        return _native.fake_quant(as_f32(x), s, z, int(bits), axis)


def _group_major(w: np.ndarray, groups: int) -> np.ndarray:
    """ConvTranspose weight ``[C_in, C_out/g, ...]`` as ``[C_out, C_in/g, ...]`` (output channels first)."""
    c_in = w.shape[0]
    if w.ndim < 2 or c_in % groups:
        raise ShapeError(f"ConvTranspose weight: C_in={c_in} is not divisible by groups={groups}")
    rest = w.shape[2:]
    g = w.reshape(groups, c_in // groups, w.shape[1], *rest)
    return np.ascontiguousarray(np.swapaxes(g, 1, 2).reshape(groups * w.shape[1], c_in // groups, *rest))


def _group_restore(a: np.ndarray, shape: tuple[int, ...], groups: int) -> np.ndarray:
    c_in, c_out_g, rest = shape[0], shape[1], shape[2:]
    g = a.reshape(groups, c_out_g, c_in // groups, *rest)
    return np.ascontiguousarray(np.swapaxes(g, 1, 2).reshape(shape))


def arq(
    w: ArrayLike,
    channel_wise: bool = True,
    axis: int = 0,
    bits: int = 8,
    symmetric: bool = True,
    groups: int = 1,
    name: Optional[str] = None,
) -> ArqResult:
    """ARQ weight quantization (spec §1): min/max per output channel (or per tensor), 127/128 rule.

    ``axis`` is the output-channel axis: 0 for Conv/Gemm weights, 1 for ConvTranspose ``[C_in, C_out/g, ...]``
    weights, where ``groups`` maps each (input group, column) pair to its output channel.
    """
    with named(name):
        a = as_f32(w, "w")
        if groups < 1:
            raise ParameterError(f"groups must be >= 1, got {groups}")
        if groups > 1 and channel_wise:
            if axis != 1:
                raise ParameterError("groups > 1 is the ConvTranspose layout: the output-channel axis must be 1")
            s, z, q, f = _native.arq(_group_major(a, groups), 0, int(bits), bool(symmetric))
            q, f = _group_restore(q, a.shape, groups), _group_restore(f, a.shape, groups)
        else:
            s, z, q, f = _native.arq(a, axis if channel_wise else None, int(bits), bool(symmetric))
        return ArqResult(s, z, q, f, axis if channel_wise else None, int(bits))


def nuq(
    w: ArrayLike,
    num_steps: int = 32,
    num_of_iteration: int = 1,
    channel_wise: bool = True,
    axis: int = 0,
    name: Optional[str] = None,
) -> NuqResult:
    """NUQ (spec §2): keep ``num_steps`` of the 256 int8 levels, chosen by an exact DP, with
    ``num_of_iteration`` least-squares scale re-fits (the best round is returned)."""
    with named(name):
        a = as_f32(w, "w")
        lv, s, q, f, mse, it = _native.nuq(a, axis if channel_wise else None, int(num_steps), int(num_of_iteration))
        return NuqResult(lv, s, q, f, float(mse), int(it), int(num_steps))


__all__ = [
    "ArqResult",
    "Comparison",
    "compare",
    "NuqResult",
    "QParams",
    "arq",
    "dequantize",
    "fake_quant",
    "get_num_threads",
    "min_max",
    "nuq",
    "qparams_from_data",
    "qparams_from_range",
    "quantize",
    "set_num_threads",
]

from ferroquant.ops.groupwise import *  # noqa: E402,F401,F403  (weight-only group-wise RTN/GPTQ/AWQ, SmoothQuant)
