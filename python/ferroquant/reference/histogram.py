"""Specifies rust/ferroquant-core/src/histogram.rs (spec §4.1, decisions 7 and 8).

The state is ``(counts: uint64[nbins], lo, hi)``. Bin positions are computed in float64 as
``pos = (x - lo) * (nbins / (hi - lo))``, clamped to ``[0, nbins - 1]`` and truncated; bins narrower than
FLT_EPSILON (constant data) put everything in bin ``nbins // 2``. Counts are identical to the native ones.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ferroquant.errors import EmptyInputError, NonFiniteError, ParameterError, ShapeError
from ferroquant.ops.types import Histogram
from ferroquant.reference._common import FLT_EPSILON

MAX_BINS = 1 << 20
EPS = float(FLT_EPSILON)


class Grid:
    """``[lo, hi]`` split into ``n`` bins, with the float64 constants of the bin formula."""

    def __init__(self, lo: float, hi: float, n: int) -> None:
        self.lo = float(np.float32(lo))
        span = float(np.float32(hi)) - self.lo
        self.width, self.inv, self.last, self.n = span / n, n / span if span else np.inf, float(n - 1), n

    @property
    def constant(self) -> bool:
        return not self.width >= EPS

    def bin(self, v: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            p = (np.asarray(v, np.float64) - self.lo) * self.inv
        p = np.where(p > 0.0, p, 0.0)
        return np.where(p < self.last, p, self.last).astype(np.int64)

    def edge(self, k: np.ndarray) -> np.ndarray:
        return self.lo + np.asarray(k).astype(np.float64) * self.width


def check_nbins(nbins: int) -> None:
    if not (2 <= nbins <= MAX_BINS and nbins & (nbins - 1) == 0):
        raise ParameterError(f"invalid parameter nbins: must be a power of two in [2, {MAX_BINS}], got {nbins}")


def batch_range(x: np.ndarray, drop_nonfinite: bool) -> Optional[tuple[np.float32, np.float32]]:
    """Specifies histogram.rs::batch_range: (min, max), or None when no finite value."""
    x = np.asarray(x, np.float32).reshape(-1)
    finite = np.isfinite(x)
    if not drop_nonfinite and not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise NonFiniteError(f"input contains a non-finite value ({x[i]}) at flat index {i}")
    x = x[finite]
    return (x.min(), x.max()) if x.size else None


def _add_batch(x: np.ndarray, g: Grid, drop_nonfinite: bool, dst: np.ndarray) -> None:
    x = np.asarray(x, np.float32).reshape(-1)
    if drop_nonfinite:
        x = x[np.isfinite(x)]
    if g.constant:
        dst[g.n // 2] += np.uint64(x.size)
    else:
        dst += np.bincount(g.bin(x), minlength=g.n).astype(np.uint64)


def _rebin_into(src: np.ndarray, lo: float, hi: float, g: Grid, hi_new: float, dst: np.ndarray) -> None:
    """Count-preserving re-binning of ``src`` over ``[lo, hi]`` onto grid ``g`` (spec §4.1)."""
    if abs(float(np.float32(lo)) - g.lo) <= EPS and abs(float(np.float32(hi)) - float(np.float32(hi_new))) <= EPS:
        dst += src
        return
    if g.constant:
        dst[g.n // 2] += src.sum(dtype=np.uint64)
        return
    old = Grid(lo, hi, src.size)
    k = np.flatnonzero(src)
    c = src[k]
    a = old.edge(k)
    i, j = g.bin(a), g.bin(a + old.width)
    with np.errstate(all="ignore"):  # a zero-width old bin never splits (i == j)
        ci = np.floor(c.astype(np.float64) * ((g.edge(i + 1) - a) / old.width))
    ci = np.where(i == j, c, np.minimum(np.clip(np.nan_to_num(ci), 0.0, 1.8e19).astype(np.uint64), c))
    np.add.at(dst, i, ci)
    np.add.at(dst, j, c - ci)


def histogram_build(x: np.ndarray, nbins: int = 4096, drop_nonfinite: bool = False) -> Histogram:
    """Specifies histogram.rs::Histogram::build."""
    check_nbins(nbins)
    r = batch_range(x, drop_nonfinite)
    if r is None:
        raise EmptyInputError("input is empty: no finite value to build a histogram from")
    counts = np.zeros(nbins, np.uint64)
    _add_batch(x, Grid(r[0], r[1], nbins), drop_nonfinite, counts)
    return Histogram(counts, float(r[0]), float(r[1]))


def _check_state(counts: np.ndarray, lo: float, hi: float) -> np.ndarray:
    counts = np.asarray(counts, np.uint64)
    check_nbins(counts.size)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise NonFiniteError(f"range [{lo}, {hi}] is not finite")
    if lo > hi:
        raise ParameterError(f"invalid parameter range: lo {lo} > hi {hi}")
    if sum(int(c) for c in counts) >= 1 << 64:
        raise ParameterError("invalid parameter counts: total count overflows u64")
    return counts


def histogram_observe(
    hist: Optional[Histogram], x: np.ndarray, nbins: Optional[int] = None, drop_nonfinite: bool = False,
    zeros: int = 0
) -> Histogram:
    """Specifies histogram.rs::Histogram::observe (and ``build`` when ``hist`` is None); ``zeros``:
    ``observe_with_zeros``, the batch ``x`` with that many values of 0 appended."""
    if zeros:
        x = np.concatenate([np.asarray(x, np.float32).reshape(-1), np.zeros(int(zeros), np.float32)])
    if hist is None:
        return histogram_build(x, 4096 if nbins is None else nbins, drop_nonfinite)
    counts = hist.counts
    if nbins is not None and nbins != counts.size:
        raise ShapeError(f"shape mismatch for counts (nbins): expected {nbins}, got {counts.size}")
    lo, hi = float(np.float32(hist.lo)), float(np.float32(hist.hi))
    counts = _check_state(counts, lo, hi)
    r = batch_range(x, drop_nonfinite)
    if r is None:
        return Histogram(counts.copy(), lo, hi)
    new_lo, new_hi = min(lo, float(r[0])), max(hi, float(r[1]))
    g = Grid(new_lo, new_hi, counts.size)
    out = np.zeros(counts.size, np.uint64)
    _rebin_into(counts, lo, hi, g, new_hi, out)
    _add_batch(x, g, drop_nonfinite, out)
    return Histogram(out, new_lo, new_hi)


def histogram_observe_many(hists: Sequence[Optional[Histogram]], xs: Sequence[np.ndarray],
                           nbins: Optional[int] = None, drop_nonfinite: bool = False) -> List[Histogram]:
    """Specifies the binding's ``histogram_observe_many``: one ``histogram_observe`` per pair, in order."""
    if len(hists) != len(xs):
        raise ShapeError(f"shape mismatch for batches (one per histogram): expected {len(hists)}, got {len(xs)}")
    return [histogram_observe(h, x, nbins, drop_nonfinite) for h, x in zip(hists, xs)]


def histogram_merge(a: Histogram, b: Histogram) -> Histogram:
    """Specifies histogram.rs::Histogram::merge: both sides re-binned onto the union of the ranges."""
    counts1, lo1, hi1, counts2, lo2, hi2 = a.counts, a.lo, a.hi, b.counts, b.lo, b.hi
    c1, c2 = _check_state(counts1, lo1, hi1), _check_state(counts2, lo2, hi2)
    if c1.size != c2.size:
        raise ShapeError(f"shape mismatch for nbins of merged histogram: expected {c1.size}, got {c2.size}")
    if sum(int(c) for c in c1) + sum(int(c) for c in c2) >= 1 << 64:
        raise ParameterError("invalid parameter counts: total count overflows u64")
    lo, hi = min(float(np.float32(lo1)), float(np.float32(lo2))), max(float(np.float32(hi1)), float(np.float32(hi2)))
    g = Grid(lo, hi, c1.size)
    out = np.zeros(c1.size, np.uint64)
    _rebin_into(c1, lo1, hi1, g, hi, out)
    _rebin_into(c2, lo2, hi2, g, hi, out)
    return Histogram(out, lo, hi)

__all__ = ["histogram_build", "histogram_merge", "histogram_observe", "histogram_observe_many"]
