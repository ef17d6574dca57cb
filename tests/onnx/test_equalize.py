"""Cross-layer equalization (issue 15): the arithmetic keeps the function of a pair and evens out its channel
ranges (hypothesis); the ONNX pass equalizes Conv -> Relu -> Conv chains (depthwise included), skips ReLU6 unless
allowed to replace it, keeps the FP32 model's outputs (MobileNetV2 with BN folded); config, record and CLI."""

import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from ferroquant.config import build_config
from ferroquant.config.methods import EqualizationParams, methods_from_json
from ferroquant.errors import ConfigError
from ferroquant.examples.models import mobilenet_v2_onnx
from ferroquant.onnx import create_quant_config, quantize_model, read_record, save_model
from ferroquant.onnx.api import prepare_model
from ferroquant.onnx.equalize import equalize, max_relative_difference
from ferroquant.quant.equalize import channel_ranges, equalize_pair
from tests.onnx.builders import make_model, rel_diff, run


def _conv(x, w, b, groups):
    """A 1x1 (pointwise) grouped conv of ``x`` [N, C] with ``w`` [C_out, C/g, 1, 1] as matrices."""
    n, c = x.shape
    c_out, per = w.shape[:2]
    out = np.empty((n, c_out))
    for g in range(groups):
        rows = slice(g * c_out // groups, (g + 1) * c_out // groups)
        out[:, rows] = x[:, g * per:(g + 1) * per] @ w[rows, :, 0, 0].T
    return out + (0 if b is None else b)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c=st.sampled_from([2, 4, 6]), depthwise=st.booleans(),
       bias=st.booleans())
def test_equalize_pair_keeps_the_function_and_evens_the_ranges(seed, c, depthwise, bias):
    rng = np.random.default_rng(seed)
    spread = np.exp(rng.uniform(-3, 3, c))  # channel ranges over ~6 orders of magnitude
    w1 = rng.normal(0, 1, (c, 3, 1, 1)) * spread[:, None, None, None]
    b1 = rng.normal(0, 1, c) * spread if bias else None
    groups = c if depthwise else 1
    w2 = rng.normal(0, 1, (c if depthwise else 5, 1 if depthwise else c, 1, 1))
    x = rng.normal(0, 1, (7, 3))
    before = _conv(np.maximum(_conv(x, w1, b1, 1), 0), w2, None, groups)
    eq = equalize_pair(w1, b1, w2, groups)
    after = _conv(np.maximum(_conv(x, eq.w1, eq.b1, 1), 0), eq.w2, None, groups)
    assert np.all(eq.scales > 0)
    np.testing.assert_allclose(after, before, rtol=1e-9, atol=1e-9 * np.abs(before).max())
    r1, r2 = channel_ranges(eq.w1, eq.w2, groups)
    np.testing.assert_allclose(r1, r2, rtol=1e-9)


def _chain(rng, relu6: bool):
    """x -> Conv 3x3 -> Relu -> depthwise 3x3 -> (ReLU6 | Relu) -> 1x1 -> 1x1 -> y, channel ranges spread."""
    spread = np.exp(rng.uniform(-2, 2, 8)).astype(np.float32)
    inits = {"w1": (rng.normal(0, 0.3, (8, 3, 3, 3)) * spread[:, None, None, None]).astype(np.float32),
             "b1": rng.normal(0, 0.1, 8).astype(np.float32),
             "w2": rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32), "b2": rng.normal(0, 0.1, 8).astype(np.float32),
             "w3": rng.normal(0, 0.3, (6, 8, 1, 1)).astype(np.float32),
             "w4": rng.normal(0, 0.3, (4, 6, 1, 1)).astype(np.float32), "b4": np.zeros(4, np.float32),
             "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    act = (helper.make_node("Clip", ["d", "lo", "hi"], ["da"], name="relu6") if relu6
           else helper.make_node("Relu", ["d"], ["da"], name="relu2"))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["ca"], name="relu1"),
             helper.make_node("Conv", ["ca", "w2", "b2"], ["d"], name="dw", pads=[1] * 4, group=8), act,
             helper.make_node("Conv", ["da", "w3"], ["p"], name="pw"),
             helper.make_node("Conv", ["p", "w4", "b4"], ["y"], name="last")]
    return make_model(nodes, {"x": (2, 3, 6, 6)}, ["y"], inits), {"x": rng.normal(0, 1, (2, 3, 6, 6)).astype(np.float32)}


