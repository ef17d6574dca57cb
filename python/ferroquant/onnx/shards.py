"""Calibration split over machines: each shard of the calibration data is observed on its own
(:func:`calibrate_shard`, ``ferroquant calibrate``) into a state file, the files are merged in one place
(:func:`merge_states`, ``ferroquant merge``), and the merged state is searched and exported without data
(:func:`calibrated_from_state`, ``ferroquant quantize --state``).

A state file (JSON) holds the model's SHA-256 (of the fused, prepared model), the config, the deploy profile
and CPU types, the number of batches and every calibrator's state. Merging refuses states of another model,
config, profile or CPU types, and is independent of the order of the files: they are folded in the order of
their contents' SHA-256.

What equals a single run over all shards:

- Histogram algorithms (HFMG, minmax, percentile, entropy) on a **fixed range**: a histogram whose grid does not
  move adds the counts of each batch bin by bin, and merging two such histograms adds their counts, so the
  merged qparams are bit-identical to one run's. ``grids_from`` (``--range-from STATE``) starts every histogram
  on the range of another state (for example a first, merged pass): data inside it keeps the grid fixed. Without
  it each shard's grid grows with its own data, and the merge re-bins both onto the union (count-preserving,
  but the counts of a bin are split by proportion), so the qparams are close to, not equal to, one run's.
- Exact IFMR stores the samples: a merged state holds every shard's samples (within each calibrator's memory
  budget), in the merge order, not the order of one run, and IFMR's loss sums them in float64 chunk by chunk, so
  a near-tie between two clip candidates can fall the other way (the clip found is the same in practice; the
  tests check it on their data). Past the budget, shards in the histogram mode merge as histograms (above).
- Bias correction's input statistics are not in the state: a config that asks for it is refused.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union


from ferroquant.calibrate import states_from_json, states_to_json
from ferroquant.config import QuantConfig, load_config
from ferroquant.errors import ConfigError, DataError
from ferroquant.onnx.calibration import CalibratedModel, CalibrationData, run_calibration
from ferroquant.onnx.external import model_digest

FORMAT = "ferroquant-calibration-state"
VERSION = 1


@dataclass
class CalibrationState:
    """What a shard observed: the model, config and deploy target it was for, and its calibrators' states."""

    model_sha256: str
    config: Dict[str, Any]
    profile: str
    cpu_types: str
    batches: int
    calibrators: Dict[str, Any]  # tensor -> calibrator

    def key(self) -> tuple:
        return self.model_sha256, json.dumps(self.config, sort_keys=True), self.profile, self.cpu_types

    def to_json(self) -> Dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "model_sha256": self.model_sha256, "config": self.config,
                "profile": self.profile, "cpu_types": self.cpu_types, "batches": self.batches,
                "calibrators": states_to_json(self.calibrators)}


def _check_config(cfg: QuantConfig) -> None:
    if any(c.weight.bias_correction != "none" for c in cfg.layers.values()):
        raise ConfigError("sharded calibration does not carry bias correction's input statistics: calibrate "
                          "without weight.bias_correction, or in one run")
    if cfg.methods.mixed_precision.enabled:
        raise ConfigError("sharded calibration cannot run methods.mixed_precision, which measures every layer on "
                          "calibration data after calibrating: run it in one run")


def state_of(cm: CalibratedModel) -> CalibrationState:
    """The state of a calibrated model (after :func:`~ferroquant.onnx.run_calibration` on a shard)."""
    _check_config(cm.config)
    return CalibrationState(model_digest(cm.model), cm.config.to_json(), cm.profile.name, cm.cpu.name, cm.batches,
                            dict(cm.calibrators))


def start_grids(cm: CalibratedModel, grids: CalibrationState) -> List[str]:
    """Start every empty histogram calibrator of ``cm`` on the range of the same tensor in ``grids`` (a fixed
    grid while the data stays inside it); returns the tensors it could not seed (none in ``grids``, or not a
    histogram calibrator)."""
    missed = []
    for t, cal in cm.calibrators.items():
        other = grids.calibrators.get(t)
        if not hasattr(cal, "start_grid") or other is None or other.counts is None:
            missed.append(t)
            continue
        lo, hi = other.observed_range()
        cal.start_grid(lo, hi)
    return missed


def calibrate_shard(cm: CalibratedModel, data: CalibrationData, max_batches: Optional[int] = None,
                    grids: Optional[CalibrationState] = None, progress: Any = False) -> CalibrationState:
    """Observe ``data`` (one shard) into ``cm``'s calibrators (no search) and return the state to save."""
    _check_config(cm.config)
    if grids is not None:
        if grids.model_sha256 != model_digest(cm.model):
            raise DataError("the range state is for another model (its model_sha256 differs)")
        start_grids(cm, grids)
    run_calibration(cm, data, max_batches, progress)
    return state_of(cm)


def save_state(path: Union[str, Path], state: CalibrationState) -> Path:
    from ferroquant.outputs import write_text

    write_text(Path(path), json.dumps(state.to_json()) + "\n")
    return Path(path)


