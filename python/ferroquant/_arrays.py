"""Input checks shared by the typed wrappers and the reference twins: dtype, emptiness, contiguity, integer
parameters and zero points (checked before any cast, so nothing wraps or truncates), the ConvTranspose group
layout, and errors that name the tensor."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import numpy as np

from ferroquant.errors import AxisError, BitsError, DTypeError, EmptyInputError, ParameterError, QuantError, \
    ShapeError, ZeroPointError

_CONVERTED = (np.dtype(np.float16), np.dtype(np.float64))


def as_f32(x: object, what: str = "x", allow_empty: bool = False) -> np.ndarray:
    """``x`` as a C-contiguous float32 array: no copy for contiguous float32, one conversion for float16/64."""
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype == np.float32:
        a = a if a.flags.c_contiguous else np.array(a, order="C")  # (np.ascontiguousarray makes 0-d 1-d)
    elif a.dtype in _CONVERTED:
        a = np.array(a, dtype=np.float32, order="C")
    else:
        raise DTypeError(f"{what} must be float32, float16 or float64, got {a.dtype}")
    if a.size == 0 and not allow_empty:
        raise EmptyInputError(f"{what} is empty (shape {a.shape})")
    return a


def as_f64_values(x: object, what: str = "x") -> np.ndarray:
    """``x`` (any shape) as a flat float64 array of its values; booleans and integers are taken as numbers,
    anything else (complex, strings, objects, ragged sequences) raises instead of being cast."""
    try:
        a = x if isinstance(x, np.ndarray) else np.asarray(x)
    except ValueError as e:
        raise ShapeError(f"{what} is not an array of numbers: {e}") from None
    if a.dtype.kind not in "biuf":
        raise DTypeError(f"{what} must hold real numbers, got {a.dtype}")
    return np.asarray(a, np.float64).ravel()


def per_channel(v: object, dtype: type, what: str) -> np.ndarray:
    """A scalar or 1-D sequence of per-channel values as a contiguous 1-D array of ``dtype``. Integers are
    checked before the cast: values that do not fit ``dtype`` raise instead of wrapping."""
    a = np.asarray(v)
    if a.ndim > 1:
        a = a.reshape(-1)
    if np.dtype(dtype).kind == "i":
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise DTypeError(f"{what} must hold integers, got {a}")
        elif a.dtype.kind not in "uib":
            raise DTypeError(f"{what} must hold integers, got dtype {a.dtype}")
        info = np.iinfo(dtype)
        vals = np.atleast_1d(a)
        if vals.size and (vals.max() > info.max or vals.min() < info.min):
            i = int(np.argmax((vals > info.max) | (vals < info.min)))
            raise ZeroPointError(f"invalid {what.replace('_', ' ')} {vals[i].item()} at index {i}: outside the "
                                 f"{np.dtype(dtype).name} range [{info.min}, {info.max}]")
    return np.ascontiguousarray(np.atleast_1d(a), dtype=dtype)


def int_param(v: object, what: str, lo: Optional[int] = None, hi: Optional[int] = None,
              error: type = ParameterError) -> int:
    """``v`` as a Python int: an integer (not a bool, not a float such as 8.7) within ``[lo, hi]``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise error(f"{what} must be an integer, got {v!r}")
    n = int(v)
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        rng = f"[{lo}, {hi}]" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise error(f"{what} must be in {rng}, got {n}")
    return n


def check_bits(bits: object, what: str = "bits") -> int:
    """A bit width: an integer in [2, 16] (:class:`BitsError` naming ``what`` otherwise)."""
    return int_param(bits, what, 2, 16, BitsError)


def opt_axis(axis: object) -> Optional[int]:
    """``None`` or an integer axis (the kernels check it against the array; absurd values fail here)."""
    return None if axis is None else int_param(axis, "axis", -(1 << 31), 1 << 31, AxisError)


def group_major(w: np.ndarray, groups: int) -> np.ndarray:
    """ConvTranspose weight ``[C_in, C_out/g, ...]`` as ``[C_out, C_in/g, ...]`` (output channels first)."""
    c_in = w.shape[0]
    if w.ndim < 2 or c_in % groups:
        raise ShapeError(f"ConvTranspose weight: C_in={c_in} is not divisible by groups={groups}")
    rest = w.shape[2:]
    g = w.reshape(groups, c_in // groups, w.shape[1], *rest)
    return np.ascontiguousarray(np.swapaxes(g, 1, 2).reshape(groups * w.shape[1], c_in // groups, *rest))


def group_restore(a: np.ndarray, shape: tuple, groups: int) -> np.ndarray:
    """The inverse of :func:`group_major`."""
    c_in, c_out_g, rest = shape[0], shape[1], shape[2:]
    g = a.reshape(groups, c_out_g, c_in // groups, *rest)
    return np.ascontiguousarray(np.swapaxes(g, 1, 2).reshape(shape))


@contextlib.contextmanager
def named(name: Optional[str]) -> Iterator[None]:
    """Re-raise ferroquant errors with the tensor's name in front of the message."""
    if not name:
        yield
        return
    try:
        yield
    except QuantError as e:
        raise type(e)(f"tensor {name!r}: {e}") from None
