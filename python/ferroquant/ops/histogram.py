"""Histogram calibration kernels: the streaming histogram (spec §4.1), HFMG (spec §4), and the percentile and
KL (TensorRT entropy) baselines. Histograms are :class:`Histogram` values; the ``*_many`` forms work on many
tensors in one native call (in parallel across them, with the results of one call each)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ferroquant import _native
from ferroquant._arrays import as_f32, check_bits, int_param
from ferroquant.errors import DTypeError, ShapeError
from ferroquant.ops._common import ArrayLike
from ferroquant.ops.types import Clip, HfmgSearch, Histogram

_BIG = 1 << 32


def _hist(h: object, what: str = "hist") -> Histogram:
    if not isinstance(h, Histogram):
        raise DTypeError(f"{what} must be a ferroquant.ops.Histogram, got {type(h).__name__}")
    return h


def _nbins(nbins: Optional[int]) -> Optional[int]:
    return None if nbins is None else int_param(nbins, "nbins", 0, _BIG)


def histogram_observe(hist: Optional[Histogram], x: ArrayLike, nbins: Optional[int] = None,
                      drop_nonfinite: bool = False, zeros: int = 0) -> Histogram:
    """Add batch ``x`` to ``hist`` (the range grows to cover it; old counts re-binned exactly); with ``hist``
    None, a new histogram of ``x`` over its own range with ``nbins`` bins (4096 when None). ``zeros``: that
    many values of 0 more in the batch, as if appended to ``x`` (an exact-IFMR calibrator counts its zeros
    rather than storing them)."""
    h = None if hist is None else _hist(hist)
    return _native.histogram_observe(h, as_f32(x, "x", allow_empty=True), _nbins(nbins), bool(drop_nonfinite),
                                     int_param(zeros, "zeros", 0, _BIG * _BIG - 1))


def histogram_observe_many(hists: Sequence[Optional[Histogram]], xs: Sequence[ArrayLike],
                           nbins: Optional[int] = None, drop_nonfinite: bool = False) -> List[Histogram]:
    """:func:`histogram_observe` of each ``(hists[i], xs[i])`` in one native call, in parallel across them."""
    if len(hists) != len(xs):
        raise ShapeError(f"histogram_observe_many: {len(hists)} histograms but {len(xs)} batches")
    hs = [None if h is None else _hist(h, f"hists[{i}]") for i, h in enumerate(hists)]
    arrays = [as_f32(x, f"xs[{i}]", allow_empty=True) for i, x in enumerate(xs)]
    return list(_native.histogram_observe_many(hs, arrays, _nbins(nbins), bool(drop_nonfinite)))


def histogram_merge(a: Histogram, b: Histogram) -> Histogram:
    """Both histograms re-binned onto the union of their ranges and added (the result does not depend on the
    order)."""
    return _native.histogram_merge(_hist(a, "a"), _hist(b, "b"))


def hfmg_candidates(hist: Histogram) -> tuple[np.ndarray, np.ndarray]:
    """AMCT's candidate truncations ``(left, right)`` (spec §4.2) as two int64 arrays of bin indices."""
    return _native.hfmg_candidates(_hist(hist))


def hfmg_losses(hist: Histogram, bits: int = 8) -> np.ndarray:
    """The L2 loss of every HFMG candidate, in candidate order (float64; from prefix sums)."""
    return _native.hfmg_losses(_hist(hist), check_bits(bits))


def hfmg_search(hist: Histogram, bits: int = 8, symmetric: bool = False, refine: bool = True) -> HfmgSearch:
    """HFMG (spec §4): the candidate with the smallest loss; with ``refine``, ferroquant's refinement of both
    bounds (``refine=False`` is AMCT exactly). Ctrl-C interrupts it."""
    return _native.hfmg_search(_hist(hist), check_bits(bits), bool(symmetric), bool(refine))


def hfmg_search_many(hists: Sequence[Histogram], bits: int = 8, symmetric: bool = False,
                     refine: bool = True) -> List[HfmgSearch]:
    """:func:`hfmg_search` of each histogram in one native call, in parallel across them (and within each)."""
    hs = [_hist(h, f"hists[{i}]") for i, h in enumerate(hists)]
    return list(_native.hfmg_search_many(hs, check_bits(bits), bool(symmetric), bool(refine)))


def percentile_clip(hist: Histogram, percentile: float = 0.99999, bits: int = 8, symmetric: bool = True) -> Clip:
    """The clip at ``percentile`` (a fraction in (0, 1], like IFMR's) of the mass: on |x| when ``symmetric``,
    else ``(1 - percentile) / 2`` cut from each side."""
    return _native.percentile_clip(_hist(hist), float(percentile), check_bits(bits), bool(symmetric))


def kl_divergences(hist: Histogram, num_quantized_bins: int = 128) -> np.ndarray:
    """KL divergence of every entropy candidate ``i = nq..=nbins`` of the folded |x| histogram."""
    return _native.kl_divergences(_hist(hist), int_param(num_quantized_bins, "num_quantized_bins", 0, _BIG))


def kl_search(hist: Histogram, bits: int = 8, symmetric: bool = True, num_quantized_bins: int = 128) -> Clip:
    """TensorRT's entropy calibration: the |x| threshold with the smallest KL(P||Q) (its ``loss``). At most
    8192 bins (the search is quadratic). Ctrl-C interrupts it."""
    return _native.kl_search(_hist(hist), check_bits(bits), bool(symmetric),
                             int_param(num_quantized_bins, "num_quantized_bins", 0, _BIG))

__all__ = [
    "hfmg_candidates", "hfmg_losses", "hfmg_search", "hfmg_search_many", "histogram_merge", "histogram_observe",
    "histogram_observe_many", "kl_divergences", "kl_search", "percentile_clip"
]
