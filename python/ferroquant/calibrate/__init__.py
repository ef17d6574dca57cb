"""Activation calibrators with one protocol: ``observe(batch)``, ``merge(other)``, ``qparams()``,
``state_dict()`` / ``from_state_dict()``.

- :class:`HistogramCalibrator` with ``algorithm`` = ``hfmg`` (spec §4), ``minmax``, ``percentile`` or
  ``entropy`` (TensorRT's KL): O(num_of_bins) memory, mergeable, re-searchable from a saved state.
- :class:`IFMRCalibrator` (spec §3): exact within a memory budget, histogram percentile mode past it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

from ferroquant.calibrate.base import CalibResult, Calibrator
from ferroquant.calibrate.histogram import (
    ALGORITHMS,
    EntropyCalibrator,
    HFMGCalibrator,
    HistogramCalibrator,
    MinMaxCalibrator,
    PercentileCalibrator,
)
from ferroquant.calibrate.ifmr import IFMRCalibrator
from ferroquant.errors import ParameterError

AnyCalibrator = Union[HistogramCalibrator, IFMRCalibrator]


def make_calibrator(algorithm: str, name: str = "tensor", **params: Any) -> AnyCalibrator:
    """A calibrator by algorithm name: ``ifmr``, ``hfmg``, ``minmax``, ``percentile`` or ``entropy``."""
    if algorithm == "ifmr":
        return IFMRCalibrator(name, **params)
    if algorithm in ALGORITHMS:
        return HistogramCalibrator(name, algorithm, **params)
    raise ParameterError(f"{name}: unknown calibration algorithm {algorithm!r} "
                         f"(known: ifmr, {', '.join(ALGORITHMS)})")


def from_state_dict(d: Dict[str, Any], backend: str = "native") -> AnyCalibrator:
    """Rebuild any calibrator from its ``state_dict()``."""
    kind = d.get("kind")
    if kind == "histogram":
        return HistogramCalibrator.from_state_dict(d, backend)
    if kind == "ifmr":
        return IFMRCalibrator.from_state_dict(d, backend)
    raise ParameterError(f"unknown calibrator state kind {kind!r}")


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return {"__array__": v.dtype.str, "data": v.tolist()}
    return v


def _from_jsonable(v: Any) -> Any:
    if isinstance(v, dict) and "__array__" in v:
        return np.asarray(v["data"], dtype=np.dtype(v["__array__"]))
    return v


def save_states(path: Union[str, Path], calibrators: Dict[str, AnyCalibrator]) -> None:
    """Write the states of named calibrators to a JSON file (arrays as typed lists)."""
    doc = {k: {f: _jsonable(v) for f, v in c.state_dict().items()} for k, c in calibrators.items()}
    Path(path).write_text(json.dumps(doc))


def load_states(path: Union[str, Path], backend: str = "native") -> Dict[str, AnyCalibrator]:
    """Calibrators saved by :func:`save_states`, ready to observe more, merge or search."""
    doc = json.loads(Path(path).read_text())
    return {k: from_state_dict({f: _from_jsonable(v) for f, v in d.items()}, backend) for k, d in doc.items()}


__all__ = [
    "ALGORITHMS",
    "AnyCalibrator",
    "CalibResult",
    "Calibrator",
    "EntropyCalibrator",
    "HFMGCalibrator",
    "HistogramCalibrator",
    "IFMRCalibrator",
    "MinMaxCalibrator",
    "PercentileCalibrator",
    "from_state_dict",
    "load_states",
    "make_calibrator",
    "save_states",
]
