"""Issue 13, item 5: AMCT's scale guard (a scale below FLT_EPSILON becomes 1.0) turns tiny weights or
activations into all-zero codes. It stays (AMCT's rule), but it is no longer silent: one warning per model names
every tensor it hit, and the record lists them."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ferroquant as fq


def _gemm(w: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[0]])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(tmp_path, w: np.ndarray, x_scale: float):
    rng = np.random.default_rng(0)
    feeds = [{"x": (rng.standard_normal((16, w.shape[1])) * x_scale).astype(np.float32)} for _ in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fq.quantize(_gemm(w), feeds, str(tmp_path / "m.onnx"), profile="amct")
    guard = [str(c.message) for c in caught if "FLT_EPSILON" in str(c.message)]
    record = json.loads(res["paths"]["record"].read_text())
    return guard, record


@pytest.fixture()
def w():
    return np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)


def test_tiny_weights_are_named_in_a_warning_and_the_record(tmp_path, w):
    guard, record = _run(tmp_path, w * 3e-6 / np.abs(w).max(), 1.0)
    assert len(guard) == 1 and "'w'" in guard[0] and "fc" in guard[0], guard
    assert record["extra"]["scale_guard"] == [{"layer": "fc", "tensor": "w", "kind": "weight"}]


def test_a_tiny_activation_is_named_in_a_warning_and_the_record(tmp_path, w):
    guard, record = _run(tmp_path, w, 1e-6)
    assert len(guard) == 1 and "'x'" in guard[0], guard
    assert record["extra"]["scale_guard"] == [{"layer": "fc", "tensor": "x", "kind": "activation"}]


def test_ordinary_and_all_zero_tensors_do_not_warn(tmp_path, w):
    w = w.copy()
    w[3] = 0.0  # a pruned channel: zero codes are the right answer, nothing to say
    guard, record = _run(tmp_path, w, 1.0)
    assert guard == [] and record["extra"]["scale_guard"] == []
