"""IFMR (spec §3): percentile initialisation, then the clip search, on raw data or on a histogram."""

from __future__ import annotations

from typing import Optional

from ferroquant import _native
from ferroquant._arrays import as_f32
from ferroquant.errors import DTypeError
from ferroquant.ops._common import ArrayLike
from ferroquant.ops.histogram import _hist
from ferroquant.ops.types import Histogram, IfmrOptions, IfmrResult

DEFAULT = IfmrOptions()


def _options(o: object) -> IfmrOptions:
    if not isinstance(o, IfmrOptions):
        raise DTypeError(f"options must be a ferroquant.ops.IfmrOptions, got {type(o).__name__}")
    return o


def ifmr(x: ArrayLike, options: IfmrOptions = DEFAULT) -> IfmrResult:
    """IFMR on the raw data (flattened): exact percentiles, then the search. Ctrl-C interrupts it."""
    return _native.ifmr(as_f32(x, "x", allow_empty=True), _options(options))


def ifmr_histogram(hist: Histogram, x: Optional[ArrayLike] = None, options: IfmrOptions = DEFAULT) -> IfmrResult:
    """IFMR from a histogram (§3.5): percentiles from the cumulative counts; candidate losses on ``x`` when
    given, else on the bin centres weighted by the counts (no raw data needed)."""
    xs = None if x is None else as_f32(x, "x", allow_empty=True)
    return _native.ifmr_histogram(_hist(hist), xs, _options(options))

__all__ = ["ifmr", "ifmr_histogram"]
