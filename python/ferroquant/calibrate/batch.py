"""Many tensors at once: ``observe_all`` feeds one batch per calibrator and ``search_all`` searches them all,
with one native call per group of histogram-based calibrators, and one for the exact IFMR calibrators (in
parallel across their tensors, and within large ones), instead of one call per tensor. The results are those
of observing and searching one calibrator at a time, whatever the thread count; calibrators that cannot be
batched (the baselines' searches, IFMR in histogram mode) are run one by one."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

from ferroquant import ops
from ferroquant.calibrate.base import CalibResult, batch
from ferroquant.calibrate.histogram import HistogramCalibrator, HistogramState
from ferroquant.calibrate.ifmr import IFMRCalibrator
from ferroquant.errors import DataError, QuantError


def _histogram_only(cal: Any) -> bool:
    """Whether observing ``cal`` is one histogram update (and nothing else)."""
    if isinstance(cal, HistogramCalibrator):
        return True
    return isinstance(cal, IFMRCalibrator) and cal.in_histogram_mode


def observe_all(calibrators: Mapping[str, Any], arrays: Mapping[str, Any]) -> None:
    """``calibrators[name].observe(arrays[name])`` for every array, histogram updates batched: one native call
    per (bin count, non-finite mode, backend). A tensor's bad batch raises with its name; histograms change
    only when the whole call succeeds (else the tensors are observed one by one, up to the failing one)."""
    groups: Dict[Tuple[int, bool, str], List[Tuple[HistogramState, Any]]] = {}
    for name, x in arrays.items():
        if name not in calibrators:
            raise DataError(f"observe_all: no calibrator for tensor {name!r}")
        cal = calibrators[name]
        if not _histogram_only(cal):
            cal.observe(x)
            continue
        flat = batch(x, cal.name)
        key = (cal.num_of_bins, cal.nonfinite == "drop", cal.backend)
        groups.setdefault(key, []).append((cal, flat))
    for (nbins, drop, backend), items in groups.items():
        try:
            new = ops.backend(backend).histogram_observe_many([c._hist for c, _ in items], [f for _, f in items],
                                                              nbins, drop)
        except QuantError:
            for cal, flat in items:  # the same error, raised for its tensor by name
                cal.observe(flat)
            raise
        for (cal, _), h in zip(items, new):
            cal._hist = h
            cal.batches += 1


def search_all(calibrators: Mapping[str, Any]) -> Dict[str, CalibResult]:
    """``{name: calibrator.qparams()}``, HFMG searches batched: one native call per (bits, symmetric, refine,
    backend), in parallel across the tensors. Calibrators without data raise with their tensor's name."""
    out: Dict[str, CalibResult] = {}
    groups: Dict[Tuple[int, bool, bool, str], List[Tuple[str, HistogramCalibrator]]] = {}
    exact: Dict[str, List[Tuple[str, IFMRCalibrator]]] = {}
    for name, cal in calibrators.items():
        if isinstance(cal, HistogramCalibrator) and cal.algorithm == "hfmg":
            cal._require_data()
            groups.setdefault((cal.bits, cal.symmetric, cal.refine, cal.backend), []).append((name, cal))
        elif isinstance(cal, IFMRCalibrator) and not cal.in_histogram_mode:
            cal._require_data()
            exact.setdefault(cal.backend, []).append((name, cal))
        else:
            out[name] = cal.qparams()
    for backend, pending in exact.items():
        try:
            found = ops.backend(backend).ifmr_many([c._samples() for _, c in pending],
                                                   [c.options for _, c in pending], [c._zeros for _, c in pending])
        except QuantError:
            for _, cal in pending:  # the same error, raised for its tensor by name
                cal.qparams()
            raise
        out.update((name, cal._result(r)) for (name, cal), r in zip(pending, found))
    for (bits, symmetric, refine, backend), items in groups.items():
        try:
            found = ops.backend(backend).hfmg_search_many([c._hist for _, c in items], bits, symmetric, refine)
        except QuantError:
            for _, cal in items:  # the same error, raised for its tensor by name
                cal.qparams()
            raise
        for (name, cal), s in zip(items, found):
            out[name] = cal._hfmg_result(s)
    return {name: out[name] for name in calibrators}
