"""Specifies rust/ferroquant-core/src/metrics.rs."""

from __future__ import annotations

import numpy as np

from ferroquant.errors import EmptyInputError, NonFiniteError, ShapeError
from ferroquant.ops.types import Comparison


def compare(reference, test) -> Comparison:
    """Specifies metrics.rs::compare: sum r^2, sum t^2, sum r*t, sum (r-t)^2, max |r-t| in float64."""
    r = np.asarray(reference, np.float32).reshape(-1).astype(np.float64)
    t = np.asarray(test, np.float32).reshape(-1).astype(np.float64)
    if r.size != t.size:
        raise ShapeError(f"shape mismatch for test: expected {r.size}, got {t.size}")
    if r.size == 0:
        raise EmptyInputError("input is empty: nothing to compare")
    for x in (r, t):
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            raise NonFiniteError(f"input contains a non-finite value ({x[bad[0]]}) at flat index {bad[0]}")
    d = r - t
    return Comparison(float(r @ r), float(t @ t), float(r @ t), float(d @ d), float(np.abs(d).max()), int(r.size))

__all__ = ["compare"]
