"""Numbers as text for the records: a float list written as ``json.dumps`` writes it, natively."""

from __future__ import annotations

from typing import Optional

from ferroquant import _native
from ferroquant._arrays import as_f64_values, named
from ferroquant.ops._common import ArrayLike


def json_floats(x: ArrayLike, name: Optional[str] = None) -> str:
    """``json.dumps([float(v) for v in x.ravel()])``: ``[a, b, c]``, each value as ``repr`` writes it (the
    shortest digits that read back to the same double), about ten times faster than ``repr`` per value.
    Non-finite values raise :class:`~ferroquant.errors.NonFiniteError`, values that are not real numbers
    :class:`~ferroquant.errors.DTypeError`."""
    with named(name):
        return _native.json_floats(as_f64_values(x))


__all__ = ["json_floats"]
