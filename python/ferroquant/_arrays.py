"""Input checks shared by the typed wrappers: dtype, emptiness, contiguity, and errors that name the tensor."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import numpy as np

from ferroquant.errors import DTypeError, EmptyInputError, QuantError

_CONVERTED = (np.dtype(np.float16), np.dtype(np.float64))


def as_f32(x: object, what: str = "x", allow_empty: bool = False) -> np.ndarray:
    """``x`` as a C-contiguous float32 array: no copy for contiguous float32, one conversion for float16/64."""
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype == np.float32:
        a = np.ascontiguousarray(a)
    elif a.dtype in _CONVERTED:
        a = np.ascontiguousarray(a, dtype=np.float32)
    else:
        raise DTypeError(f"{what} must be float32, float16 or float64, got {a.dtype}")
    if a.size == 0 and not allow_empty:
        raise EmptyInputError(f"{what} is empty (shape {a.shape})")
    return a


def per_channel(v: object, dtype: type, what: str) -> np.ndarray:
    """A scalar or 1-D sequence of per-channel values as a contiguous 1-D array of ``dtype``."""
    a = np.asarray(v)
    if a.ndim > 1:
        a = a.reshape(-1)
    if dtype is np.int32 and a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise DTypeError(f"{what} must hold integers, got {a}")
    return np.ascontiguousarray(np.atleast_1d(a), dtype=dtype)


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
