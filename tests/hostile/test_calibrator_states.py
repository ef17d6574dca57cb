"""Issue 13, items 9 and 11 (calibrators): tampered or damaged states, state files that are not state files,
and a memory budget no machine has, each raise an error naming the field or the file, at load or construction
time (not a NumPy wrap, a UnicodeDecodeError or a MemoryError at the first observe)."""

import json

import numpy as np
import pytest

from ferroquant.calibrate import HistogramCalibrator, IFMRCalibrator, from_state_dict, load_states, save_states
from ferroquant.errors import DataError, ParameterError


def _ifmr_histogram_state():
    c = IFMRCalibrator("act", mode="histogram", num_of_bins=64)
    c.observe(np.linspace(-1, 3, 1000, dtype=np.float32))
    return c.state_dict()


def test_ifmr_state_counts_length_is_checked():
    d = _ifmr_histogram_state()
    d["counts"] = d["counts"][:10]
    with pytest.raises(ParameterError, match=r"'?act'?.*10 counts, expected 64"):
        IFMRCalibrator.from_state_dict(d)


@pytest.mark.parametrize("kind", ["histogram", "ifmr"])
def test_negative_counts_are_refused(kind):
    if kind == "histogram":
        c = HistogramCalibrator("act", "hfmg", num_of_bins=256)
        c.observe(np.linspace(-1, 3, 1000, dtype=np.float32))
        d = c.state_dict()
    else:
        d = _ifmr_histogram_state()
    counts = d["counts"].astype(np.int64)
    counts[3] = -7
    d["counts"] = counts
    with pytest.raises(ParameterError, match=r"counts.*>= 0.*counts\[3\] = -7"):
        from_state_dict(d)


def test_junk_samples_name_the_field():
    c = IFMRCalibrator("act")
    c.observe(np.ones(10, np.float32))
    d = c.state_dict()
    d["samples"] = ["not", "numbers"]
    with pytest.raises(ParameterError, match="samples"):
        from_state_dict(d)


def test_junk_json_state_file(tmp_path):
    p = tmp_path / "states.json"
    p.write_text('{"act": {"kind": "histogram", ')
    with pytest.raises(DataError, match=r"states\.json.*not a calibrator state file"):
        load_states(p)
    p.write_text(json.dumps([1, 2, 3]))
    with pytest.raises(DataError, match=r"states\.json.*not a calibrator state file"):
        load_states(p)


def test_non_utf8_state_file(tmp_path):
    p = tmp_path / "states.json"
    p.write_bytes(b'{"act": "\xff\xfe"}')
    with pytest.raises(DataError, match=r"states\.json.*not a calibrator state file"):
        load_states(p)


def test_tampered_state_file_names_tensor_and_field(tmp_path):
    c = HistogramCalibrator("act", "hfmg", num_of_bins=256)
    c.observe(np.linspace(-1, 3, 1000, dtype=np.float32))
    p = tmp_path / "states.json"
    save_states(p, {"act": c})
    doc = json.loads(p.read_text())
    doc["act"]["counts"]["data"][5] = -1
    doc["act"]["counts"]["__array__"] = "<i8"
    p.write_text(json.dumps(doc))
    with pytest.raises(ParameterError, match=r"states\.json.*'act'.*counts"):
        load_states(p)


def test_impossible_memory_budget_fails_at_construction():
    with pytest.raises(ParameterError, match=r"memory_budget of 4611686018427387904 bytes is more than"):
        IFMRCalibrator("act", memory_budget=2**62)
