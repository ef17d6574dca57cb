"""Activation calibrators with one protocol: ``observe(batch)``, ``merge(other)``, ``qparams()``,
``state_dict()`` / ``from_state_dict()``, and for reports ``histogram()``, ``observed_range()``,
``clipped_fraction()``. :func:`observe_all` and :func:`search_all` work on many tensors at once.

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
from ferroquant.calibrate.batch import observe_all, search_all
from ferroquant.calibrate.channel import ChannelCalibrator, ChannelCalibResult
from ferroquant.calibrate.histogram import (
    ALGORITHMS,
    EntropyCalibrator,
    HFMGCalibrator,
    HistogramCalibrator,
    MinMaxCalibrator,
    PercentileCalibrator,
)
from ferroquant.calibrate.ifmr import IFMRCalibrator
from ferroquant.errors import DataError, ParameterError, QuantError

AnyCalibrator = Union[HistogramCalibrator, IFMRCalibrator, ChannelCalibrator]


def make_calibrator(algorithm: str, name: str = "tensor", **params: Any) -> AnyCalibrator:
    """A calibrator by algorithm name: ``ifmr``, ``hfmg``, ``minmax``, ``percentile`` or ``entropy``."""
    if algorithm == "ifmr":
        return IFMRCalibrator(name, **params)
    if algorithm in ALGORITHMS:
        return HistogramCalibrator(name, algorithm, **params)
    raise ParameterError(f"{name}: unknown calibration algorithm {algorithm!r} "
                         f"(known: ifmr, {', '.join(ALGORITHMS)})")


def from_state_dict(d: Dict[str, Any], backend: str = "native") -> AnyCalibrator:
    """Rebuild any calibrator from its ``state_dict()`` (checked: a damaged or tampered state raises an error
    naming the field)."""
    if not isinstance(d, dict):
        raise ParameterError(f"a calibrator state must be a dict, got {type(d).__name__}")
    kind = d.get("kind")
    if kind == "histogram":
        return HistogramCalibrator.from_state_dict(d, backend)
    if kind == "ifmr":
        return IFMRCalibrator.from_state_dict(d, backend)
    if kind == "channel":
        return ChannelCalibrator.from_state_dict(d, backend)
    raise ParameterError(f"unknown calibrator state kind {kind!r}")


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return {"__array__": v.dtype.str, "data": v.tolist()}
    return v


def _from_jsonable(v: Any) -> Any:
    if isinstance(v, dict) and "__array__" in v:
        try:
            return np.asarray(v["data"], dtype=np.dtype(v["__array__"]))
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise ParameterError(f"a saved array is not valid: {e!r}") from None
    return v


def states_to_json(calibrators: Dict[str, AnyCalibrator]) -> Dict[str, Any]:
    """The states of named calibrators as JSON values (arrays as typed lists)."""
    return {k: {f: _jsonable(v) for f, v in c.state_dict().items()} for k, c in calibrators.items()}


def states_from_json(doc: Any, where: str = "the state", backend: str = "native") -> Dict[str, AnyCalibrator]:
    """Calibrators from :func:`states_to_json`'s output; errors name ``where``, the tensor and the field."""
    if not isinstance(doc, dict) or not all(isinstance(d, dict) for d in doc.values()):
        raise DataError(f"{where} is not a calibrator state file: expected an object of states by tensor")
    out = {}
    for k, d in doc.items():
        try:
            out[k] = from_state_dict({f: _from_jsonable(v) for f, v in d.items()}, backend)
        except QuantError as e:
            raise type(e)(f"{where}, tensor {k!r}: {e}") from None
    return out


def save_states(path: Union[str, Path], calibrators: Dict[str, AnyCalibrator]) -> None:
    """Write the states of named calibrators to a JSON file (arrays as typed lists)."""
    Path(path).write_text(json.dumps(states_to_json(calibrators)))


def load_states(path: Union[str, Path], backend: str = "native") -> Dict[str, AnyCalibrator]:
    """Calibrators saved by :func:`save_states`, ready to observe more, merge or search. A file that is not
    such a state (unreadable, not UTF-8, not JSON, not a dict of states) raises :class:`DataError` naming it; a
    damaged state, an error naming the tensor and the field."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"cannot read calibrator states {str(p)!r}: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{str(p)!r} is not a calibrator state file (JSON written by save_states): {e}") from None
    return states_from_json(doc, repr(str(p)), backend)


__all__ = [
    "ALGORITHMS",
    "AnyCalibrator",
    "CalibResult",
    "Calibrator",
    "ChannelCalibResult",
    "ChannelCalibrator",
    "EntropyCalibrator",
    "HFMGCalibrator",
    "HistogramCalibrator",
    "IFMRCalibrator",
    "MinMaxCalibrator",
    "PercentileCalibrator",
    "from_state_dict",
    "load_states",
    "make_calibrator",
    "observe_all",
    "save_states",
    "search_all",
    "states_from_json",
    "states_to_json",
]
