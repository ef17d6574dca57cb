"""SmoothQuant balancing for static int8 (issue 12): the pass finds LayerNorm -> MatMul groups (and says why it
skips the others), folds the scales into the LayerNorm's scale/bias and the MatMul weights without changing the
float model, lowers the int8 error of a model whose LayerNorm output has outlier channels, records what it did,
and reads one-shot calibration data twice; bad data and bad settings are clear errors."""

import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from ferroquant.config.methods import SmoothQuantParams, methods_from_json
from ferroquant.errors import ConfigError, NonFiniteError
from ferroquant.onnx import create_quant_config, quantize_model, save_model
from ferroquant.onnx.graph import GraphView
from ferroquant.onnx.smooth import balance, smooth_groups
from tests.onnx.builders import make_model, rel_diff, run

K = 32


def _block(seed: int, outlier: float = 30.0, rms: bool = False):
    """x [B, T, K] -> ln1 -> {q, v} MatMuls; x -> ln2 -> fc MatMul and a residual Add (ln2 cannot be balanced).
    ln1's scale has two outlier channels (``outlier`` x) whose weight rows are as much smaller, as in trained
    transformers: the outliers take the int8 range of the activation without dominating the output."""
    rng = np.random.default_rng(seed)
    g1 = rng.uniform(0.5, 1.5, K).astype(np.float32)
    g1[[3, 17]] *= outlier
    inits = {"g1": g1, "b1": rng.normal(0, 0.1, K).astype(np.float32),
             "g2": rng.uniform(0.5, 1.5, K).astype(np.float32), "b2": rng.normal(0, 0.1, K).astype(np.float32),
             "wq": rng.normal(0, 0.2, (K, K)).astype(np.float32),
             "wv": rng.normal(0, 0.2, (K, 48)).astype(np.float32),
             "wf": rng.normal(0, 0.2, (K, 16)).astype(np.float32)}
    inits["wq"][[3, 17]] /= outlier  # the outlier channels' weight rows are small: every channel matters
    inits["wv"][[3, 17]] /= outlier
    if rms:
        ln1 = helper.make_node("RMSNormalization", ["x", "g1"], ["h"], name="ln1", axis=-1)
        del inits["b1"]
    else:
        ln1 = helper.make_node("LayerNormalization", ["x", "g1", "b1"], ["h"], name="ln1", axis=-1)
    nodes = [ln1,
             helper.make_node("MatMul", ["h", "wq"], ["yq"], name="q"),
             helper.make_node("MatMul", ["h", "wv"], ["yv"], name="v"),
             helper.make_node("LayerNormalization", ["x", "g2", "b2"], ["h2"], name="ln2", axis=-1),
             helper.make_node("MatMul", ["h2", "wf"], ["yf"], name="fc"),
             helper.make_node("Add", ["h2", "x"], ["r"], name="res")]
    return make_model(nodes, {"x": ["B", 16, K]}, ["yq", "yv", "yf", "r"], inits, opset=23 if rms else 17)


def _data(seed: int, n: int = 6):
    rng = np.random.default_rng(seed + 1)
    return [{"x": rng.normal(0, 1, (4, 16, K)).astype(np.float32)} for _ in range(n)]


