"""Sharded calibration through the CLI: ``calibrate`` one shard each, ``merge`` (in any order), ``quantize
--state`` without data; 4 shards merged give the qparams of one run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli.sensitive import write_case
from tests.cli.test_cli import assert_one_error_line, fq


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    paths = write_case(folder)
    x = np.load(paths["calib"])
    paths["parts"] = []
    for k in range(4):
        paths["parts"].append(folder / f"part_{k}.npy")
        np.save(paths["parts"][-1], x[k * 16:(k + 1) * 16])
    return paths


def _layers(out):
    return json.loads((out / "model_quant_record.json").read_text())["layers"]


def _sharded(case, tmp_path, algo, order, *extra):
    parts = []
    for k, part in enumerate(case["parts"]):
        parts.append(tmp_path / f"{algo}_part_{k}.json")
        fq("calibrate", case["model"], "--calib", part, "--state", parts[-1], "--act-algo", algo, "--batch-size", "8",
           "-q", *extra)
    merged = tmp_path / f"{algo}_merged_{''.join(map(str, order))}.json"
    p = fq("merge", *[parts[i] for i in order], "--out", merged)
    assert "merged 4 states (8 batches, 3 tensors)" in p.stdout
    return merged


@pytest.mark.parametrize("algo", ["hfmg", "percentile"])
def test_four_shards_merged_equal_one_run_on_a_fixed_range(case, tmp_path, algo):
    grid = tmp_path / "range.json"
    fq("calibrate", case["model"], "--calib", case["calib"], "--state", grid, "--act-algo", "minmax", "-q")
    one = tmp_path / "one.json"
    fq("calibrate", case["model"], "--calib", case["calib"], "--state", one, "--act-algo", algo, "--batch-size", "8",
       "--range-from", grid, "-q")
    a = _sharded(case, tmp_path, algo, [0, 1, 2, 3], "--range-from", grid)
    b = _sharded(case, tmp_path, algo, [3, 1, 0, 2], "--range-from", grid)
    assert a.read_bytes() == b.read_bytes()  # the merge does not depend on the order of the files
    fq("quantize", case["model"], "--state", one, "--out", tmp_path / "q1", "-q")
    p = fq("quantize", case["model"], "--state", a, "--out", tmp_path / "q4", "-q")
    assert "calibrated 3 layers on 8 batches" in p.stdout
    assert _layers(tmp_path / "q4") == _layers(tmp_path / "q1")  # bit-identical qparams (JSON floats round-trip)


def test_without_a_fixed_range_the_merge_is_order_independent_and_close(case, tmp_path):
    a = _sharded(case, tmp_path, "hfmg", [0, 1, 2, 3])
    b = _sharded(case, tmp_path, "hfmg", [2, 3, 1, 0])
    assert a.read_bytes() == b.read_bytes()
    fq("quantize", case["model"], "--state", a, "--out", tmp_path / "q4", "-q")
    fq("quantize", case["model"], "--calib", case["calib"], "--act-algo", "hfmg", "--batch-size", "8",
       "--out", tmp_path / "q1", "-q", "--no-latency-check")
    for name, l in _layers(tmp_path / "q4").items():
        one = _layers(tmp_path / "q1")[name]["activation"]
        assert l["activation"]["scale"] == pytest.approx(one["scale"], rel=0.02), name


def test_ifmr_shards_merge_to_the_same_clips(case, tmp_path):
    """Exact IFMR keeps the samples: merged, they are the same values as one run's (in another order, which
    only changes the float64 sums of the loss); here the clips are the same."""
    merged = _sharded(case, tmp_path, "ifmr", [1, 0, 3, 2])
    fq("quantize", case["model"], "--state", merged, "--out", tmp_path / "q4", "-q")
    fq("quantize", case["model"], "--calib", case["calib"], "--batch-size", "8", "--out", tmp_path / "q1", "-q",
       "--no-latency-check")
    for name, l in _layers(tmp_path / "q4").items():
        one = _layers(tmp_path / "q1")[name]["activation"]
        assert (l["activation"]["clip_min"], l["activation"]["clip_max"]) == pytest.approx(
            (one["clip_min"], one["clip_max"]), rel=1e-6), name


def test_bad_states_are_refused_in_one_line(case, tmp_path):
    h = tmp_path / "h.json"
    i = tmp_path / "i.json"
    fq("calibrate", case["model"], "--calib", case["parts"][0], "--state", h, "--act-algo", "hfmg", "-q")
    fq("calibrate", case["model"], "--calib", case["parts"][1], "--state", i, "--act-algo", "ifmr", "-q")
    assert_one_error_line(fq("merge", h, i, "--out", tmp_path / "m.json", check=False), "another config")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert_one_error_line(fq("merge", h, bad, "--out", tmp_path / "m.json", check=False),
                          "not a ferroquant calibration state")
    assert_one_error_line(fq("quantize", case["model"], "--state", h, "--calib", case["calib"], "--out",
                             tmp_path / "o", check=False), "cannot be combined")
    assert_one_error_line(fq("quantize", case["model"], "--out", tmp_path / "o", check=False),
                          "--calib", "--state")
    other = tmp_path / "other.onnx"
    import onnx

    m = onnx.load(str(case["model"]))
    m.graph.initializer[0].raw_data = bytes(len(m.graph.initializer[0].raw_data))
    onnx.save(m, str(other))
    assert_one_error_line(fq("quantize", other, "--state", h, "--out", tmp_path / "o", check=False),
                          "another model")
