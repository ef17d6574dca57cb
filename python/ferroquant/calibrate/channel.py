"""Per-channel activation calibration (issue 15, item 0): one streaming histogram per channel of axis 1, each
searched with the tensor's algorithm, so every channel gets its own scale and zero point.

Runtimes that take per-channel activation scales (OpenVINO, simulation) use this on the inputs of depthwise
convolutions, whose channels never mix: a per-tensor clip there spans the widest channel while most channels use
a sliver of it. The statistics are the library's own histogram kernels, one histogram per channel in one native
call per batch (``histogram_observe_many``; HFMG searches in one ``hfmg_search_many``), so memory is
``channels x num_of_bins`` counts whatever the number of batches, and the result does not depend on batching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ferroquant import ops
from ferroquant._arrays import as_f32, int_param, named
from ferroquant.calibrate.base import CalibResult, check_bits, fraction_outside, require_state, state_field
from ferroquant.errors import EmptyInputError, ParameterError, ShapeError
from ferroquant.ops.types import Histogram, IfmrOptions

#: Bins per channel: enough for a channel's own range, small enough for a thousand channels.
CHANNEL_BINS = 512
ALGORITHMS = ("hfmg", "minmax", "percentile", "entropy", "ifmr")


@dataclass(frozen=True)
class ChannelCalibResult(CalibResult):
    """A per-channel result: ``scales`` / ``zero_points`` / ``clip_mins`` / ``clip_maxs`` per channel of
    ``axis``; ``scale`` / ``zero_point`` / ``clip_min`` / ``clip_max`` are the per-tensor qparams of the union of
    the channels' clips (for summaries, and for a reader that cannot take per-channel scales)."""

    axis: int = 1
    scales: Tuple[float, ...] = ()
    zero_points: Tuple[int, ...] = ()
    clip_mins: Tuple[float, ...] = ()
    clip_maxs: Tuple[float, ...] = ()


