"""Specifies rust/ferroquant-core/src/text.rs."""

from __future__ import annotations

import math

from ferroquant._arrays import as_f64_values
from ferroquant.errors import NonFiniteError


def json_floats(x) -> str:
    """Specifies text.rs::json_floats: ``[a, b, c]`` with each value as Python's ``repr`` writes it."""
    values = as_f64_values(x).tolist()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise NonFiniteError(f"non-finite value {v} at index {i}")
    return "[" + ", ".join(map(float.__repr__, values)) + "]"


__all__ = ["json_floats"]