def test_groups_take_layernorm_read_only_by_matmuls_and_say_why_others_are_skipped():
    groups, skipped = smooth_groups(_block(0))
    assert [(g.norm, g.layers, g.weights, g.scale, g.bias) for g in groups] == [
        ("ln1", ("q", "v"), ("wq", "wv"), "g1", "b1")]
    assert [n for n, _ in skipped] == ["ln2"] and "Add 'res'" in skipped[0][1]


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), alpha=st.sampled_from([None, 0.0, 0.5, 0.85, 1.0]), rms=st.booleans())
def test_balancing_keeps_the_float_model_and_folds_the_scales(seed, alpha, rms):
    model = _block(seed, rms=rms)
    data = _data(seed, 2)
    out, done, _ = balance(model, SmoothQuantParams(enabled=True, alpha=alpha), data)
    assert [d.norm for d in done] == ["ln1"]
    for a, b in zip(run(model, data[0]), run(out, data[0])):
        assert rel_diff(a, b) < 1e-5
    init = lambda m, n: next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == n)  # noqa: E731
    s = init(model, "g1") / init(out, "g1")
    np.testing.assert_allclose(init(out, "wq"), init(model, "wq") * s[:, None], rtol=1e-5)
    np.testing.assert_allclose(init(out, "wv"), init(model, "wv") * s[:, None], rtol=1e-5)
    np.testing.assert_array_equal(init(out, "g2"), init(model, "g2"))  # ln2 is left alone
    assert done[0].alpha == (alpha if alpha is not None else done[0].alpha)
    assert done[0].scale_min == pytest.approx(float(s.min()), rel=1e-5)



def _gemm_block(seed: int):
    """x [B, 16, K] -> LayerNorm, read by a Shape and, through a Reshape to ``[B*16, K]``, by a Gemm with a
    ``[K, N]`` weight (GPT-2's Conv1D as torch exports it) and a Gemm with ``transB`` (``[N, K]``)."""
    rng = np.random.default_rng(seed)
    g = rng.uniform(0.5, 1.5, K).astype(np.float32)
    g[[3, 17]] *= 30.0
    inits = {"g": g, "b": rng.normal(0, 0.1, K).astype(np.float32), "shape": np.array([-1, K], np.int64),
             "wt": rng.normal(0, 0.2, (24, K)).astype(np.float32), "bt": rng.normal(0, 0.1, 24).astype(np.float32),
             "wc": rng.normal(0, 0.2, (K, 40)).astype(np.float32), "bc": rng.normal(0, 0.1, 40).astype(np.float32)}
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["h"], name="ln", axis=-1),
             helper.make_node("Shape", ["h"], ["hs"], name="size"),  # reads no values
             helper.make_node("Reshape", ["h", "shape"], ["h2"], name="flat"),
             helper.make_node("Gemm", ["h2", "wc", "bc"], ["yc"], name="conv1d"),
             helper.make_node("Gemm", ["h2", "wt", "bt"], ["yt"], name="linear", transB=1)]
    return make_model(nodes, {"x": ["B", 16, K]}, ["yc", "yt"], inits, opset=17)


def _balanced_exactly(model):
    """Balance ``model`` (norm scale ``g``, inputs ``x`` [B, 16, K]) at alpha 0.5; check that the float outputs
    stay within 1e-5 and that the outlier channels moved. Returns (initializer by name, before=...) and the
    scales."""
    data = [{"x": np.random.default_rng(i).normal(0, 1, (2, 16, K)).astype(np.float32)} for i in range(2)]
    out, _, _ = balance(model, SmoothQuantParams(enabled=True, alpha=0.5), data)
    for a, b in zip(run(model, data[0]), run(out, data[0])):
        assert rel_diff(a, b) < 1e-5

    def init(name, before=False):
        m = model if before else out
        return next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == name)
    s = init("g", before=True) / init("g")
    assert s.max() / s.min() > 2  # the outlier channels moved
    return init, s


def test_gemm_readers_through_a_reshape_are_balanced_exactly():
    model = _gemm_block(3)
    groups, skipped = smooth_groups(model)
    assert skipped == []
    assert [(g.norm, g.layers, g.weights, g.transposed) for g in groups] == [
        ("ln", ("conv1d", "linear"), ("wc", "wt"), (False, True))]
    init, s = _balanced_exactly(model)
    np.testing.assert_allclose(init("wc"), init("wc", before=True) * s[:, None], rtol=1e-5)
    np.testing.assert_allclose(init("wt"), init("wt", before=True) * s[None, :], rtol=1e-5)


