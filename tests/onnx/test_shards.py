"""State files of sharded calibration (:mod:`ferroquant.onnx.shards`) from Python: merged IFMR states that
outgrow their budget give one plain warning, not one per tensor."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ferroquant.calibrate import IFMRCalibrator
from ferroquant.onnx.shards import CalibrationState, merge_states, save_state


def test_merged_ifmr_states_over_budget_warn_once(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        cals = {}
        for t in ("a", "b"):
            cals[t] = IFMRCalibrator(t, memory_budget=3000)
            cals[t].observe(rng.standard_normal(500).astype(np.float32))  # 2000 bytes each: two do not fit
        paths.append(save_state(tmp_path / f"p{k}.json", CalibrationState("m", {"x": 1}, "amct", "s8s8", 1, cals)))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        merged = merge_states(paths)
    ifmr = [str(w.message) for w in seen if "IFMR" in str(w.message)]
    assert len(ifmr) == 1 and ifmr[0].startswith("IFMR: the samples of 2 activation tensor(s) (a, b) did not fit")
    assert merged.batches == 3 and all(c.switched for c in merged.calibrators.values())
    assert merged.calibrators["a"].counts.sum() == 1500
    with pytest.raises(Exception, match="another config"):
        other = CalibrationState("m", {"x": 2}, "amct", "s8s8", 1, {"a": IFMRCalibrator("a")})
        merge_states([paths[0], save_state(tmp_path / "o.json", other)])


def test_smooth_quant_needs_data_so_saved_states_refuse_it():
    """SmoothQuant balances the model on calibration data before the calibrators exist: the flows that build the
    calibrators from saved states (merge, quantize --state) have no data for it and say so."""
    from ferroquant.errors import ConfigError
    from ferroquant.onnx.api import calibration_setup, create_quant_config
    from tests.onnx.test_smooth import _block  # a LayerNorm -> MatMul block

    m = _block(0)
    cfg = create_quant_config(None, m, config_defination={"methods": {"smooth_quant": {"enabled": True}}})
    with pytest.raises(ConfigError, match="smooth_quant.*saved states"):
        calibration_setup(cfg, m)
