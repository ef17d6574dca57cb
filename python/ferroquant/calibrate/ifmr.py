"""IFMR (spec §3) as a calibrator: exact while the stored samples fit a memory budget, then (or by choice)
the histogram percentile mode, which needs O(num_of_bins) memory whatever the number of batches
(decision 7). ``mode="exact"`` raises instead of switching; ``mode="histogram"`` never stores samples."""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any, Dict, Tuple

import numpy as np

from ferroquant._arrays import named
from ferroquant.calibrate.base import CalibResult, batch, check_bits, check_nonfinite, require_state
from ferroquant.calibrate.histogram import BACKENDS, HistogramState
from ferroquant.errors import EmptyInputError, MemoryBudgetError, ParameterError

MODES = ("auto", "exact", "histogram")
DEFAULT_BUDGET = 256 << 20  # bytes of stored samples per tensor


class IFMRCalibrator(HistogramState):
    """IFMR: percentile initialisation, then a 1-D (or opt-in 2-D) search of the clip ratio minimising the
    quantization MSE, with the window extension of decision 10 (``search_extend=False`` is AMCT exactly)."""

    def __init__(self, name: str = "tensor", bits: int = 8, symmetric: bool = False,
                 max_percentile: float = 0.999999, min_percentile: float = 0.999999,
                 search_range: Tuple[float, float] = (0.7, 1.3), search_step: float = 0.01,
                 search_extend: bool = True, search_2d: bool = False, mode: str = "auto",
                 memory_budget: int = DEFAULT_BUDGET, num_of_bins: int = 4096, nonfinite: str = "error",
                 backend: str = "native") -> None:
        if mode not in MODES:
            raise ParameterError(f"{name}: mode must be one of {MODES}, got {mode!r}")
        if backend not in BACKENDS:
            raise ParameterError(f"{name}: backend must be one of {tuple(BACKENDS)}, got {backend!r}")
        if int(memory_budget) <= 0:
            raise ParameterError(f"{name}: memory_budget must be > 0 bytes, got {memory_budget}")
        nb = int(num_of_bins)
        if nb < 2 or nb & (nb - 1):
            raise ParameterError(f"{name}: num_of_bins must be a power of two, got {nb}")
        self.name, self.bits, self.symmetric = str(name), check_bits(bits), bool(symmetric)
        self.options = {"max_percentile": float(max_percentile), "min_percentile": float(min_percentile),
                        "search_start": float(search_range[0]), "search_end": float(search_range[1]),
                        "search_step": float(search_step), "search_extend": bool(search_extend),
                        "search_2d": bool(search_2d)}
        self.mode, self.memory_budget, self.num_of_bins = mode, int(memory_budget), nb
        self.nonfinite, self.backend = check_nonfinite(nonfinite), backend
        self._k: ModuleType = BACKENDS[backend]
        self._buf = np.empty(0, np.float32)  # exact mode: samples in [0, _n)
        self._n = 0
        self.batches = 0
        self.switched = False
        self._validate()

    def _validate(self) -> None:
        """Run the option checks of the kernel once, now, so a bad option fails at construction."""
        with named(self.name):
            self._k.ifmr(np.zeros(1, np.float32), self.bits, self.symmetric, **self.options)

    @property
    def in_histogram_mode(self) -> bool:
        return self.mode == "histogram" or self.switched

    @property
    def stored_bytes(self) -> int:
        """Bytes of samples held (exact mode)."""
        return self._n * 4

    # -- streaming ---------------------------------------------------------------------------------------
    def observe(self, x: Any) -> None:
        """Add one batch (any shape, float16/32/64). Holds no reference to ``x`` afterwards."""
        flat = batch(x, self.name)
        if self.nonfinite == "drop":
            flat = flat[np.isfinite(flat)]
        elif not self.in_histogram_mode:
            with named(self.name):
                self._k.min_max(flat)  # NaN/Inf checked before anything is stored
        if self.in_histogram_mode:
            self._observe_hist(flat)
        else:
            self._append(flat)
        self.batches += 1

    def _observe_hist(self, flat: np.ndarray) -> None:
        self._hist_observe(flat, self.nonfinite == "drop")

    def _append(self, flat: np.ndarray) -> None:
        need = (self._n + flat.size) * 4
        if need > self.memory_budget:
            if self.mode == "exact":
                raise MemoryBudgetError(
                    f"calibrator {self.name!r}: exact IFMR would store {need / 2**20:.1f} MiB of samples, over its "
                    f"memory_budget of {self.memory_budget / 2**20:.1f} MiB; raise memory_budget, calibrate on "
                    "fewer batches, or use mode='auto' or 'histogram'")
            self._switch_to_histogram(need)
            self._observe_hist(flat)
            return
        if self._buf.size == 0:
            # One buffer of the whole budget, reserved but not touched: the operating system backs only the
            # pages that samples are written to, so resident memory follows the data and nothing is copied
            # twice (growing a buffer would re-copy and re-fault every page).
            self._buf = np.empty(self.memory_budget // 4, np.float32)
        self._buf[self._n : self._n + flat.size] = flat
        self._n += flat.size

    def _switch_to_histogram(self, need: int) -> None:
        warnings.warn(
            f"IFMR calibrator {self.name!r}: samples would take {need / 2**20:.1f} MiB, over the "
            f"{self.memory_budget / 2**20:.1f} MiB memory_budget; switching to the histogram percentile mode "
            f"({self.num_of_bins} bins)", RuntimeWarning, stacklevel=3)
        stored = self._buf[: self._n]
        self.switched = True
        self._buf, self._n = np.empty(0, np.float32), 0
        if stored.size:
            self._observe_hist(stored)

    def merge(self, other: "IFMRCalibrator") -> None:
        """Fold another IFMR calibrator in: samples are appended (within the budget), histograms merged."""
        if not isinstance(other, IFMRCalibrator):
            raise ParameterError(f"{self.name}: cannot merge a {type(other).__name__} into an IFMR calibrator")
        if other.in_histogram_mode:
            if not self.in_histogram_mode:
                self._switch_to_histogram((self._n + other._n) * 4) if self.mode != "exact" else self._refuse()
            self._hist_merge(other)
        elif other._n:
            if self.in_histogram_mode:
                self._observe_hist(other._buf[: other._n])
            else:
                self._append(other._buf[: other._n])
        self.batches += other.batches

    def _refuse(self) -> None:
        raise MemoryBudgetError(f"calibrator {self.name!r}: mode='exact' cannot merge a histogram-mode state")

    # -- results ---------------------------------------------------------------------------------------
    def qparams(self) -> CalibResult:
        with named(self.name):
            if self.in_histogram_mode:
                if self.counts is None or int(self.counts.sum()) == 0:
                    self._no_data()
                r = self._k.ifmr_histogram(self.counts, self.lo, self.hi, None, self.bits, self.symmetric,
                                           **self.options)
            else:
                if self._n == 0:
                    self._no_data()
                r = self._k.ifmr(self._buf[: self._n], self.bits, self.symmetric, **self.options)
        details = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()
                   if k not in ("scale", "zero_point", "clip_min", "clip_max")}
        details.update(batches=self.batches, mode="histogram" if self.in_histogram_mode else "exact",
                       switched=self.switched)
        return CalibResult(float(r["scale"]), int(r["zero_point"]), float(r["clip_min"]), float(r["clip_max"]),
                           self.bits, self.symmetric, "ifmr", details)

    def _no_data(self) -> None:
        raise EmptyInputError(f"calibrator {self.name!r} (ifmr) has observed no data: "
                              "run the model on calibration batches first")

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"kind": "ifmr", "name": self.name, "bits": self.bits, "symmetric": self.symmetric,
                **self.options, "mode": self.mode, "memory_budget": self.memory_budget,
                "num_of_bins": self.num_of_bins, "nonfinite": self.nonfinite, "batches": self.batches,
                "switched": self.switched, "samples": self._buf[: self._n].copy(),
                "counts": None if self.counts is None else self.counts.copy(),
                "lo": float(self.lo), "hi": float(self.hi)}

    @classmethod
    def from_state_dict(cls, d: Dict[str, Any], backend: str = "native") -> "IFMRCalibrator":
        require_state(d, "ifmr", ("name", "bits", "symmetric", "mode", "samples", "counts"))
        cal = cls(d["name"], d["bits"], d["symmetric"], d.get("max_percentile", 0.999999),
                  d.get("min_percentile", 0.999999), (d.get("search_start", 0.7), d.get("search_end", 1.3)),
                  d.get("search_step", 0.01), d.get("search_extend", True), d.get("search_2d", False), d["mode"],
                  d.get("memory_budget", DEFAULT_BUDGET), d.get("num_of_bins", 4096), d.get("nonfinite", "error"),
                  backend)
        cal.switched = bool(d.get("switched", False))
        samples = np.ascontiguousarray(np.asarray(d["samples"], np.float32).reshape(-1))
        if samples.size:
            cal._append(samples)
        if d["counts"] is not None:
            cal.counts = np.ascontiguousarray(np.asarray(d["counts"], np.uint64))
            cal.lo, cal.hi = np.float32(d["lo"]).item(), np.float32(d["hi"]).item()
        cal.batches = int(d.get("batches", 0))
        return cal