def _rms_block(seed: int):
    """x [B, 16, K] -> RMSNorm written out in elementary ops as torch exports Llama's (``x / sqrt(mean(x^2) + eps)``
    then ``Mul`` by the per-channel weight, no bias) -> {q, v} MatMuls."""
    rng = np.random.default_rng(seed)
    g = rng.uniform(0.5, 1.5, K).astype(np.float32)
    g[[3, 17]] *= 30.0
    inits = {"two": np.array(2.0, np.float32), "eps": np.array(1e-6, np.float32), "g": g,
             "wq": rng.normal(0, 0.2, (K, K)).astype(np.float32), "wv": rng.normal(0, 0.2, (K, 48)).astype(np.float32)}
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]),
             helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Div", ["x", "rms"], ["xn"]),
             helper.make_node("Mul", ["g", "xn"], ["h"], name="norm_weight"),
             helper.make_node("MatMul", ["h", "wq"], ["yq"], name="q"),
             helper.make_node("MatMul", ["h", "wv"], ["yv"], name="v")]
    return make_model(nodes, {"x": ["B", 16, K]}, ["yq", "yv"], inits, opset=17)


def test_a_written_out_rmsnorm_is_balanced_through_its_weight_mul():
    model = _rms_block(4)
    groups, skipped = smooth_groups(model)
    assert skipped == []
    assert [(g.norm, g.layers, g.weights, g.scale, g.bias) for g in groups] == [
        ("norm_weight", ("q", "v"), ("wq", "wv"), "g", None)]
    init, s = _balanced_exactly(model)
    np.testing.assert_allclose(init("wq"), init("wq", before=True) * s[:, None], rtol=1e-5)


def _int8_error(model, data, methods, tmp_path, tag):
    cfg = create_quant_config(None, model, batch_num=None, config_defination={"methods": methods})
    cm = quantize_model(cfg, model, data, profile="onnxruntime", cpu_types="u8s8")
    paths = save_model(cm, tmp_path / tag, latency_check=False)
    deploy = onnx.load(str(paths["deploy"]))
    feed = _data(99, 1)[0]
    errs = [rel_diff(a, b) for a, b in zip(run(model, feed), run(deploy, feed))]
    return errs, json.loads(paths["record"].read_text())


def test_static_int8_with_balancing_has_a_smaller_error_on_outlier_channels(tmp_path):
    model, data = _block(1, outlier=60.0), _data(1)
    plain, _ = _int8_error(model, data, {}, tmp_path, "plain")
    smooth, record = _int8_error(model, data, {"smooth_quant": {"enabled": True}}, tmp_path, "smooth")
    # the outputs of the balanced MatMuls (q, v) lose less; fc after ln2 is unchanged
    assert smooth[0] < 0.6 * plain[0] and smooth[1] < 0.6 * plain[1]
    entry = record["extra"]["methods"]["smooth_quant"]
    assert [g["layers"] for g in entry["groups"]] == [["q", "v"]]
    assert entry["groups"][0]["loss"] < entry["groups"][0]["loss_unbalanced"]
    assert entry["fp32_max_relative_difference"] < 1e-5
    assert [s["norm"] for s in entry["skipped"]] == ["ln2"]


def test_the_search_models_the_weights_bits_the_cpu_types_deploy():
    """u8s7 (onnxruntime's kernels on CPUs without VNNI) deploys 7-bit weights: the alpha search weighs their
    error, not an 8-bit one's, and the record says which it modelled."""
    model, data = _block(1, outlier=60.0), _data(1)
    cfg = create_quant_config(None, model, batch_num=None, config_defination={"methods": {"smooth_quant": {
        "enabled": True}}})
    groups = {t: quantize_model(cfg, model, data, profile="onnxruntime", cpu_types=t).methods["smooth_quant"][
        "groups"][0] for t in ("u8s8", "u8s7")}
    assert groups["u8s8"]["weight_bits"] == 8 and groups["u8s7"]["weight_bits"] == 7
    assert groups["u8s7"]["loss_unbalanced"] > groups["u8s8"]["loss_unbalanced"]


