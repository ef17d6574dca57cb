"""Weight-only export (issue 12, item 4): group-wise int4/int8 MatMul/Gemm weights by RTN, GPTQ and AWQ,
written as onnxruntime's MatMulNBits and as opset-21 blocked DequantizeLinear. The exported model computes
exactly what the quantized weights say (``x @ dequantize(codes)``, AWQ's input divided by its scales),
statistics stream from calibration taps, the record lists every group's scale, and bad input is a clear
error naming the layer."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from onnx import TensorProto, helper, numpy_helper

import ferroquant as fq
from ferroquant import ops
from ferroquant.config import WeightOnlyConfig
from ferroquant.config.fields import FieldError
from ferroquant.errors import ConfigError, DataError, NonFiniteError
from ferroquant.onnx import WeightOnlyModel, quantize_model, quantize_weight_only, save_model
from ferroquant.onnx.weight_only import quantize_weights_only
from ferroquant.quant.weight_only import RowSample, pack_nibbles

K, N, M = 200, 48, 40  # K = 200 is not a multiple of the group sizes tested


def _model(seed: int = 0) -> onnx.ModelProto:
    """x [2, 5, K] -> MatMul (B [K, N]) -> Relu -> Reshape [10, N] -> Gemm (transB, bias) -> y [10, M]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((M, N)).astype(np.float32) / 4, "w2"),
             numpy_helper.from_array(rng.standard_normal(M).astype(np.float32), "b2"),
             numpy_helper.from_array(np.array([10, N], np.int64), "shape")]
    g = helper.make_graph([
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["r2"], name="flat"),
        helper.make_node("Gemm", ["r2", "w2", "b2"], ["y"], name="fc2", transB=1)],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10, M])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(n: int, seed: int = 1, outlier: bool = True) -> list:
    rng = np.random.default_rng(seed)
    gain = np.ones(K, np.float32)
    if outlier:
        gain[[3, 70]] = 15.0  # a few large input channels, as in transformer activations
    return [{"x": (rng.standard_normal((2, 5, K)) * gain).astype(np.float32)} for _ in range(n)]


def _session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _simulate(wom: WeightOnlyModel, x: np.ndarray) -> np.ndarray:
    """What the quantized weights say, in NumPy float64."""
    q1, q2 = wom.quants["fc1"], wom.quants["fc2"]
    x1 = x if q1.input_divisor is None else x / q1.input_divisor
    h = np.maximum(x1.astype(np.float64) @ q1.quant.dequantize(), 0).reshape(10, N)
    h2 = h if q2.input_divisor is None else h / q2.input_divisor
    b2 = numpy_helper.to_array(wom.model.graph.initializer[2])
    return h2 @ q2.quant.dequantize() + b2


@pytest.mark.parametrize("algorithm,bits,symmetric,group_size", [
    ("rtn", 4, False, 64), ("rtn", 8, True, 32), ("gptq", 4, True, 64), ("gptq", 8, False, 128),
    ("awq", 4, False, 32), ("awq", 4, True, 128)])
def test_matmulnbits_computes_the_quantized_weights(algorithm, bits, symmetric, group_size):
    m, x = _model(), _feeds(1, seed=9)[0]["x"]
    cfg = WeightOnlyConfig(algorithm, bits, group_size, symmetric)
    wom = quantize_weights_only(m, cfg, _feeds(3))
    out = wom.export()
    assert sorted(n.op_type for n in out.graph.node).count("MatMulNBits") == 2
    assert ("Div" in [n.op_type for n in out.graph.node]) == (algorithm == "awq")
    assert {i.name for i in out.graph.initializer}.isdisjoint({"w1", "w2"})  # the float weights are gone
    got = _session(out).run(None, {"x": x})[0]
    want = _simulate(wom, x)
    assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    fp = _session(m).run(None, {"x": x})[0]
    rel = np.linalg.norm(got - fp) / np.linalg.norm(fp)
    assert rel < (0.2 if bits == 4 else 0.02)


@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_blocked_dequantize_linear(bits, symmetric):
    m, x = _model(), _feeds(1, seed=9)[0]["x"]
    wom = quantize_weights_only(m, WeightOnlyConfig("rtn", bits, 48, symmetric, format="qdq"))
    out = wom.export()
    onnx.checker.check_model(out)
    assert [o.version for o in out.opset_import if o.domain in ("", "ai.onnx")] == [21]
    dqs = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2 and all(helper.get_attribute_value(a) == 48 for n in dqs for a in n.attribute
                                  if a.name == "block_size")
    want = _simulate(wom, x)
    # each DequantizeLinear as written (onnxruntime's optimizer would fuse DQ + MatMul into MatMulNBits with
    # 8-bit activations, its default accuracy level for that fusion)
    got = _session(out, optimize=False).run(None, {"x": x})[0]
    assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_accuracy_level_is_written_and_runs():
    m, x = _model(), _feeds(1, seed=9)[0]["x"]
    out = quantize_weights_only(m, WeightOnlyConfig(accuracy_level=4)).export()
    nodes = [n for n in out.graph.node if n.op_type == "MatMulNBits"]
    assert all(helper.get_attribute_value(a) == 4 for n in nodes for a in n.attribute if a.name == "accuracy_level")
    assert sum(a.name == "accuracy_level" for n in nodes for a in n.attribute) == 2
    fp = _session(m).run(None, {"x": x})[0]
    got = _session(out).run(None, {"x": x})[0]
    assert np.linalg.norm(got - fp) / np.linalg.norm(fp) < 0.2
    with pytest.raises(FieldError, match="accuracy_level"):
        WeightOnlyConfig(accuracy_level=5)


