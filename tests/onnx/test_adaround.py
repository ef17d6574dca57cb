"""Learned rounding (AdaRound) in the ONNX flow (issue 15): the Gram matrix of a layer's input patches is
streamed exactly (sampling, padding, strides, dilations, groups); with ``methods.adaround`` on, every Conv/Gemm
keeps its ARQ grid and reconstructs its output on held-out inputs better than round-to-nearest; layers it cannot
serve are named in the record; the default flow is unchanged."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from ferroquant import ops
from ferroquant.errors import ConfigError
from ferroquant.onnx import create_quant_config, quantize_model, save_model
from ferroquant.quant.adaround import LayerGram, reconstruction_error, weight_rows
from ferroquant.quant.moments import PatchSpec
from tests.onnx.builders import add_output, make_model, run


def _naive_patches(x, k, stride, pad, dil, groups):
    """Every patch of a 2-D conv input, ``[positions, groups, C/g * k * k]``, by explicit loops."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, w = xp.shape
    oh, ow = (h - (k - 1) * dil - 1) // stride + 1, (w - (k - 1) * dil - 1) // stride + 1
    out = []
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                win = xp[b, :, i * stride: i * stride + (k - 1) * dil + 1: dil, j * stride: j * stride + (k - 1) * dil + 1: dil]
                out.append(win.reshape(groups, -1))
    return np.stack(out)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.sampled_from([1, 2, 3]), stride=st.sampled_from([1, 2]),
       pad=st.sampled_from([0, 1]), dil=st.sampled_from([1, 2]), depthwise=st.booleans(), batches=st.integers(1, 3))
def test_gram_of_all_patches_is_exact(seed, k, stride, pad, dil, depthwise, batches):
    rng = np.random.default_rng(seed)
    c = 4
    groups = c if depthwise else 1
    xs = [rng.normal(0.5, 1, (2, c, 6, 7)).astype(np.float32) for _ in range(batches)]
    g = LayerGram(PatchSpec("conv", (k, k), (stride,) * 2, (pad,) * 4, (dil, dil), groups), rows_per_batch=10**6)
    for x in xs:
        g.observe(x)
    rows = np.concatenate([_naive_patches(x, k, stride, pad, dil, groups) for x in xs]).astype(np.float64)
    assert g.count == len(rows)
    np.testing.assert_allclose(g.gram(), np.einsum("ngp,ngq->gpq", rows, rows) / len(rows), rtol=1e-9, atol=1e-9)


def test_sampled_rows_are_bounded_and_patches_of_the_input():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (4, 3, 9, 9)).astype(np.float32)
    spec = PatchSpec("conv", (3, 3), (1, 1), (1,) * 4, (1, 1), 1)
    g = LayerGram(spec, rows_per_batch=50)
    sampled = g.patches(x)
    assert sampled.shape == (50, 1, 27)
    every = {tuple(r) for r in _naive_patches(x, 3, 1, 1, 1, 1)[:, 0]}
    assert all(tuple(r) in every for r in sampled[:, 0])
    g = LayerGram(spec, rows_per_batch=50)
    g.observe(x)
    g.observe(x)
    assert g.count == 100
    again = LayerGram(spec, rows_per_batch=50)
    again.observe(x)
    again.observe(x)
    np.testing.assert_array_equal(again.sum, g.sum)  # same data, same draw