def test_one_shot_calibration_data_is_read_once_for_balancing_and_calibration(tmp_path):
    model, data = _block(2), _data(2, 3)
    cfg = create_quant_config(None, model, batch_num=None,
                              config_defination={"methods": {"smooth_quant": {"enabled": True, "alpha": 0.5}}})
    cm = quantize_model(cfg, model, iter(data))
    assert cm.batches == 3
    assert cm.methods["smooth_quant"]["groups"][0]["alpha"] == 0.5


def test_nan_in_calibration_activations_names_the_tensor():
    model, data = _block(3), _data(3, 1)
    data[0]["x"][0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"h \(output of ln1\)"):
        balance(model, SmoothQuantParams(enabled=True), data)


@pytest.mark.parametrize("section,field", [({"alpha": 1.5}, "smooth_quant.alpha"),
                                           ({"alphas": []}, "smooth_quant.alphas"),
                                           ({"max_rows": 0}, "smooth_quant.max_rows"),
                                           ({"alpah": 0.5}, "smooth_quant.alpah")])
def test_bad_settings_are_config_errors_naming_the_field(section, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        methods_from_json({"smooth_quant": section})


def test_the_config_names_it_among_the_methods_in_use():
    """What the torch PTQ flow reads to refuse the methods it does not apply (by name)."""
    cfg = create_quant_config(None, _block(5), config_defination={"methods": {"smooth_quant": {"enabled": True}}})
    assert cfg.methods_in_use() == ["methods.smooth_quant"]
    assert create_quant_config(None, _block(5)).methods_in_use() == []


def test_the_section_round_trips_and_is_off_by_default():
    assert methods_from_json({}).smooth_quant == SmoothQuantParams()
    cfg = methods_from_json({"smooth_quant": {"enabled": True, "alphas": [0.25, 0.5]}})
    assert cfg.smooth_quant.alphas == (0.25, 0.5)
    assert methods_from_json(cfg.to_json()) == cfg


def test_cli_smooth_quant_flag(tmp_path):
    from ferroquant.cli import main

    onnx.save(_block(4), tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(4).normal(0, 1, (4, 16, K)).astype(np.float32))
    base = ["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"), "--no-report", "-q"]
    assert main(base + ["--out", str(tmp_path / "a"), "--smooth-quant", "0.5"]) == 0
    rec = json.loads(next((tmp_path / "a").glob("*_quant_record.json")).read_text())
    assert [(g["norm"], g["alpha"]) for g in rec["extra"]["methods"]["smooth_quant"]["groups"]] == [("ln1", 0.5)]
    assert main(base + ["--out", str(tmp_path / "b"), "--smooth-quant"]) == 0
    assert main(base + ["--out", str(tmp_path / "c"), "--smooth-quant", "2"]) != 0
    assert main(base + ["--out", str(tmp_path / "d"), "--smooth-quant", "x"]) != 0
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_a_layernorm_written_out_is_balanced_through_its_mul_add_and_identities():
    """Older exports (opset 11: ReduceMean, Sub, Pow, Sqrt, Div, Mul, Add), with an Identity before the MatMul
    as Paddle's exporter leaves: the last Mul -> Add is the per-channel affine that absorbs the scales."""
    rng = np.random.default_rng(7)
    gamma = rng.uniform(0.5, 1.5, (1, 1, K)).astype(np.float32)
    gamma[..., 5] *= 40.0
    w = rng.normal(0, 0.2, (K, 24)).astype(np.float32)
    w[5] /= 40.0
    inits = {"gamma": gamma, "beta": rng.normal(0, 0.1, K).astype(np.float32), "w": w,
             "two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32)}
    nodes = [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]), helper.make_node("Sub", ["x", "mu"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "gamma"], ["ng"], name="mul"),
             helper.make_node("Add", ["ng", "beta"], ["h"], name="add"), helper.make_node("Identity", ["h"], ["hi"]),
             helper.make_node("MatMul", ["hi", "w"], ["y"], name="fc")]
    model = make_model(nodes, {"x": ["B", 16, K]}, ["y"], inits, opset=11)
    groups, _ = smooth_groups(model)
    assert [(g.norm, g.layers, g.scale, g.bias) for g in groups] == [("add", ("fc",), "gamma", "beta")]
    data = _data(7, 3)
    out, done, _ = balance(model, SmoothQuantParams(enabled=True), data)
    assert rel_diff(run(model, data[0])[0], run(out, data[0])[0]) < 1e-5
    assert done[0].scale_max / done[0].scale_min > 5  # the outlier channel is divided down
    model.graph.output.append(helper.make_tensor_value_info("hi", onnx.TensorProto.FLOAT, None))
    assert smooth_groups(model)[0] == []  # a graph output on the way: dividing would change it


