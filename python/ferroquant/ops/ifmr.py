"""IFMR (spec §3): percentile initialisation, then the clip search, on raw data or on a histogram."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ferroquant import _native
from ferroquant._arrays import as_f32, int_param, named
from ferroquant.errors import DTypeError, ShapeError
from ferroquant.ops._common import ArrayLike
from ferroquant.ops.histogram import _hist
from ferroquant.ops.types import Histogram, IfmrOptions, IfmrResult

DEFAULT = IfmrOptions()


def _options(o: object) -> IfmrOptions:
    if not isinstance(o, IfmrOptions):
        raise DTypeError(f"options must be a ferroquant.ops.IfmrOptions, got {type(o).__name__}")
    return o


def ifmr(x: ArrayLike, options: IfmrOptions = DEFAULT, zeros: int = 0) -> IfmrResult:
    """IFMR on the raw data (flattened) and ``zeros`` more values of 0 (left out of ``x`` by
    :func:`ifmr_store`; the result is that of the data with them): exact percentiles, then the search. Ctrl-C
    interrupts it."""
    return _native.ifmr(as_f32(x, "x", allow_empty=True), _options(options), int_param(zeros, "zeros", 0))


def ifmr_many(xs: Sequence[ArrayLike], options: Sequence[IfmrOptions], zeros: Sequence[int]) -> List[IfmrResult]:
    """:func:`ifmr` of each ``(xs[i], options[i], zeros[i])`` in one native call, in parallel across the tensors
    (and within large ones); each result is the one :func:`ifmr` gives alone."""
    if not len(xs) == len(options) == len(zeros):
        raise ShapeError(f"ifmr_many: {len(xs)} arrays, {len(options)} options and {len(zeros)} zero counts")
    arrays = [as_f32(x, f"xs[{i}]", allow_empty=True) for i, x in enumerate(xs)]
    opts = [_options(o) for o in options]
    counts = [int_param(z, f"zeros[{i}]", 0) for i, z in enumerate(zeros)]
    return list(_native.ifmr_many(arrays, opts, counts))


def ifmr_store(buf: np.ndarray, offset: int, x: ArrayLike, name: Optional[str] = None) -> Tuple[int, int]:
    """Copy the non-zero values of ``x`` (flattened) into the float32 array ``buf`` from ``offset`` on, in order,
    in one pass that also checks them (NaN/Inf raise naming the flat index; nothing is written then); returns
    ``(written, zeros)``. A zero adds nothing to any IFMR candidate's error, so a calibrator stores only the rest
    and counts the zeros (:func:`ifmr`'s ``zeros``)."""
    with named(name):
        if not (isinstance(buf, np.ndarray) and buf.dtype == np.float32 and buf.ndim == 1):
            raise DTypeError("buf must be a 1-D float32 array")
        return _native.ifmr_store(buf, int_param(offset, "offset", 0), as_f32(x, "x", allow_empty=True))


def ifmr_histogram(hist: Histogram, x: Optional[ArrayLike] = None, options: IfmrOptions = DEFAULT) -> IfmrResult:
    """IFMR from a histogram (§3.5): percentiles from the cumulative counts; candidate losses on ``x`` when
    given, else on the bin centres weighted by the counts (no raw data needed)."""
    xs = None if x is None else as_f32(x, "x", allow_empty=True)
    return _native.ifmr_histogram(_hist(hist), xs, _options(options))

__all__ = ["ifmr", "ifmr_histogram", "ifmr_many", "ifmr_store"]
