"""How closely one array follows another (SQNR, cosine, MSE), in one native pass."""

from __future__ import annotations

from typing import Optional

from ferroquant import _native
from ferroquant._arrays import as_f32, named
from ferroquant.ops._common import ArrayLike
from ferroquant.ops.types import Comparison


def compare(reference: ArrayLike, test: ArrayLike, name: Optional[str] = None) -> Comparison:
    """Compare ``test`` with ``reference`` (same number of elements, any shapes): f64 sums, SQNR, cosine."""
    with named(name):
        return _native.compare(as_f32(reference, "reference"), as_f32(test, "test"))

__all__ = ["compare"]