# -- what a linear layer or a scalar Mul absorbs: attention's output projection, fc2 after a written-out GELU --
H, D = 4, 8  # heads x head size = K


def _attention(seed: int, scramble: bool = False, outlier: float = 30.0):
    """x [B, T, K] -> v = x Wv + bv -> heads [B, H, T, D] -> P.V (P a softmax of a graph input) -> back to
    [B, T, K] -> o (MatMul with a constant weight). Two of v's output channels are ``outlier`` x larger, their
    rows of Wo as much smaller. ``scramble``: the heads come back as [B, T, D, H] before the reshape, so o's
    channel h*D+d reads v's channel d*H+h: no per-channel scale passes through."""
    rng = np.random.default_rng(seed)
    wv, wo = rng.normal(0, 0.2, (K, K)).astype(np.float32), rng.normal(0, 0.2, (K, K)).astype(np.float32)
    wv[:, [5, 20]] *= outlier
    wo[[5, 20]] /= outlier
    inits = {"wv": wv, "bv": rng.normal(0, 0.1, K).astype(np.float32), "wo": wo,
             "heads": np.array([0, 0, H, D], np.int64), "merged": np.array([0, 0, K], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "wv"], ["v0"], name="v"),
             helper.make_node("Add", ["v0", "bv"], ["v1"], name="v_bias"),
             helper.make_node("Reshape", ["v1", "heads"], ["v2"], name="split_heads"),
             helper.make_node("Transpose", ["v2"], ["v3"], name="to_heads", perm=[0, 2, 1, 3]),
             helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "v3"], ["a"], name="pv"),
             helper.make_node("Transpose", ["a"], ["a1"], name="from_heads",
                              perm=[0, 2, 3, 1] if scramble else [0, 2, 1, 3]),
             helper.make_node("Reshape", ["a1", "merged"], ["a2"], name="merge_heads"),
             helper.make_node("MatMul", ["a2", "wo"], ["y"], name="o")]
    return make_model(nodes, {"x": ["B", 16, K], "s": ["B", H, 16, 16]}, ["y"], inits)


def _attention_data(seed: int, n: int = 4):
    rng = np.random.default_rng(seed + 1)
    return [{"x": rng.normal(0, 1, (2, 16, K)).astype(np.float32),
             "s": rng.normal(0, 2, (2, H, 16, 16)).astype(np.float32)} for _ in range(n)]


