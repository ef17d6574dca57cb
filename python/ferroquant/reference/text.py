"""Specifies rust/ferroquant-core/src/text.rs."""

from __future__ import annotations

import math

import numpy as np

from ferroquant.errors import NonFiniteError


def json_floats(x) -> str:
    """Specifies text.rs::json_floats: ``[a, b, c]`` with each value as Python's ``repr`` writes it."""
    values = np.asarray(x, np.float64).ravel().tolist()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise NonFiniteError(f"non-finite value {v} at index {i}")
    return "[" + ", ".join(map(float.__repr__, values)) + "]"


__all__ = ["json_floats"]
