"""IFMR (spec §3) as a calibrator: exact while the stored samples fit a memory budget, then (or by choice)
the histogram percentile mode, which needs O(num_of_bins) memory whatever the number of batches
(decision 7). ``mode="exact"`` raises instead of switching; ``mode="histogram"`` never stores samples."""

from __future__ import annotations

import dataclasses
import mmap
import os
import warnings
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ferroquant import ops
from ferroquant._arrays import int_param, named
from ferroquant.calibrate import base
from ferroquant.calibrate.base import CalibResult
from ferroquant.calibrate.histogram import MAX_BINS, HistogramState
from ferroquant.errors import EmptyInputError, MemoryBudgetError, ParameterError
from ferroquant.ops.types import Histogram, IfmrOptions

MODES = ("auto", "exact", "histogram")
DEFAULT_BUDGET = 256 << 20  # bytes of stored samples per tensor
#: Bins of the histogram built from the stored samples for reports (:meth:`IFMRCalibrator.histogram`).
REPORT_BINS = 4096


def reserve(count: int) -> np.ndarray:
    """``count`` float32 slots, reserved but not touched: the operating system backs only the pages written to.
    A large reservation is an anonymous mapping of its own rather than a NumPy array: NumPy asks the kernel for
    huge pages on large arrays, and a kernel that must compact memory to find them (Linux with transparent huge
    pages on ``madvise``) stalls on the first touch of each 2 MB. MobileNetV2's 630 MB of IFMR samples took
    1.4-2.0 s to store in a new process that way, 0.7-0.8 s with the kernel's default paging (bench_ptq_time).
    The mapping is private: Python's default, a shared one, is backed by shmem, whose faults and unmapping cost
    more (first touch of 630 MB 0.41 -> 0.26 s, unmapping 0.11 -> 0.04 s)."""
    if count * 4 < (64 << 20):
        return np.empty(count, np.float32)
    flags = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    try:
        if None in flags:  # Windows: an anonymous mapping there is private already
            return np.frombuffer(mmap.mmap(-1, count * 4), np.float32)
        # unmapped with the array's last reference
        return np.frombuffer(mmap.mmap(-1, count * 4, flags=flags[0] | flags[1]), np.float32)
    except (OSError, ValueError, OverflowError):
        return np.empty(count, np.float32)


