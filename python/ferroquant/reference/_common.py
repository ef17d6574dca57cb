"""Shared pieces of the reference: the integer range, input checks, channel reshaping."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant._arrays import check_bits
from ferroquant.errors import AxisError, EmptyInputError, NonFiniteError

FLT_EPSILON = np.float32(np.finfo(np.float32).eps)


def qrange(bits: int) -> tuple[int, int]:
    b = check_bits(bits)
    return -(1 << (b - 1)), (1 << (b - 1)) - 1


def check_finite(x: np.ndarray) -> None:
    if x.size == 0:
        raise EmptyInputError("input is empty")
    bad = np.flatnonzero(~np.isfinite(x.reshape(-1)))
    if bad.size:
        raise NonFiniteError(f"input contains a non-finite value ({x.reshape(-1)[bad[0]]}) at flat index {bad[0]}")


def channels_first(x: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """``x`` as ``[C, rest]`` with the channels of ``axis`` first (``[1, N]`` when axis is None)."""
    if axis is None:
        return x.reshape(1, -1)
    if not -x.ndim <= axis < x.ndim or x.ndim == 0:
        raise AxisError(f"axis {axis} is out of range for an array with {x.ndim} dimensions")
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def broadcast_shape(x: np.ndarray, axis: Optional[int]) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector along ``axis`` of ``x``."""
    if axis is None:
        return (1,) * x.ndim
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return tuple(shape)