def test_chain_is_equalized_and_computes_the_same_function():
    rng = np.random.default_rng(0)
    model, feed = _chain(rng, relu6=False)
    out, report = equalize(model)
    pairs = {(p.first, p.activation, p.second) for p in report.pairs}
    assert pairs == {("conv1", "relu1", "dw"), ("dw", "relu2", "pw"), ("pw", "", "last")}
    assert report.rounds >= 2 and not report.relu6_replaced
    assert rel_diff(run(model, feed)[0], run(out, feed)[0]) < 1e-5
    w1 = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}["w1"]
    r_before = np.abs(onnx.numpy_helper.to_array(model.graph.initializer[0])).reshape(8, -1).max(1)
    r_after = np.abs(w1).reshape(8, -1).max(1)
    assert r_after.max() / r_after.min() < r_before.max() / r_before.min() / 2


def test_relu6_pair_is_skipped_unless_replacing_it_is_allowed():
    rng = np.random.default_rng(1)
    model, feed = _chain(rng, relu6=True)
    out, report = equalize(model)
    assert ("dw", "pw") not in {(p.first, p.second) for p in report.pairs}
    assert any(s[1] == "pw" and "relu6_to_relu" in s[2] for s in report.skipped)
    assert rel_diff(run(model, feed)[0], run(out, feed)[0]) < 1e-5
    out6, report6 = equalize(model, EqualizationParams(enabled=True, relu6_to_relu=True))
    assert report6.relu6_replaced == ("relu6",)
    assert [n.op_type for n in out6.graph.node if n.name == "relu6"] == ["Relu"]
    assert ("dw", "relu6", "pw") in {(p.first, p.activation, p.second) for p in report6.pairs}
    # exact against the model with Relu in place of the ReLU6 (same weights: same draws)
    relu_model, _ = _chain(np.random.default_rng(1), relu6=False)
    assert rel_diff(run(relu_model, feed)[0], run(out6, feed)[0]) < 1e-5


def test_a_shared_activation_is_not_equalized():
    rng = np.random.default_rng(2)
    model, _ = _chain(rng, relu6=False)
    model.graph.output.append(helper.make_tensor_value_info("ca", onnx.TensorProto.FLOAT, None))
    _, report = equalize(model)
    assert ("conv1", "dw") not in {(p.first, p.second) for p in report.pairs}
    assert any("graph output" in s[2] for s in report.skipped)


@pytest.fixture(scope="module")
def mobilenet():
    return mobilenet_v2_onnx()


def test_mobilenet_v2_equalized_fp32_outputs_unchanged(mobilenet, tmp_path):
    from ferroquant.examples.photos import calibration_and_eval_sets

    fused = prepare_model(mobilenet).model
    x = calibration_and_eval_sets(1, 8, seed=3).evaluation
    out, report = equalize(fused)
    # torchvision's MobileNetV2 has ReLU6 everywhere: only the projection -> next expansion pairs (no
    # activation between, around the residual Adds they are not taken) are equalized without replacing them
    assert all(p.activation == "" for p in report.pairs)
    ref, got = run(fused, {"input": x})[0], run(out, {"input": x})[0]
    assert max_relative_difference(ref, got) < 1e-4
    out6, report6 = equalize(fused, EqualizationParams(enabled=True, relu6_to_relu=True))
    assert len(report6.relu6_replaced) >= 17 and len(report6.pairs) > len(report.pairs)
    diff6 = max_relative_difference(ref, run(out6, {"input": x})[0])
    assert np.isfinite(diff6)  # changed where ReLU6 clipped: the value is reported by the bench


def test_config_methods_section_round_trips_and_validates():
    cfg = build_config([("c", "Conv")], methods={"equalization": {"enabled": True, "relu6_to_relu": True}})
    d = cfg.to_json()
    assert d["methods"] == {"equalization": {"enabled": True, "relu6_to_relu": True}}
    assert "methods" not in build_config([("c", "Conv")]).to_json()
    with pytest.raises(ConfigError, match="equalization.iteration"):
        methods_from_json({"equalization": {"iteration": 3}})
    with pytest.raises(ConfigError, match="unknown keys"):
        methods_from_json({"clip_search": {}})  # (mixed_precision is a section now)
    with pytest.raises(ConfigError, match="enabled"):
        methods_from_json({"equalization": {"enabled": "yes"}})


