"""Empirical bias correction (issue 15): the mean input patch is streamed exactly (any batching, padding and
strides), and on held-out inputs every corrected layer's mean per-channel output error is smaller than without."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from ferroquant import ops
from ferroquant.onnx import create_quant_config, quantize_model, save_model
from ferroquant.quant.bias_correction import corrected_bias, output_mean_error
from ferroquant.quant.moments import LayerMoments, PatchSpec
from tests.onnx.builders import add_output, make_model, run


def _conv_model(w, b, attrs, x_shape):
    inits = {"w": w.astype(np.float32)}
    ins = ["x", "w"]
    if b is not None:
        inits["b"] = np.asarray(b, np.float32)
        ins.append("b")
    return make_model([helper.make_node("Conv", ins, ["y"], name="conv", **attrs)], {"x": x_shape}, ["y"], inits)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.sampled_from([1, 2, 3]), stride=st.sampled_from([1, 2]),
       pad=st.sampled_from([0, 1]), depthwise=st.booleans(), batches=st.integers(1, 3))
def test_mean_patch_gives_the_mean_output_shift(seed, k, stride, pad, depthwise, batches):
    """(W_q - W) E[patch] equals the mean over the data of conv(x, W_q) - conv(x, W) (onnxruntime)."""
    rng = np.random.default_rng(seed)
    c = 4
    groups = c if depthwise else 1
    w = rng.normal(0, 1, (c, c // groups, k, k))
    w_q = w + rng.normal(0, 0.1, w.shape)
    attrs = {"strides": [stride] * 2, "pads": [pad] * 4, "group": groups}
    xs = [rng.normal(0.5, 1, (2, c, 5, 6)).astype(np.float32) for _ in range(batches)]
    m = LayerMoments(PatchSpec("conv", (k, k), (stride,) * 2, (pad,) * 4, (1, 1), groups))
    for x in xs:
        m.observe(x)
    got = output_mean_error(w, w_q, m.mean(), groups)
    diff = [run(_conv_model(w_q, None, attrs, x.shape), {"x": x})[0] - run(_conv_model(w, None, attrs, x.shape),
                                                                            {"x": x})[0] for x in xs]
    want = np.concatenate(diff).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(got, want, atol=1e-4)
    b = rng.normal(0, 1, c)
    np.testing.assert_allclose(corrected_bias(b, w.astype(np.float32), w_q, m.mean(), groups), b - got, atol=1e-5)


def _net(rng):
    """x -> Conv 3x3 -> Relu -> Conv 3x3 (no bias) -> Relu -> depthwise 3x3 stride 2 -> y."""
    inits = {"w1": rng.normal(0, 0.4, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, 8),
             "w2": rng.normal(0.05, 0.2, (8, 8, 3, 3)),
             "w3": rng.normal(0.1, 0.3, (8, 1, 3, 3)), "b3": rng.normal(0, 0.1, 8)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["a2"], name="relu2"),
             helper.make_node("Conv", ["a2", "w3", "b3"], ["y"], name="dw", pads=[1] * 4, group=8, strides=[2, 2])]
    return make_model(nodes, {"x": ("N", 3, 8, 8)}, ["y"], {k: v.astype(np.float32) for k, v in inits.items()})


def _layer_output(x, w, b, node):
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return run(_conv_model(w, b, attrs, x.shape), {"x": x})[0]


def _mean_channel_error(model, cm, table, name, held_out):
    """Mean over channels of |mean over held-out data of (quantized-weight layer - float layer)| given the
    layer's float input."""
    layer = next(l for l in cm.layers if l.name == name)
    node = next(n for n in cm.model.graph.node if n.name == name)
    tapped = cm.model.__class__()
    tapped.CopyFrom(cm.model)
    add_output(tapped, layer.activation)
    outs = {o.name: i for i, o in enumerate(tapped.graph.output)}
    x = run(tapped, {"x": held_out})[outs[layer.activation]]
    inits = {t.name: t for t in cm.model.graph.initializer}
    from onnx import numpy_helper

    w = numpy_helper.to_array(inits[layer.weight])
    b = numpy_helper.to_array(inits[layer.bias]) if layer.bias else np.zeros(w.shape[0], np.float32)
    lq = table.layers[name]
    wq = lq.weight
    w_deq = ops.dequantize(wq.codes, wq.scale, wq.zero_point, wq.bits, wq.axis).reshape(w.shape)
    b_q = b if lq.bias is None else (lq.bias.codes.astype(np.float64) * lq.bias.scale).astype(np.float32)
    err = _layer_output(x, w_deq, b_q, node) - _layer_output(x, w, b, node)
    return float(np.abs(err.mean(axis=(0, 2, 3))).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_bias_correction_lowers_every_corrected_layers_mean_output_error(seed, tmp_path):
    rng = np.random.default_rng(seed)
    model = _net(rng)
    calib = [{"x": rng.normal(0.3, 1, (4, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    held_out = rng.normal(0.3, 1, (32, 3, 8, 8)).astype(np.float32)
    common = {"weight": {"bits": 4, "channel_wise": False}}
    plain = quantize_model(create_quant_config(None, model, config_defination={"common_config": common}), model,
                           calib, profile="amct")
    common_bc = {"weight": {"bits": 4, "channel_wise": False, "bias_correction": "empirical"}}
    cfg = create_quant_config(None, model, config_defination={"common_config": common_bc})
    corrected = quantize_model(cfg, model, calib, profile="amct")
    assert corrected.methods["bias_correction"]["zero_bias_added"] == ["conv2"]
    t_plain, t_bc = plain.table(), corrected.table()
    for name in ("conv1", "conv2", "dw"):
        before = _mean_channel_error(model, plain, t_plain, name, held_out)
        after = _mean_channel_error(model, corrected, t_bc, name, held_out)
        assert after < before, f"{name}: mean per-channel output error {after:.3g} >= {before:.3g} uncorrected"
    paths = save_model(corrected, tmp_path / "m")
    rec = json.loads(paths["record"].read_text())
    assert rec["extra"]["methods"]["bias_correction"]["layers"] == ["conv1", "conv2", "dw"]


def test_bias_correction_field_is_validated():
    from ferroquant.errors import ConfigError

    with pytest.raises(ConfigError, match="bias_correction"):
        create_quant_config(None, _net(np.random.default_rng(0)),
                            config_defination={"common_config": {"weight": {"bias_correction": "analytic"}}})


def test_a_layer_whose_shift_is_noise_keeps_its_bias(tmp_path):
    """A Conv reading zero-mean noise has no real output shift: what the calibration batches show is the noise of
    their mean, which differs on other data. The test of the shifts against their fold-to-fold variation leaves
    that layer's bias as it is (the record says why), and still corrects a layer with a real shift."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.5, (8, 4, 1, 1)).astype(np.float32)
    b = rng.normal(0, 0.1, 8).astype(np.float32)
    model = _conv_model(w, b, {}, ("N", 4, 6, 6))
    common = {"weight": {"bits": 4, "channel_wise": False, "bias_correction": "empirical"}}
    cfg = create_quant_config(None, model, config_defination={"common_config": common})
    noise = [{"x": rng.normal(0, 1, (4, 4, 6, 6)).astype(np.float32)} for _ in range(8)]
    cm = quantize_model(cfg, model, noise, batch_num=8, profile="amct")
    layer = cm.table().layers["conv"]
    test = cm.methods["bias_correction"]["tests"]["conv"]
    assert test["unit"] == "batch" and test["folds"] == 8 and test["snr"] < 4 and not test["corrected"]
    np.testing.assert_allclose(layer.bias.codes * layer.bias.scale, b, atol=float(np.max(layer.bias.scale)))
    assert cm.methods["bias_correction"]["corrected"] == []

    shifted = [{"x": (f["x"] + 2.0).astype(np.float32)} for f in noise]  # a mean of 2 on every input channel
    cm = quantize_model(cfg, model, shifted, batch_num=8, profile="amct")
    cm.table()  # the test runs where the biases are made
    assert cm.methods["bias_correction"]["tests"]["conv"]["corrected"]
    assert cm.methods["bias_correction"]["corrected"] == ["conv"]
    rec = json.loads(save_model(cm, tmp_path / "m")["record"].read_text())
    assert rec["extra"]["methods"]["bias_correction"]["tests"]["conv"]["corrected"] is True


def test_folds_are_independent_estimates_of_the_mean():
    """Batch folds when at least 3 batches were seen, else sample folds; either way the count-weighted mean of
    the fold means is the mean, and merging two streams adds their folds."""
    rng = np.random.default_rng(0)
    spec = PatchSpec("conv", (3, 3), (1, 1), (1,) * 4, (1, 1), 1)
    xs = [rng.normal(size=(n, 2, 5, 5)).astype(np.float32) for n in (3, 2, 4, 1)]
    two, four = LayerMoments(spec), LayerMoments(spec)
    for x in xs[:2]:
        two.observe(x)
    for x in xs:
        four.observe(x)
    means, counts, unit = two.fold_means()
    assert unit == "sample" and len(counts) == 5  # 5 samples in 2 batches
    np.testing.assert_allclose((means * counts[:, None, None]).sum(0) / counts.sum(), two.mean(), atol=1e-12)
    means, counts, unit = four.fold_means()
    assert unit == "batch" and len(counts) == 4
    np.testing.assert_allclose((means * counts[:, None, None]).sum(0) / counts.sum(), four.mean(), atol=1e-12)
    rest = LayerMoments(spec)
    for x in xs[2:]:
        rest.observe(x)
    two.merge(rest)
    np.testing.assert_allclose(two.mean(), four.mean(), atol=1e-12)
    assert two.batches == 4 and two.samples == 10
