"""Accuracy-driven fallback: on a model where plain int8 misses max_drop, the search keeps the one sensitive
layer in float and meets it; saves config, models and a summary."""

from __future__ import annotations

import importlib.util
import json

import onnxruntime as ort
import pytest

from ferroquant.autocal import accuracy_based_auto_calibration
from ferroquant.config import load_config
from ferroquant.errors import ConfigError, DataError
from tests.cli.sensitive import feeds, write_case


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    paths = write_case(tmp_path_factory.mktemp("autocal"))
    spec = importlib.util.spec_from_file_location("evaluator", paths["evaluator"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    paths["evaluate"] = mod.evaluate
    return paths


def test_fallback_meets_max_drop_where_int8_does_not(case, tmp_path):
    calls = []

    def evaluate(path):
        calls.append(path)
        return case["evaluate"](path)

    res = accuracy_based_auto_calibration(case["model"], evaluate, None, feeds(), 0.02, tmp_path)
    assert res.fp32_metric == 1.0 and res.fp32_metric - res.quantized_metric > 0.02  # plain int8 fails
    assert res.float_layers == ["fc2"] and res.met and res.drop <= 0.02  # one float layer meets it
    assert len(calls) <= 4  # FP32, k=0, then a binary search over 3 layers
    summary = json.loads(res.paths["summary"].read_text())
    assert summary["num_float_layers"] == 1 and summary["num_quantized_layers"] == 2
    assert summary["final_metric"] == res.final_metric and summary["trials"][0]["float_layers"] == 0
    cfg = load_config(res.paths["config"])
    assert cfg.enabled_layers() == ["fc1", "fc3"]
    assert case["evaluate"](res.paths["deploy"]) >= 0.98
    ort.InferenceSession(str(res.paths["fake_quant"]), providers=["CPUExecutionProvider"])


def test_loose_max_drop_keeps_everything_quantized(case, tmp_path):
    res = accuracy_based_auto_calibration(case["model"], case["evaluate"], None, feeds(), 1.0, tmp_path)
    assert res.float_layers == [] and res.final_metric == res.quantized_metric
    assert res.paths["deploy"].is_file()


def test_bad_arguments(case, tmp_path):
    with pytest.raises(ConfigError, match="max_drop"):
        accuracy_based_auto_calibration(case["model"], case["evaluate"], None, feeds(), -1, tmp_path)
    with pytest.raises(DataError, match="finite number"):
        accuracy_based_auto_calibration(case["model"], lambda p: "good", None, feeds(), 0.1, tmp_path)


def test_mixed_precision_meets_max_drop_without_float_layers(case, tmp_path):
    from ferroquant.onnx import create_quant_config

    def config(share):
        return create_quant_config(None, str(case["model"]), config_defination={
            "methods": {"mixed_precision": {"enabled": True, "int8_compute_share": share}}})

    res = accuracy_based_auto_calibration(case["model"], case["evaluate"], config(0.0), feeds(), 0.02, tmp_path / "a")
    rec = json.loads(res.paths["record"].read_text())["extra"]["methods"]["mixed_precision"]["layers"]
    assert rec["fc2"]["activation_bits"] == 16  # the 16-bit grid resolves fc2's ordinary inputs beside the 1000
    assert res.float_layers == [] and res.met and res.quantized_metric >= 0.98
    assert load_config(res.paths["config"]).layers["fc2"].activation.bits == 16
    # fc2 holds 55% of the MACs: with at most 50% of them on 16-bit inputs, it falls back to float as before
    res = accuracy_based_auto_calibration(case["model"], case["evaluate"], config(0.5), feeds(), 0.02, tmp_path / "b")
    assert res.float_layers == ["fc2"] and res.met