def physical_memory() -> Optional[int]:
    """Bytes of physical memory of this machine (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


class SampleBudget:
    """Bytes of samples that the exact-IFMR calibrators of one model hold together (``total``, raised to
    ``share`` per member). Each member is sure of ``share`` bytes; past it, members take from what the others
    leave, first come first served, so a run whose samples fit in ``total`` stays exact even when some tensors
    are much larger than others (equal shares switched the large tensors of small runs to the histogram
    mode while the small ones left theirs unused)."""

    def __init__(self, total: int, share: int) -> None:
        self.share = int(share)
        self.total = int(total)
        self.held: Dict[str, int] = {}

    def join(self, name: str) -> None:
        self.held.setdefault(name, 0)
        self.total = max(self.total, self.share * len(self.held))

    def request(self, name: str, need: int) -> bool:
        """Whether member ``name`` may hold ``need`` bytes (recorded when it may)."""
        committed = sum(max(v, self.share) for k, v in self.held.items() if k != name)
        if committed + max(need, self.share) > self.total:
            return False
        self.held[name] = need
        return True

    def release(self, name: str) -> None:
        self.held[name] = 0


class IFMRCalibrator(HistogramState):
    """IFMR: percentile initialisation, then a 1-D (or opt-in 2-D) search of the clip ratio minimising the
    quantization MSE, with the window extension of decision 10 (``search_extend=False`` is AMCT exactly)."""

    def __init__(self, name: str = "tensor", bits: int = 8, symmetric: bool = False,
                 max_percentile: float = 0.999999, min_percentile: float = 0.999999,
                 search_range: Tuple[float, float] = (0.7, 1.3), search_step: float = 0.01,
                 search_extend: bool = True, search_2d: bool = False, mode: str = "auto",
                 memory_budget: int = DEFAULT_BUDGET, num_of_bins: int = 4096, nonfinite: str = "error",
                 backend: str = "native", pool: Optional[SampleBudget] = None) -> None:
        if mode not in MODES:
            raise ParameterError(f"{name}: mode must be one of {MODES}, got {mode!r}")
        if backend not in ops.BACKENDS:
            raise ParameterError(f"{name}: backend must be one of {ops.BACKENDS}, got {backend!r}")
        budget = int_param(memory_budget, f"{name}: memory_budget", 1)
        phys = physical_memory()
        if phys is not None and budget > phys:
            raise ParameterError(f"{name}: memory_budget of {budget} bytes is more than this machine's "
                                 f"{phys / 2**30:.1f} GiB of memory")
        nb = int_param(num_of_bins, f"{name}: num_of_bins")
        if not 2 <= nb <= MAX_BINS["hfmg"] or nb & (nb - 1):
            raise ParameterError(f"{name}: num_of_bins must be a power of two in [2, {MAX_BINS['hfmg']}], got {nb}")
        self.name, self.bits, self.symmetric = str(name), base.check_bits(bits), bool(symmetric)
        lo_r, hi_r = search_range
        with named(self.name):
            self.options = IfmrOptions(self.bits, self.symmetric, max_percentile, min_percentile, lo_r, hi_r,
                                       search_step, bool(search_extend), bool(search_2d))
        self.mode, self.memory_budget, self.num_of_bins = mode, budget, nb
        self.nonfinite, self.backend = base.check_nonfinite(nonfinite), backend
        self._k: ModuleType = ops.backend(backend)
        self._hist = None
        self._buf = np.empty(0, np.float32)  # exact mode: the non-zero samples in [0, _n)
        self._n = 0
        self._zeros = 0  # exact mode: samples equal to 0, counted, not stored (they add no error to any clip)
        self.batches = 0
        self.switched = False
        self.pool = pool  # shared with the other calibrators of a model (not saved in the state)
        if pool is not None:
            pool.join(self.name)
        self._validate()

    def _validate(self) -> None:
        """Run the option checks of the kernel once, now, so a bad option fails at construction."""
        with named(self.name):
            self._k.ifmr(np.zeros(1, np.float32), self.options)

    @property
    def in_histogram_mode(self) -> bool:
        return self.mode == "histogram" or self.switched

    @property
    def stored_bytes(self) -> int:
        """Bytes of samples held (exact mode; zeros are counted, not held, so this is at most the budget)."""
        return self._n * 4

    # -- streaming ---------------------------------------------------------------------------------------
    def observe(self, x: Any) -> None:
        """Add one batch (any shape, float16/32/64). Holds no reference to ``x`` afterwards."""
        flat = base.batch(x, self.name)
        if self.nonfinite == "drop":
            flat = flat[np.isfinite(flat)]
        if self.in_histogram_mode:
            self._observe_hist(flat)
        else:
            self._append(flat)
        self.batches += 1

    def _observe_hist(self, flat: np.ndarray, zeros: int = 0) -> None:
        self._hist_observe(flat, self.nonfinite == "drop", zeros)

    def _append(self, flat: np.ndarray, zeros: int = 0) -> None:
        """Store the non-zero values of ``flat`` and count its zeros (and ``zeros`` more), in one native pass
        that checks them (NaN/Inf raise before anything is stored)."""
        # The budgets (the tensor's and the model's pool) count every sample seen, zeros too (they are not held,
        # so the memory held is less), so where a tensor switches to the histogram mode does not depend on how
        # it is stored.
        need = (self._n + self._zeros + zeros + flat.size) * 4
        if need > self.memory_budget or (self.pool is not None and not self.pool.request(self.name, need)):
            with named(self.name):
                self._k.min_max(flat)  # NaN/Inf raise before anything changes
            if self.mode == "exact":
                raise MemoryBudgetError(
                    f"calibrator {self.name!r}: exact IFMR would store {need / 2**20:.1f} MiB of samples, over its "
                    f"memory_budget of {self.memory_budget / 2**20:.1f} MiB; raise memory_budget, calibrate on "
                    "fewer batches, or use mode='auto' or 'histogram'")
            self._switch_to_histogram(need)
            self._observe_hist(flat, zeros)
            return
        if self._buf.size == 0:
            # One buffer of the whole budget, reserved but not touched: the operating system backs only the
            # pages that samples are written to, so resident memory follows the data and nothing is copied
            # twice (growing a buffer would re-copy and re-fault every page).
            cap = self.memory_budget if self.pool is None else min(self.memory_budget, self.pool.total)
            self._buf = reserve(cap // 4)
        with named(self.name):
            written, z = self._k.ifmr_store(self._buf, self._n, flat)
        self._n += written
        self._zeros += z + zeros

    def _switch_to_histogram(self, need: int) -> None:
        warnings.warn(
            f"IFMR calibrator {self.name!r}: samples would take {need / 2**20:.1f} MiB, over the "
            f"{self.memory_budget / 2**20:.1f} MiB memory_budget; switching to the histogram percentile mode "
            f"({self.num_of_bins} bins)", RuntimeWarning, stacklevel=3)
        stored, zeros = self._samples(), self._zeros  # a view: the buffer is released once it is observed
        self.switched = True
        if self.pool is not None:
            self.pool.release(self.name)
        self._buf, self._n, self._zeros = np.empty(0, np.float32), 0, 0
        self._observe_hist(stored, zeros)  # the zeros counted, not appended (PP-OCRv6 det: 0.13 s of copies)

    def merge(self, other: "IFMRCalibrator") -> None:
        """Fold another IFMR calibrator in: samples are appended (within the budget), histograms merged."""
        if not isinstance(other, IFMRCalibrator):
            raise ParameterError(f"{self.name}: cannot merge a {type(other).__name__} into an IFMR calibrator")
        if other.in_histogram_mode:
            if self.mode == "exact":
                self._refuse()
            if not self.in_histogram_mode:
                self._switch_to_histogram((self._n + self._zeros + other._n + other._zeros) * 4)
            self._hist_merge(other)
        elif other._n or other._zeros:
            if self.in_histogram_mode:
                self._observe_hist(other._samples(), other._zeros)
            else:
                self._append(other._samples(), other._zeros)
        self.batches += other.batches

    def _refuse(self) -> None:
        raise MemoryBudgetError(f"calibrator {self.name!r}: mode='exact' cannot merge a histogram-mode state")

    # -- results ---------------------------------------------------------------------------------------
    def _samples(self) -> np.ndarray:
        """The stored (non-zero) samples (a view, exact mode)."""
        return self._buf[: self._n]

    def _require_data(self) -> None:
        if (self._hist is None or self._hist.total == 0) if self.in_histogram_mode else self._n + self._zeros == 0:
            raise EmptyInputError(f"calibrator {self.name!r} (ifmr) has observed no data: "
                                  "run the model on calibration batches first")

    def qparams(self) -> CalibResult:
        self._require_data()
        with named(self.name):
            if self.in_histogram_mode:
                r = self._k.ifmr_histogram(self._hist, None, self.options)
            else:
                r = self._k.ifmr(self._samples(), self.options, self._zeros)
        return self._result(r)

    def _result(self, r: Any) -> CalibResult:
        """The calibration result of the search's ``IfmrResult``."""
        details = {k: v for k, v in dataclasses.asdict(r).items()
                   if k not in ("scale", "zero_point", "clip_min", "clip_max")}
        details.update(batches=self.batches, mode="histogram" if self.in_histogram_mode else "exact",
                       switched=self.switched)
        return CalibResult(r.scale, r.zero_point, r.clip_min, r.clip_max, self.bits, self.symmetric, "ifmr", details)

    def histogram(self) -> Histogram:
        """The histogram of everything observed: the calibrator's own in histogram mode; in exact mode, one of
        ``REPORT_BINS`` bins built from the stored samples over their exact range."""
        self._require_data()
        if self.in_histogram_mode:
            return self._hist
        with named(self.name):
            return self._k.histogram_observe(None, self._samples(), REPORT_BINS, zeros=self._zeros)

    def observed_range(self) -> Tuple[float, float]:
        """Min and max of everything observed (exact in exact mode)."""
        self._require_data()
        if self.in_histogram_mode:
            return self._hist.lo, self._hist.hi
        if self._n == 0:
            return 0.0, 0.0
        with named(self.name):
            mn, mx = self._k.min_max(self._samples())
        lo, hi = float(mn[0]), float(mx[0])
        return (min(lo, 0.0), max(hi, 0.0)) if self._zeros else (lo, hi)

    def clipped_fraction(self, clip_min: float, clip_max: float) -> float:
        """Share of the observed values outside ``[clip_min, clip_max]``: exact from the stored samples, else
        from the histogram (a bin counts as clipped when its centre is outside)."""
        self._require_data()
        if self.in_histogram_mode:
            return base.fraction_outside(self._hist, clip_min, clip_max)
        s = self._samples()
        zeros_out = self._zeros if not clip_min <= 0.0 <= clip_max else 0
        return float(np.count_nonzero((s < clip_min) | (s > clip_max)) + zeros_out) / (s.size + self._zeros)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        opts = {k: v for k, v in dataclasses.asdict(self.options).items() if k not in ("bits", "symmetric")}
        return {"kind": "ifmr", "name": self.name, "bits": self.bits, "symmetric": self.symmetric,
                **opts, "mode": self.mode, "memory_budget": self.memory_budget,
                "num_of_bins": self.num_of_bins, "nonfinite": self.nonfinite, "batches": self.batches,
                "switched": self.switched, "samples": self._buf[: self._n].copy(), "zeros": self._zeros,
                "counts": None if self.counts is None else self.counts.copy(),
                "lo": float(self.lo), "hi": float(self.hi)}

    @classmethod
    def from_state_dict(cls, d: Dict[str, Any], backend: str = "native") -> "IFMRCalibrator":
        base.require_state(d, "ifmr", ("name", "bits", "symmetric", "mode", "samples", "counts"))
        cal = cls(d["name"], d["bits"], d["symmetric"], d.get("max_percentile", 0.999999),
                  d.get("min_percentile", 0.999999), (d.get("search_start", 0.7), d.get("search_end", 1.3)),
                  d.get("search_step", 0.01), d.get("search_extend", True), d.get("search_2d", False), d["mode"],
                  d.get("memory_budget", DEFAULT_BUDGET), d.get("num_of_bins", 4096), d.get("nonfinite", "error"),
                  backend)
        cal.switched = bool(d.get("switched", False))
        with named(cal.name):
            samples = base.state_field(d, "samples",
                                       lambda v: np.ascontiguousarray(np.asarray(v, np.float32).reshape(-1)))
        zeros = int_param(d.get("zeros", 0), f"{cal.name}: state 'zeros'", 0)
        if samples.size or zeros:
            cal._append(samples, zeros)
        cal._load_hist(d)
        cal.batches = int_param(d.get("batches", 0), f"{cal.name}: state 'batches'", 0)
        return cal
