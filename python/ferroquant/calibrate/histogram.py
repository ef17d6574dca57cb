"""Calibrators on one streaming histogram: HFMG (spec §4), and the baselines users know (MinMax, Percentile,
KL/entropy as in TensorRT). Memory is O(num_of_bins) whatever the number of batches (decision 7); any of them
merges with any other (same bin count), and a saved histogram can be re-searched with another algorithm or bit
width without new data (decision 8)."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ferroquant import ops
from ferroquant._arrays import int_param, named
from ferroquant.calibrate.base import (
    CalibResult,
    batch,
    check_bits,
    check_nonfinite,
    fraction_outside,
    require_state,
    state_field,
)
from ferroquant.errors import EmptyInputError, ParameterError
from ferroquant.ops.types import Clip, HfmgSearch, Histogram

ALGORITHMS = ("hfmg", "minmax", "percentile", "entropy")
_DEFAULT_SYMMETRIC = {"hfmg": False, "minmax": False, "percentile": True, "entropy": True}
#: Largest bin count per algorithm: HFMG's search scales (prefix sums, O(2^bits) per candidate) and the others
#: are linear, but the entropy search is quadratic in the bins (about a second at 8192).
MAX_BINS = {"hfmg": 1 << 20, "minmax": 1 << 20, "percentile": 1 << 20, "entropy": 1 << 13}


class HistogramState:
    """A streaming histogram held as a :class:`Histogram` (``None`` before the first batch), shared by the
    calibrators that keep one. Needs ``name``, ``num_of_bins`` and ``_k`` (the kernel backend) on the
    instance."""

    name: str
    num_of_bins: int
    _k: ModuleType
    _hist: Optional[Histogram] = None

    @property
    def counts(self) -> Optional[np.ndarray]:
        return None if self._hist is None else self._hist.counts

    @property
    def lo(self) -> float:
        return 0.0 if self._hist is None else self._hist.lo

    @property
    def hi(self) -> float:
        return 0.0 if self._hist is None else self._hist.hi

    def _hist_observe(self, flat: np.ndarray, drop_nonfinite: bool, zeros: int = 0) -> None:
        """Add ``flat`` and ``zeros`` more values of 0 (one batch) to the histogram."""
        if flat.size == 0 and zeros == 0:
            return
        with named(self.name):
            self._hist = self._k.histogram_observe(self._hist, flat, self.num_of_bins, drop_nonfinite, zeros)

    def _hist_merge(self, other: "HistogramState") -> None:
        if other._hist is None:
            return
        if self._hist is None:
            self._hist = Histogram(other._hist.counts.copy(), other._hist.lo, other._hist.hi)
            return
        with named(self.name):
            self._hist = self._k.histogram_merge(self._hist, other._hist)

    def start_grid(self, lo: float, hi: float) -> None:
        """Start an empty histogram on the grid ``[lo, hi]`` (before the first batch): batches inside it are
        counted bin by bin on that grid, and histograms started on the same grid merge by adding counts, so
        shards observed apart merge into exactly the histogram of one run. Data outside still widens it."""
        if self._hist is not None:
            raise ParameterError(f"{self.name}: start_grid before the first batch")
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ParameterError(f"{self.name}: start_grid needs finite lo <= hi, got [{lo}, {hi}]")
        self._hist = Histogram(np.zeros(self.num_of_bins, np.uint64), float(np.float32(lo)), float(np.float32(hi)))

    def _load_hist(self, d: Dict[str, Any]) -> None:
        """The histogram of a saved state (``counts``, ``lo``, ``hi``), checked: non-negative integer counts,
        ``num_of_bins`` of them."""
        if d["counts"] is None:
            return
        with named(self.name):
            h = state_field(d, "counts", lambda c: Histogram(np.asarray(c), np.float32(d["lo"]).item(),
                                                            np.float32(d["hi"]).item()))
        if h.nbins != self.num_of_bins:
            raise ParameterError(f"{self.name}: state has {h.nbins} counts, expected {self.num_of_bins}")
        self._hist = h


class HistogramCalibrator(HistogramState):
    """Streams batches into a histogram whose range grows to cover all data (exact count-preserving re-binning),
    then searches it with ``algorithm``.

    ``percentile`` (the percentile method's fraction of the mass to keep, in (0, 1], like IFMR's) and
    ``num_quantized_bins`` (entropy) are the algorithms' parameters. ``refine`` (HFMG, default True) refines
    AMCT's winner by coordinate scans of both bounds under the same loss; ``refine=False`` is AMCT's HFMG
    exactly. ``backend="reference"`` runs the NumPy twins (for benchmarks and tests).
    """

    def __init__(self, name: str = "tensor", algorithm: str = "hfmg", num_of_bins: int = 4096, bits: int = 8,
                 symmetric: Optional[bool] = None, nonfinite: str = "error", percentile: float = 0.99999,
                 num_quantized_bins: int = 128, backend: str = "native", refine: bool = True) -> None:
        if algorithm not in ALGORITHMS:
            raise ParameterError(f"{name}: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if backend not in ops.BACKENDS:
            raise ParameterError(f"{name}: backend must be one of {ops.BACKENDS}, got {backend!r}")
        self.name, self.algorithm = str(name), algorithm
        self.bits = check_bits(bits)
        nb = int_param(num_of_bins, f"{name}: num_of_bins")
        top = MAX_BINS[algorithm]
        if not (1 << self.bits) <= nb <= top or nb & (nb - 1):
            raise ParameterError(f"{name}: num_of_bins must be a power of two in [2^bits = {1 << self.bits}, {top}] "
                                 f"for {algorithm}, got {nb}")
        if not 0.0 < float(percentile) <= 1.0:
            raise ParameterError(f"{name}: percentile must be a fraction in (0, 1] (0.99999 keeps 99.999% of the "
                                 f"mass), got {percentile}")
        self.num_of_bins = nb
        self.symmetric = _DEFAULT_SYMMETRIC[algorithm] if symmetric is None else bool(symmetric)
        self.nonfinite = check_nonfinite(nonfinite)
        self.percentile = float(percentile)
        self.num_quantized_bins = int_param(num_quantized_bins, f"{name}: num_quantized_bins", 2, 1 << 20)
        self.backend, self.refine = backend, bool(refine)
        self._k = ops.backend(backend)
        self._hist = None
        self.batches = 0

    # -- streaming ---------------------------------------------------------------------------------------
    def observe(self, x: Any) -> None:
        """Add one batch (any shape, float16/32/64). Holds no reference to ``x`` afterwards."""
        self._hist_observe(batch(x, self.name), self.nonfinite == "drop")
        self.batches += 1

    def merge(self, other: "HistogramCalibrator") -> None:
        """Fold another histogram calibrator (same bin count, any algorithm) into this one."""
        if not isinstance(other, HistogramCalibrator):
            raise ParameterError(f"{self.name}: cannot merge a {type(other).__name__} into a histogram calibrator")
        if other.num_of_bins != self.num_of_bins:
            raise ParameterError(f"{self.name}: cannot merge {other.num_of_bins} bins into {self.num_of_bins}")
        self._hist_merge(other)
        self.batches += other.batches

    # -- results ---------------------------------------------------------------------------------------
    def histogram(self) -> Histogram:
        """The histogram of everything observed."""
        return self._require_data()

    def observed_range(self) -> Tuple[float, float]:
        """Min and max of everything observed (the histogram's range)."""
        h = self._require_data()
        return h.lo, h.hi

    def clipped_fraction(self, clip_min: float, clip_max: float) -> float:
        """Share of the observed values outside ``[clip_min, clip_max]`` (a bin counts as clipped when its
        centre is outside)."""
        return fraction_outside(self._require_data(), clip_min, clip_max)

    def _require_data(self) -> Histogram:
        if self._hist is None or self._hist.total == 0:
            raise EmptyInputError(f"calibrator {self.name!r} ({self.algorithm}) has observed no data: "
                                  "run the model on calibration batches first")
        return self._hist

    def _details(self) -> Dict[str, Any]:
        return {"batches": self.batches, "num_of_bins": self.num_of_bins, "range": [float(self.lo), float(self.hi)]}

    def _hfmg_result(self, s: HfmgSearch) -> CalibResult:
        """The calibration result of an HFMG search of this calibrator's histogram (shared with
        :func:`ferroquant.calibrate.search_all`)."""
        d = self._details()
        d.update(loss=float(s.loss), candidate=int(s.index), refine=self.refine, refined=bool(s.refined))
        return CalibResult(s.scale, s.zero_point, s.clip_min, s.clip_max, self.bits, self.symmetric, "hfmg", d)

    def qparams(self) -> CalibResult:
        h, k, b, sym = self._require_data(), self._k, self.bits, self.symmetric
        with named(self.name):
            if self.algorithm == "hfmg":
                return self._hfmg_result(k.hfmg_search(h, b, sym, self.refine))
            d = self._details()
            if self.algorithm == "minmax":
                q = k.qparams_from_range(h.lo, h.hi, b, sym)
                c = Clip(h.lo, h.hi, q.scale, q.zero_point)
            elif self.algorithm == "percentile":
                c = k.percentile_clip(h, self.percentile, b, sym)
                d.update(percentile=self.percentile)
            else:
                c = k.kl_search(h, b, sym, self.num_quantized_bins)
                d.update(kl=float("nan") if c.loss is None else c.loss, num_quantized_bins=self.num_quantized_bins)
        return CalibResult(c.scale, c.zero_point, c.clip_min, c.clip_max, b, sym, self.algorithm, d)

    def with_algorithm(self, algorithm: str, bits: Optional[int] = None, symmetric: Optional[bool] = None,
                       **params: Any) -> "HistogramCalibrator":
        """The same histogram searched another way (no new data needed)."""
        d = self.state_dict()
        d.update(algorithm=algorithm, bits=self.bits if bits is None else bits, symmetric=symmetric, **params)
        return HistogramCalibrator.from_state_dict(d, self.backend)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Plain numbers and one uint64 array: saveable with numpy (np.savez) or JSON (counts as a list)."""
        return {"kind": "histogram", "name": self.name, "algorithm": self.algorithm,
                "num_of_bins": self.num_of_bins, "bits": self.bits, "symmetric": self.symmetric,
                "nonfinite": self.nonfinite, "percentile": self.percentile,
                "num_quantized_bins": self.num_quantized_bins, "refine": self.refine, "batches": self.batches,
                "lo": float(self.lo), "hi": float(self.hi),
                "counts": None if self.counts is None else self.counts.copy()}

    @classmethod
    def from_state_dict(cls, d: Dict[str, Any], backend: str = "native") -> "HistogramCalibrator":
        require_state(d, "histogram", ("name", "algorithm", "num_of_bins", "bits", "lo", "hi", "counts"))
        p = float(d.get("percentile", 0.99999))
        if 1.0 < p <= 100.0:  # states saved before percentiles became fractions held a percent
            p /= 100.0
        cal = cls(d["name"], d["algorithm"], d["num_of_bins"], d["bits"], d.get("symmetric"),
                  d.get("nonfinite", "error"), p, d.get("num_quantized_bins", 128), backend, d.get("refine", True))
        cal._load_hist(d)
        cal.batches = int_param(d.get("batches", 0), f"{cal.name}: state 'batches'", 0)
        return cal


def HFMGCalibrator(name: str = "tensor", **kw: Any) -> HistogramCalibrator:  # noqa: N802 - a class-like factory
    """HFMG (spec §4): histogram, candidate truncations, global L2 argmin. Asymmetric by default."""
    return HistogramCalibrator(name, "hfmg", **kw)


def MinMaxCalibrator(name: str = "tensor", **kw: Any) -> HistogramCalibrator:  # noqa: N802
    return HistogramCalibrator(name, "minmax", **kw)


def PercentileCalibrator(name: str = "tensor", **kw: Any) -> HistogramCalibrator:  # noqa: N802
    return HistogramCalibrator(name, "percentile", **kw)


def EntropyCalibrator(name: str = "tensor", **kw: Any) -> HistogramCalibrator:  # noqa: N802
    return HistogramCalibrator(name, "entropy", **kw)