def test_quantize_with_equalization_writes_it_into_the_record(tmp_path):
    rng = np.random.default_rng(4)
    model, _ = _chain(rng, relu6=False)
    calib = [{"x": rng.normal(0, 1, (2, 3, 6, 6)).astype(np.float32)} for _ in range(2)]
    cfg = create_quant_config(None, model, config_defination={"methods": {"equalization": {"enabled": True}}})
    cm = quantize_model(cfg, model, calib, profile="amct")
    paths = save_model(cm, tmp_path / "m")
    rec = read_record(paths["record"])
    pairs = json.loads(paths["record"].read_text())["extra"]["methods"]["equalization"]["pairs"]
    assert len(pairs) == 3 and rec is not None
    plain = quantize_model(create_quant_config(None, model), model, calib, profile="amct")
    assert plain.methods == {}


def test_cli_equalize_flag(tmp_path):
    from ferroquant.cli import main

    rng = np.random.default_rng(5)
    model, _ = _chain(rng, relu6=True)
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", rng.normal(0, 1, (4, 3, 6, 6)).astype(np.float32))
    rc = main(["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"), "--out",
               str(tmp_path / "out"), "--no-report", "--profile", "amct", "--equalize", "--relu6-to-relu", "-q"])
    assert rc == 0
    rec = json.loads(next((tmp_path / "out").glob("*_quant_record.json")).read_text())
    assert rec["extra"]["methods"]["equalization"]["relu6_replaced"] == ["relu6"]
    assert rec["extra"]["methods"]["equalization"]["fp32_max_relative_difference"] >= 0
    rc = main(["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"), "--out",
               str(tmp_path / "o2"), "--relu6-to-relu", "-q"])
    assert rc != 0 and not (tmp_path / "o2").exists()


def _conv_bn_relu_conv(rng):
    """x (uniform in [-1, 1]) -> 1x1 Conv -> BN (statistics of the data; beta - 3|gamma| > 0 on some channels)
    -> Relu -> 1x1 Conv -> y: the pre-activation never drops below beta - 3|gamma| (|w.x| <= 3 std of w.x)."""
    w1 = rng.normal(0, 1, (4, 3, 1, 1)).astype(np.float32)
    var = (np.square(w1).reshape(4, 3).sum(1) / 3).astype(np.float32)
    inits = {"w1": w1, "b1": np.zeros(4, np.float32), "bn.scale": np.array([0.5, -1.0, 2.0, 0.3], np.float32),
             "bn.bias": np.array([3.0, 1.0, 2.0, -1.0], np.float32), "bn.mean": np.zeros(4, np.float32),
             "bn.var": var, "w2": rng.normal(0, 1, (2, 4, 1, 1)).astype(np.float32),
             "b2": np.zeros(2, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1"),
             helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["n"],
                              name="bn", epsilon=0.0),
             helper.make_node("Relu", ["n"], ["a"], name="relu"),
             helper.make_node("Conv", ["a", "w2", "b2"], ["y"], name="conv2")]
    return make_model(nodes, {"x": ("N", 3, 5, 5)}, ["y"], inits)


def test_bias_absorption_moves_the_always_positive_part_of_the_bias():
    from ferroquant.onnx.methods import bn_statistics

    rng = np.random.default_rng(6)
    prepared = prepare_model(_conv_bn_relu_conv(rng))
    stats = bn_statistics(prepared.fusion)
    assert set(stats) == {"conv1"}
    assert equalize(prepared.model, EqualizationParams(enabled=True), stats)[1].absorbed == ()  # off by default
    out, report = equalize(prepared.model, EqualizationParams(enabled=True, bias_absorption=True), stats)
    # channels 0 and 1 have beta - 3|gamma| = 1.5 and -2: only channel 0 moves (channel 2: 2 - 6 < 0)
    assert report.absorbed == (("conv1", "conv2", 1),)
    x = rng.uniform(-1, 1, (16, 3, 5, 5)).astype(np.float32)
    assert rel_diff(run(prepared.model, {"x": x})[0], run(out, {"x": x})[0]) < 1e-5
    off, _ = equalize(prepared.model, EqualizationParams(enabled=True, bias_absorption=False), stats)
    assert rel_diff(run(prepared.model, {"x": x})[0], run(off, {"x": x})[0]) < 1e-5

    def bias(m):
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
        return inits[m.graph.node[0].input[2]]

    moved = bias(off) - bias(out)
    assert moved[0] > 0.1 and np.all(moved[1:] == 0)