class ChannelCalibrator:
    """Observe ``[N, C, ...]`` batches into one histogram per channel; search each with ``algorithm``."""

    def __init__(self, name: str = "tensor", algorithm: str = "hfmg", num_of_bins: int = CHANNEL_BINS,
                 bits: int = 8, symmetric: bool = False, refine: bool = True, percentile: float = 0.99999,
                 num_quantized_bins: int = 128, ifmr: Optional[IfmrOptions] = None, backend: str = "native") -> None:
        if algorithm not in ALGORITHMS:
            raise ParameterError(f"{name}: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.name, self.algorithm = str(name), algorithm
        self.bits, self.symmetric, self.refine = check_bits(bits), bool(symmetric), bool(refine)
        nb = int_param(num_of_bins, f"{name}: num_of_bins")
        if nb < (1 << self.bits) or nb & (nb - 1):
            raise ParameterError(f"{name}: num_of_bins must be a power of two >= 2^bits, got {nb}")
        self.num_of_bins, self.percentile, self.num_quantized_bins = nb, float(percentile), int(num_quantized_bins)
        self.ifmr = ifmr if ifmr is not None else IfmrOptions(self.bits, self.symmetric)
        self.backend, self._k = backend, ops.backend(backend)
        self._hists: Optional[List[Histogram]] = None
        self.batches = 0

    @property
    def channels(self) -> Optional[int]:
        return None if self._hists is None else len(self._hists)

    def observe(self, x: Any) -> None:
        """Add one ``[N, C, ...]`` batch (channel axis 1)."""
        with named(self.name):
            a = as_f32(x, "batch")
            if a.ndim < 2 or a.shape[1] == 0 or a.size == 0:
                raise ShapeError(f"per-channel calibration needs [N, C, ...] data, got shape {a.shape}")
            if self._hists is not None and a.shape[1] != len(self._hists):
                raise ShapeError(f"batch has {a.shape[1]} channels, earlier batches {len(self._hists)}")
            rows = np.ascontiguousarray(np.moveaxis(a, 1, 0).reshape(a.shape[1], -1))
            old = self._hists if self._hists is not None else [None] * rows.shape[0]
            self._hists = self._k.histogram_observe_many(old, list(rows), self.num_of_bins, False)
        self.batches += 1

    def merge(self, other: "ChannelCalibrator") -> None:
        if not isinstance(other, ChannelCalibrator) or other.num_of_bins != self.num_of_bins:
            raise ParameterError(f"{self.name}: can merge only a per-channel calibrator with {self.num_of_bins} bins")
        if other._hists is None:
            return
        if self._hists is None:
            self._hists = list(other._hists)
        elif len(other._hists) != len(self._hists):
            raise ShapeError(f"{self.name}: cannot merge {len(other._hists)} channels into {len(self._hists)}")
        else:
            self._hists = [self._k.histogram_merge(a, b) for a, b in zip(self._hists, other._hists)]
        self.batches += other.batches

    def _require(self) -> List[Histogram]:
        if self._hists is None:
            raise EmptyInputError(f"calibrator {self.name!r} (per channel) has observed no data")
        return self._hists

    def _search(self, hists: List[Histogram]) -> List[Tuple[float, int, float, float]]:
        k, b, sym = self._k, self.bits, self.symmetric
        if self.algorithm == "hfmg":
            return [(s.scale, s.zero_point, s.clip_min, s.clip_max)
                    for s in k.hfmg_search_many(hists, b, sym, self.refine)]
        out = []
        for h in hists:
            if self.algorithm == "minmax":
                q = k.qparams_from_range(h.lo, h.hi, b, sym)
                out.append((q.scale, q.zero_point, h.lo, h.hi))
            elif self.algorithm == "percentile":
                c = k.percentile_clip(h, self.percentile, b, sym)
                out.append((c.scale, c.zero_point, c.clip_min, c.clip_max))
            elif self.algorithm == "entropy":
                c = k.kl_search(h, b, sym, self.num_quantized_bins)
                out.append((c.scale, c.zero_point, c.clip_min, c.clip_max))
            else:
                r = k.ifmr_histogram(h, None, self.ifmr)
                out.append((r.scale, r.zero_point, r.clip_min, r.clip_max))
        return out

    def qparams(self) -> ChannelCalibResult:
        hists = self._require()
        with named(self.name):
            found = self._search(hists)
            lo = min(min(f[2] for f in found), 0.0)
            hi = max(max(f[3] for f in found), 0.0)
            whole = self._k.qparams_from_range(lo, hi, self.bits, self.symmetric)
        details = {"batches": self.batches, "channels": len(hists), "num_of_bins": self.num_of_bins,
                   "per_channel": self.algorithm}
        return ChannelCalibResult(whole.scale, whole.zero_point, float(lo), float(hi), self.bits, self.symmetric,
                                  self.algorithm, details, 1, tuple(float(f[0]) for f in found),
                                  tuple(int(f[1]) for f in found), tuple(float(f[2]) for f in found),
                                  tuple(float(f[3]) for f in found))

    # -- report helpers (the union of the channels) --------------------------------------------------------
    def histogram(self) -> Histogram:
        hists = self._require()
        out = hists[0]
        for h in hists[1:]:
            out = self._k.histogram_merge(out, h)
        return out

    def observed_range(self) -> Tuple[float, float]:
        hists = self._require()
        return min(h.lo for h in hists), max(h.hi for h in hists)

    def clipped_fraction(self, clip_min: float, clip_max: float) -> float:
        return fraction_outside(self.histogram(), clip_min, clip_max)

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        hists = self._hists
        return {"kind": "channel", "name": self.name, "algorithm": self.algorithm, "num_of_bins": self.num_of_bins,
                "bits": self.bits, "symmetric": self.symmetric, "refine": self.refine, "batches": self.batches,
                "percentile": self.percentile, "num_quantized_bins": self.num_quantized_bins,
                "lo": None if hists is None else np.array([h.lo for h in hists]),
                "hi": None if hists is None else np.array([h.hi for h in hists]),
                "counts": None if hists is None else np.stack([h.counts for h in hists])}

    @classmethod
    def from_state_dict(cls, d: Dict[str, Any], backend: str = "native") -> "ChannelCalibrator":
        require_state(d, "channel", ("name", "algorithm", "num_of_bins", "bits", "lo", "hi", "counts"))
        cal = cls(d["name"], d["algorithm"], d["num_of_bins"], d["bits"], d.get("symmetric", False),
                  d.get("refine", True), d.get("percentile", 0.99999), d.get("num_quantized_bins", 128),
                  backend=backend)
        if d["counts"] is not None:
            counts = state_field(d, "counts", lambda c: np.asarray(c).reshape(-1, cal.num_of_bins))
            lo, hi = np.asarray(d["lo"], np.float64).ravel(), np.asarray(d["hi"], np.float64).ravel()
            if not len(lo) == len(hi) == len(counts):
                raise ParameterError(f"{cal.name}: state has {len(counts)} channels of counts, {len(lo)} lo, "
                                     f"{len(hi)} hi")
            cal._hists = [Histogram(c, float(a), float(b)) for c, a, b in zip(counts, lo, hi)]
        cal.batches = int_param(d.get("batches", 0), f"{cal.name}: state 'batches'", 0)
        return cal


__all__ = ["CHANNEL_BINS", "ChannelCalibResult", "ChannelCalibrator"]