def test_the_value_projection_absorbs_the_output_projections_balancing():
    model, data = _attention(0), _attention_data(0)
    groups, _ = smooth_groups(model)
    assert [(g.norm, g.tensor, g.layers, g.scale, g.bias, g.absorber) for g in groups] == [
        ("v", "a2", ("o",), "wv", "bv", "linear")]
    balanced, done, skipped = balance(model, SmoothQuantParams(enabled=True, alpha=0.5), data)
    assert skipped == [] and done[0].absorber == "linear"
    feed = _attention_data(7, 1)[0]
    assert rel_diff(run(model, feed)[0], run(balanced, feed)[0]) < 1e-5  # the float model is unchanged
    before, after = (GraphView(m) for m in (model, balanced))
    s = after.array("wo")[:, 0] / before.array("wo")[:, 0]
    np.testing.assert_allclose(after.array("wv"), before.array("wv") / s, rtol=1e-5)
    np.testing.assert_allclose(after.array("bv"), before.array("bv") / s, rtol=1e-5)
    assert s[5] > 3 * np.median(s) and s[20] > 3 * np.median(s)  # the outlier channels are scaled down


def test_channels_that_a_transpose_reorders_are_not_balanced_and_the_record_says_why():
    model, data = _attention(0, scramble=True), _attention_data(0)
    assert [g.absorber for g in smooth_groups(model)[0]] == ["linear"]  # found by its ops ...
    balanced, done, skipped = balance(model, SmoothQuantParams(enabled=True), data)
    assert done == [] and balanced.SerializeToString() == model.SerializeToString()  # ... refused by the check
    assert [n for n, _ in skipped] == ["v"] and "one to one" in skipped[0][1]


def test_static_int8_of_the_output_projection_gains_from_balancing(tmp_path):
    model, data = _attention(3, outlier=60.0), _attention_data(3)
    feed = _attention_data(9, 1)[0]
    errs = []
    for methods in ({}, {"smooth_quant": {"enabled": True}}):
        cfg = create_quant_config(None, model, batch_num=None, config_defination={"methods": methods})
        cm = quantize_model(cfg, model, data, profile="onnxruntime", cpu_types="u8s8")
        deploy = onnx.load(str(save_model(cm, tmp_path / str(len(methods)), latency_check=False)["deploy"]))
        errs.append(rel_diff(run(model, feed)[0], run(deploy, feed)[0]))
    assert errs[1] < 0.6 * errs[0], errs
    assert cm.methods["smooth_quant"]["groups"][0]["absorber"] == "linear"


def test_a_scalar_mul_before_a_matmul_becomes_a_per_channel_vector():
    """fc1 -> a GELU written out, ending in ``* 0.5`` (as torch exports nn.GELU) -> fc2."""
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(0, 0.3, (K, 48)).astype(np.float32), rng.normal(0, 0.3, (48, K)).astype(np.float32)
    w1[:, 7] *= 40.0
    w2[7] /= 40.0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Div", ["h", "sqrt2"], ["h1"], name="div"),
             helper.make_node("Erf", ["h1"], ["h2"], name="erf"),
             helper.make_node("Add", ["h2", "one"], ["h3"], name="add"),
             helper.make_node("Mul", ["h", "h3"], ["h4"], name="mul"),
             helper.make_node("Mul", ["h4", "half"], ["h5"], name="half_mul"),
             helper.make_node("MatMul", ["h5", "w2"], ["y"], name="fc2")]
    inits = {"w1": w1, "w2": w2, "sqrt2": np.array(np.sqrt(2), np.float32), "one": np.array(1, np.float32),
             "half": np.array(0.5, np.float32)}
    model = make_model(nodes, {"x": ["B", 16, K]}, ["y"], inits)
    groups, _ = smooth_groups(model)
    assert [(g.norm, g.layers, g.scale, g.absorber) for g in groups] == [("half_mul", ("fc2",), "half", "scalar")]
    balanced, done, _ = balance(model, SmoothQuantParams(enabled=True), _data(4))
    half = GraphView(balanced).array("half")
    assert half.shape == (48,) and np.all(half > 0) and half[7] < np.median(half) / 3
    feed = _data(8, 1)[0]
    assert rel_diff(run(model, feed)[0], run(balanced, feed)[0]) < 1e-5