def _parse(doc: Any, where: str) -> CalibrationState:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{where} is not a ferroquant calibration state (written by `ferroquant calibrate`)")
    if doc.get("version") != VERSION:
        raise DataError(f"{where}: calibration state version {doc.get('version')!r}, this ferroquant reads {VERSION}")
    try:
        return CalibrationState(str(doc["model_sha256"]), dict(doc["config"]), str(doc["profile"]),
                                str(doc["cpu_types"]), int(doc["batches"]), states_from_json(doc["calibrators"], where))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: damaged calibration state ({e!r})") from None


def load_state(path: Union[str, Path]) -> CalibrationState:
    """A state written by :func:`save_state` (a clear :class:`DataError` naming the file otherwise)."""
    return _parse(_read(Path(path))[1], repr(str(path)))


def _read(p: Path) -> tuple:
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read calibration state {str(p)!r}: {e.strerror or e}") from None
    try:
        return hashlib.sha256(raw).hexdigest(), json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{str(p)!r} is not a calibration state (JSON): {e}") from None


def merge_states(paths: Sequence[Union[str, Path]]) -> CalibrationState:
    """The states of ``paths`` merged into one; the same result whatever the order of ``paths`` (folded in the
    order of the files' SHA-256). Refuses states of another model, config, profile or CPU types."""
    if not paths:
        raise DataError("no calibration state to merge")
    return merge_documents([_read(Path(p)) + (str(p),) for p in paths])


def document_digest(doc: Dict[str, Any]) -> str:
    """The SHA-256 of the file :func:`save_state` writes for ``doc`` (a state's ``to_json()``)."""
    return hashlib.sha256((json.dumps(doc) + "\n").encode("utf-8")).hexdigest()


def merge_documents(docs: Sequence[tuple]) -> CalibrationState:
    """:func:`merge_states` on states already read: ``(sha256 of the file, its JSON document, where it came
    from)`` each (:func:`document_digest` gives the SHA-256 of a state that was never written)."""
    if not docs:
        raise DataError("no calibration state to merge")
    docs = sorted(docs, key=lambda d: d[0])
    states = [(_parse(doc, repr(where)), where) for _, doc, where in docs]
    first, first_path = states[0]
    for st, where in states[1:]:
        if st.key() != first.key():
            what = [n for n, a, b in zip(("model", "config", "profile", "cpu types"), st.key(), first.key()) if a != b]
            raise DataError(f"{where!r} was calibrated with another {' and '.join(what)} than {first_path!r}: "
                            "merge only states of one model, config and deploy target")
        if set(st.calibrators) != set(first.calibrators):
            raise DataError(f"{where!r} holds other tensors than {first_path!r}")
        with warnings.catch_warnings():  # one summary below instead of a warning per tensor
            warnings.filterwarnings("ignore", message="IFMR calibrator .* switching to the histogram",
                                    category=RuntimeWarning)
            for t, cal in st.calibrators.items():
                first.calibrators[t].merge(cal)
        first.batches += st.batches
    _warn_switched(first)
    return first


def _warn_switched(state: CalibrationState) -> None:
    """One warning for the IFMR tensors of a merged state that are in the histogram mode."""
    switched = [t for t, c in state.calibrators.items() if getattr(c, "switched", False)]
    if switched:
        names = ", ".join(switched[:3]) + (f" and {len(switched) - 3} more" if len(switched) > 3 else "")
        warnings.warn(f"IFMR: the samples of {len(switched)} activation tensor(s) ({names}) did not fit in their "
                      "memory budget (in a shard, or merged), so their clipping ranges will be searched on a "
                      "histogram of the values, which gives close to (not always exactly) the same ranges; for "
                      "exact IFMR, calibrate fewer or smaller shards, or raise ifmr_memory_budget",
                      RuntimeWarning, stacklevel=2)


def calibrated_from_state(cm: CalibratedModel, state: CalibrationState) -> CalibratedModel:
    """``cm`` (from :func:`~ferroquant.onnx.api.calibration_setup` with the state's config and profile) with the
    state's calibrators: ready for ``table()`` and ``save_model`` (no data: no latency check)."""
    if state.model_sha256 != model_digest(cm.model):
        raise DataError("the calibration state is for another model (its model_sha256 differs from this model's "
                        "after fusion)")
    if set(state.calibrators) != set(cm.calibrators):
        raise DataError(f"the calibration state taps other tensors than this model's config: "
                        f"{sorted(set(state.calibrators) ^ set(cm.calibrators))[:5]}")
    cm.calibrators = dict(state.calibrators)
    cm.batches = state.batches
    return cm


def state_config(state: CalibrationState) -> QuantConfig:
    return load_config(state.config)


__all__ = ["CalibrationState", "calibrate_shard", "calibrated_from_state", "document_digest", "load_state",
           "merge_documents", "merge_states",
           "save_state", "start_grids", "state_config", "state_of"]