def test_nibble_packing_is_low_first():
    assert_array_equal(pack_nibbles(np.array([[1, 2, 3]], np.uint8)), [[0x21, 0x03]])
    assert_array_equal(pack_nibbles(np.array([-1, 7], np.int8)), [0x7F])


def test_gptq_hessian_comes_from_the_taps_and_batch_num_is_respected():
    m, feeds = _model(), _feeds(5)
    wom = quantize_weights_only(m, WeightOnlyConfig("gptq", batch_num=3), feeds)
    assert wom.batches == 3 and wom.quants["fc1"].details["rows"] == 30
    assert wom.quants["fc1"].details["act_order"] is True  # the default: groups static, same model size
    x = np.concatenate([f["x"].reshape(-1, K) for f in feeds[:3]]).astype(np.float64)
    acc = ops.HessianAccumulator(K)
    acc.observe(x.astype(np.float32))
    w = numpy_helper.to_array(m.graph.initializer[0])
    direct = ops.gptq(w, acc.hessian(), ops.GroupSpec(4, 128, False), act_order=True)
    assert_array_equal(wom.quants["fc1"].quant.codes, direct.quant.codes)
    plain = quantize_weights_only(m, WeightOnlyConfig("gptq", batch_num=3, act_order=False), feeds)
    assert_array_equal(plain.quants["fc1"].quant.codes,
                       ops.gptq(w, acc.hessian(), ops.GroupSpec(4, 128, False)).quant.codes)


def test_gptq_and_awq_beat_rtn_on_outlier_inputs():
    m, feeds, x = _model(), _feeds(60), _feeds(4, seed=7)
    fp = [_session(m).run(None, f)[0] for f in x]

    def err(algorithm):
        s = _session(quantize_weights_only(m, WeightOnlyConfig(algorithm, 4, 32, clip_search=False), feeds).export())
        return sum(float(np.sum((s.run(None, f)[0] - r) ** 2)) for f, r in zip(x, fp))

    rtn = err("rtn")
    assert err("gptq") < rtn and err("awq") < rtn


def test_the_record_lists_every_group(tmp_path):
    wom = quantize_weight_only(WeightOnlyConfig("awq", group_size=64), _model(), _feeds(2))
    paths = save_model(wom, tmp_path / "m")
    rec = json.loads(paths["record"].read_text())
    assert rec["kind"] == "weight_only" and rec["config"]["algorithm"] == "awq"
    for name, (k, n) in (("fc1", (K, N)), ("fc2", (N, M))):
        e, q = rec["layers"][name], wom.quants[name].quant
        assert (e["k"], e["n"], e["groups"]) == (k, n, -(-k // 64))
        assert_array_equal(np.array(e["scale"], np.float32), q.scale.T)  # shortest decimals read back exactly
        assert_array_equal(np.array(e["zero_point"]), q.zero_point.T)
        assert len(e["input_divisor"]) == k and 0 <= e["alpha"] < 1
    assert paths["deploy"].is_file()


def test_nan_in_calibration_names_the_layer():
    feeds = _feeds(2)
    feeds[1]["x"][1, 2, 5] = np.nan
    for algorithm in ("gptq", "awq"):
        with pytest.raises(NonFiniteError, match=r"x \(input of fc1\)"):
            quantize_weights_only(_model(), WeightOnlyConfig(algorithm), feeds)


def test_row_sample_is_bounded_and_deterministic():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((37, 4)).astype(np.float32) for _ in range(10)]
    a, b = RowSample(4, 50, "t"), RowSample(4, 50, "t")
    for x in batches:
        a.observe(x)
        b.observe(x)
    assert a.rows.shape == (50, 4) and a.seen == 370
    assert_array_equal(a.rows, b.rows)
    every = np.concatenate(batches)
    assert all(any(np.array_equal(r, e) for e in every) for r in a.rows)
    assert np.mean([any(np.array_equal(r, e) for r in a.rows) for e in every[:37]]) < 0.5  # not just the first rows
    small = RowSample(4, 500)
    small.observe(batches[0])
    assert_array_equal(small.rows, batches[0])


def test_config_and_api_errors():
    with pytest.raises(FieldError, match="group_size.*power of two"):
        WeightOnlyConfig(group_size=100)
    WeightOnlyConfig(group_size=100, format="qdq")
    with pytest.raises(FieldError, match="'bits'"):
        WeightOnlyConfig(bits=3)
    with pytest.raises(FieldError, match="weight_only.alpha"):
        quantize_weight_only({"weight_only": {"alpha": 0.5}}, _model())
    with pytest.raises(DataError, match="gptq needs calibration data"):
        quantize_weight_only(WeightOnlyConfig("gptq"), _model())
    with pytest.raises(ConfigError, match="skip_layers"):
        quantize_weight_only(WeightOnlyConfig(skip_layers=("nope",)), _model())
    with pytest.raises(ConfigError, match="either"):
        quantize_model({"batch_num": 1}, _model(), _feeds(1), weight_only=True)


def test_one_call_config_section_and_skip(tmp_path):
    cfg_path = WeightOnlyConfig("gptq", 8, 32, skip_layers=("fc2",)).save(tmp_path / "wo.json")
    wom = quantize_model(cfg_path, _model(), _feeds(2))
    assert isinstance(wom, WeightOnlyModel) and list(wom.quants) == ["fc1"]
    out = fq.quantize(_model(), _feeds(2), tmp_path / "q.onnx", weight_only=WeightOnlyConfig("awq"))
    assert out["paths"]["deploy"] == tmp_path / "q.onnx" and out["layers"] == 2 and out["batches"] == 2
    s = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    assert s.run(None, _feeds(1)[0])[0].shape == (10, M)