def _net(rng):
    """x -> Conv 3x3 -> Relu -> depthwise 3x3 stride 2 -> Relu -> Conv 1x1 -> Flatten -> Gemm -> y."""
    inits = {"w1": rng.normal(0, 0.4, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, 8),
             "w2": rng.normal(0.1, 0.3, (8, 1, 3, 3)), "b2": rng.normal(0, 0.1, 8),
             "w3": rng.normal(0, 0.3, (8, 8, 1, 1)), "w4": rng.normal(0, 0.2, (5, 8 * 4 * 4)), "b4": np.zeros(5)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["a1"], name="relu1"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="dw", pads=[1] * 4, group=8, strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["a2"], name="relu2"),
             helper.make_node("Conv", ["a2", "w3"], ["c3"], name="pw"),
             helper.make_node("Flatten", ["c3"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w4", "b4"], ["y"], name="fc", transB=1)]
    return make_model(nodes, {"x": ("N", 3, 8, 8)}, ["y"], {k: v.astype(np.float32) for k, v in inits.items()})


def _images(rng, n):
    """Inputs whose neighbouring pixels and channels are correlated, as in images (iid inputs leave rounding to
    nearest nearly optimal)."""
    coarse = rng.normal(0.3, 1, (n, 1, 4, 4)) + 0.3 * rng.normal(0, 1, (n, 3, 4, 4))
    return (np.repeat(np.repeat(coarse, 2, axis=2), 2, axis=3) + 0.2 * rng.normal(0, 1, (n, 3, 8, 8))).astype(np.float32)


def _quantize(model, calib, methods=None, common=None):
    cfg = create_quant_config(None, model, batch_num=None,
                              config_defination={"common_config": common or {"weight": {"bits": 4}},
                                                 "methods": methods or {}})
    return quantize_model(cfg, model, calib, profile="amct")


def _held_out_gram(cm, name, x):
    layer = next(l for l in cm.layers if l.name == name)
    node = next(n for n in cm.model.graph.node if n.name == name)
    tapped = cm.model.__class__()
    tapped.CopyFrom(cm.model)
    add_output(tapped, layer.activation)
    a = run(tapped, {"x": x})[[o.name for o in tapped.graph.output].index(layer.activation)]
    from ferroquant.onnx.methods import patch_spec

    w = numpy_helper.to_array(next(t for t in cm.model.graph.initializer if t.name == layer.weight))
    spec = patch_spec(node, w.shape) if layer.op_type == "Conv" else PatchSpec("matmul")
    g = LayerGram(spec, rows_per_batch=10**6)
    g.observe(a)
    return layer, w, g.gram()


@pytest.mark.parametrize("seed", [0, 1])
def test_learned_rounding_reconstructs_every_layer_better_on_held_out_inputs(seed, tmp_path):
    rng = np.random.default_rng(seed)
    model = _net(rng)
    calib = [{"x": _images(rng, 8)} for _ in range(32)]
    held_out = _images(rng, 64)
    plain = _quantize(model, calib)
    learned = _quantize(model, calib, {"adaround": {"enabled": True, "iterations": 300}})
    t_plain, t_learned = plain.table(), learned.table()
    rec = learned.methods["adaround"]
    assert sorted(rec["layers"]) == ["conv1", "dw", "fc", "pw"] and rec["skipped"] == {}
    for name in ("conv1", "dw", "pw", "fc"):
        layer, w, g = _held_out_gram(learned, name, held_out)
        wp, wl = t_plain.layers[name].weight, t_learned.layers[name].weight
        np.testing.assert_array_equal(wl.scale, wp.scale)  # the same grid
        np.testing.assert_array_equal(wl.zero_point, wp.zero_point)
        q = w / np.reshape(wp.scale, (-1,) + (1,) * (w.ndim - 1))
        assert np.all((wl.codes == np.floor(q)) | (wl.codes == np.floor(q) + 1))
        deq = lambda wq: ops.dequantize(wq.codes, wq.scale, wq.zero_point, wq.bits, wq.axis).reshape(w.shape)  # noqa: E731
        rows = weight_rows(layer, w)
        e_plain = reconstruction_error(rows, weight_rows(layer, deq(wp)), g)
        e_learned = reconstruction_error(rows, weight_rows(layer, deq(wl)), g)
        if rec["layers"][name]["changed"]:
            assert e_learned <= 0.7 * e_plain, f"{name}: {e_learned:.3g} > 0.7 x {e_plain:.3g}"
        else:  # nearest rounding was best on the calibration data (pw reads 8 inputs, 2 of which carry the signal)
            assert e_learned == e_plain
    assert sum(v["changed"] > 0 for v in rec["layers"].values()) >= 3
    paths = save_model(learned, tmp_path / "m")
    extra = json.loads(paths["record"].read_text())["extra"]["methods"]["adaround"]
    assert extra["options"]["iterations"] == 300 and set(extra["layers"]["pw"]) >= {"changed", "loss", "seconds"}
    out = run(_load(paths["deploy"]), {"x": held_out[:4]})[0]
    assert out.shape == (4, 5) and np.all(np.isfinite(out))


def _load(path):
    import onnx

    return onnx.load(str(path))


def test_layers_it_cannot_serve_are_named_and_keep_nearest_rounding():
    rng = np.random.default_rng(3)
    model = _net(rng)
    calib = [{"x": rng.normal(0.3, 1, (2, 3, 8, 8)).astype(np.float32)}]
    plain = _quantize(model, calib)
    common = {"weight": {"bits": 4}}
    cfg = create_quant_config(None, model, config_defination={
        "common_config": common, "methods": {"adaround": {"enabled": True, "iterations": 20}},
        "override_layer_configs": {"pw": {"weight": {"algorithm": "nuq"}}}})
    cm = quantize_model(cfg, model, calib, profile="amct")
    table = cm.table()
    rec = cm.methods["adaround"]
    assert "NUQ" in rec["skipped"]["pw"]
    assert "2 calibration rows for 128 inputs" in rec["skipped"]["fc"]  # the Gemm saw one row per image
    np.testing.assert_array_equal(table.layers["fc"].weight.codes, plain.table().layers["fc"].weight.codes)
    assert sorted(rec["layers"]) == ["conv1", "dw"]


def test_default_flow_has_no_rounding_stream():
    rng = np.random.default_rng(0)
    model = _net(rng)
    cm = _quantize(model, [{"x": rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)}])
    assert cm.grams == {} and cm.rounding is None and "adaround" not in cm.methods


@pytest.mark.parametrize("section, field", [({"iterations": -1}, "adaround.iterations"),
                                            ({"iterations": 1.5}, "adaround.iterations"),
                                            ({"lr": 0}, "adaround.lr"),
                                            ({"reg_weight": "x"}, "adaround.reg_weight"),
                                            ({"rows_per_batch": 0}, "adaround.rows_per_batch"),
                                            ({"enabled": "yes"}, "adaround.enabled"),
                                            ({"rounds": 3}, "rounds")])
def test_adaround_section_is_validated(section, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        create_quant_config(None, _net(np.random.default_rng(0)), config_defination={"methods": {"adaround": section}})


def test_config_round_trip_and_methods_in_use(tmp_path):
    model = _net(np.random.default_rng(0))
    cfg = create_quant_config(tmp_path / "c.json", model,
                              config_defination={"methods": {"adaround": {"enabled": True, "iterations": 50}}})
    assert cfg.methods_in_use() == ["methods.adaround"]
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["methods"] == {"adaround": {"enabled": True, "iterations": 50}}
    plain = create_quant_config(tmp_path / "d.json", model)
    assert "methods" not in json.loads((tmp_path / "d.json").read_text()) and plain.methods_in_use() == []


def test_cli_adaround_flag(tmp_path):
    import onnx

    from ferroquant.cli import main

    rng = np.random.default_rng(5)
    onnx.save(_net(rng), tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", _images(rng, 16))
    rc = main(["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"), "--out",
               str(tmp_path / "out"), "--no-report", "--profile", "amct", "--adaround", "-q"])
    assert rc == 0
    rec = json.loads(next((tmp_path / "out").glob("*_quant_record.json")).read_text())
    ada = rec["extra"]["methods"]["adaround"]
    assert set(ada["layers"]) == {"conv1", "dw", "pw"} and "fc" in ada["skipped"]
