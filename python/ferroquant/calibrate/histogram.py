"""Calibrators on one streaming histogram: HFMG (spec §4), and the baselines users know (MinMax, Percentile,
KL/entropy as in TensorRT). Memory is O(num_of_bins) whatever the number of batches (decision 7); any of them
merges with any other (same bin count), and a saved histogram can be re-searched with another algorithm or bit
width without new data (decision 8)."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Dict, Optional

import numpy as np

from ferroquant import _native, reference
from ferroquant._arrays import named
from ferroquant.calibrate.base import CalibResult, batch, check_bits, check_nonfinite, require_state
from ferroquant.errors import EmptyInputError, ParameterError

BACKENDS: Dict[str, ModuleType] = {"native": _native, "reference": reference}  # type: ignore[dict-item]
ALGORITHMS = ("hfmg", "minmax", "percentile", "entropy")
_DEFAULT_SYMMETRIC = {"hfmg": False, "minmax": False, "percentile": True, "entropy": True}


class HistogramState:
    """A streaming histogram held as plain state (``counts``, ``lo``, ``hi``), shared by the calibrators that
    keep one. Needs ``name``, ``num_of_bins`` and ``_k`` (the kernel backend) on the instance."""

    name: str
    num_of_bins: int
    _k: ModuleType
    counts: Optional[np.ndarray] = None
    lo: float = 0.0
    hi: float = 0.0

    def _hist_observe(self, flat: np.ndarray, drop_nonfinite: bool) -> None:
        if flat.size == 0:
            return
        with named(self.name):
            self.counts, self.lo, self.hi = self._k.histogram_observe(
                self.counts, self.lo, self.hi, flat, None if self.counts is not None else self.num_of_bins,
                drop_nonfinite)

    def _hist_merge(self, other: "HistogramState") -> None:
        if other.counts is None:
            return
        if self.counts is None:
            self.counts, self.lo, self.hi = other.counts.copy(), other.lo, other.hi
            return
        with named(self.name):
            self.counts, self.lo, self.hi = self._k.histogram_merge(
                self.counts, self.lo, self.hi, other.counts, other.lo, other.hi)


class HistogramCalibrator(HistogramState):
    """Streams batches into a histogram whose range grows to cover all data (exact count-preserving re-binning),
    then searches it with ``algorithm``.

    ``percentile`` (for the percentile method, in percent) and ``num_quantized_bins`` (entropy) are the
    algorithms' parameters. ``refine`` (HFMG, default True) refines AMCT's winner by coordinate scans of both
    bounds under the same loss; ``refine=False`` is AMCT's HFMG exactly. ``backend="reference"`` runs the NumPy twins (for benchmarks and tests).
    """

    def __init__(self, name: str = "tensor", algorithm: str = "hfmg", num_of_bins: int = 4096, bits: int = 8,
                 symmetric: Optional[bool] = None, nonfinite: str = "error", percentile: float = 99.999,
                 num_quantized_bins: int = 128, backend: str = "native", refine: bool = True) -> None:
        if algorithm not in ALGORITHMS:
            raise ParameterError(f"{name}: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if backend not in BACKENDS:
            raise ParameterError(f"{name}: backend must be one of {tuple(BACKENDS)}, got {backend!r}")
        self.name, self.algorithm = str(name), algorithm
        self.bits = check_bits(bits)
        nb = int(num_of_bins)
        if nb < (1 << self.bits) or nb & (nb - 1):
            raise ParameterError(f"{name}: num_of_bins must be a power of two >= 2^bits = {1 << self.bits}, got {nb}")
        if not 0.0 < float(percentile) <= 100.0:
            raise ParameterError(f"{name}: percentile must be in (0, 100], got {percentile}")
        self.num_of_bins = nb
        self.symmetric = _DEFAULT_SYMMETRIC[algorithm] if symmetric is None else bool(symmetric)
        self.nonfinite = check_nonfinite(nonfinite)
        self.percentile, self.num_quantized_bins = float(percentile), int(num_quantized_bins)
        self.backend, self.refine = backend, bool(refine)
        self._k = BACKENDS[backend]
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
    def _require_data(self) -> np.ndarray:
        if self.counts is None or int(self.counts.sum()) == 0:
            raise EmptyInputError(f"calibrator {self.name!r} ({self.algorithm}) has observed no data: "
                                  "run the model on calibration batches first")
        return self.counts

    def qparams(self) -> CalibResult:
        c, k, b, sym = self._require_data(), self._k, self.bits, self.symmetric
        details: Dict[str, Any] = {"batches": self.batches, "num_of_bins": self.num_of_bins,
                                   "range": [float(self.lo), float(self.hi)]}
        with named(self.name):
            if self.algorithm == "hfmg":
                lo, hi, s, z, loss, idx, moved = k.hfmg_search(c, self.lo, self.hi, b, sym, self.refine)
                details.update(loss=float(loss), candidate=int(idx), refine=self.refine, refined=bool(moved))
            elif self.algorithm == "minmax":
                s, z = k.qparams_from_range(self.lo, self.hi, b, sym)
                lo, hi = self.lo, self.hi
            elif self.algorithm == "percentile":
                lo, hi, s, z = k.percentile_clip(c, self.lo, self.hi, self.percentile, b, sym)
                details.update(percentile=self.percentile)
            else:
                lo, hi, s, z, kl = k.kl_search(c, self.lo, self.hi, b, sym, self.num_quantized_bins)
                details.update(kl=float(kl), num_quantized_bins=self.num_quantized_bins)
        return CalibResult(float(s), int(z), float(lo), float(hi), b, sym, self.algorithm, details)

    def with_algorithm(self, algorithm: str, bits: Optional[int] = None, symmetric: Optional[bool] = None,
                       **params: Any) -> "HistogramCalibrator":
        """The same histogram searched another way (no new data needed)."""
        d = self.state_dict()
        d.update(algorithm=algorithm, bits=self.bits if bits is None else bits, symmetric=symmetric, **params)
        return HistogramCalibrator.from_state_dict(d)

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
        cal = cls(d["name"], d["algorithm"], d["num_of_bins"], d["bits"], d.get("symmetric"),
                  d.get("nonfinite", "error"), d.get("percentile", 99.999), d.get("num_quantized_bins", 128),
                  backend, d.get("refine", True))
        if d["counts"] is not None:
            counts = np.ascontiguousarray(np.asarray(d["counts"], dtype=np.uint64))
            if counts.shape != (cal.num_of_bins,):
                raise ParameterError(f"{cal.name}: state has {counts.size} counts, expected {cal.num_of_bins}")
            cal.counts, cal.lo, cal.hi = counts, np.float32(d["lo"]).item(), np.float32(d["hi"]).item()
        cal.batches = int(d.get("batches", 0))
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
