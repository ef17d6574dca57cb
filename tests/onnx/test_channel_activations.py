"""Per-channel activation scales on depthwise-Conv inputs (issue 15, item 0): only tensors read by depthwise
Convs get them, the fake-quant and deploy models carry axis=1 Q/DQ, the result is closer to FP32 than per-tensor
scales when channel ranges differ, the record keeps them, and the onnxruntime / tensorrt rule checkers refuse them."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from ferroquant.calibrate import ChannelCalibrator
from ferroquant.errors import ModelError
from ferroquant.onnx import create_quant_config, quantize_model, read_record, save_model
from tests.onnx.builders import make_model, run


def _net(rng):
    """x -> 1x1 Conv (channel gains over 3 orders of magnitude) -> Relu -> depthwise 3x3 -> y."""
    gains = np.exp(np.linspace(-3.5, 3.5, 8))
    inits = {"w1": (rng.normal(0, 1, (8, 3, 1, 1)) * gains[:, None, None, None]).astype(np.float32),
             "b1": np.zeros(8, np.float32), "w2": rng.normal(0, 1, (8, 1, 3, 3)).astype(np.float32),
             "b2": np.zeros(8, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="pw"),
             helper.make_node("Relu", ["c"], ["a"], name="relu"),
             helper.make_node("Conv", ["a", "w2", "b2"], ["y"], name="dw", group=8, pads=[1] * 4)]
    return make_model(nodes, {"x": ("N", 3, 6, 6)}, ["y"], inits)


def _rms(a):
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


def _quantize(model, calib, channel_wise, profile="amct"):
    common = {"activation": {"channel_wise": channel_wise, "algorithm": "minmax"}}
    cfg = create_quant_config(None, model, config_defination={"common_config": common})
    return quantize_model(cfg, model, calib, profile=profile)


def _data(rng, n):
    return [{"x": rng.normal(0, 1, (4, 3, 6, 6)).astype(np.float32)} for _ in range(n)]


def test_depthwise_input_gets_one_scale_per_channel_and_axis_1_qdq(tmp_path):
    rng = np.random.default_rng(0)
    model = _net(rng)
    calib, held = _data(rng, 3), rng.normal(0, 1, (16, 3, 6, 6)).astype(np.float32)
    cm = _quantize(model, calib, True)
    assert isinstance(cm.calibrators["a"], ChannelCalibrator)
    assert not isinstance(cm.calibrators["x"], ChannelCalibrator)  # read by a pointwise Conv: per tensor
    table = cm.table()
    aq = table.layers["dw"].activation
    assert aq.per_channel and aq.axis == 1 and len(aq.channel_scales) == 8
    assert max(aq.channel_scales) / min(aq.channel_scales) > 100
    assert not table.layers["pw"].activation.per_channel
    paths = save_model(cm, tmp_path / "m")
    fq = onnx.load(paths["fake_quant"])
    q = next(n for n in fq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "a")
    assert helper.get_attribute_value(next(a for a in q.attribute if a.name == "axis")) == 1
    scale = numpy_helper.to_array(next(t for t in fq.graph.initializer if t.name == q.input[1]))
    assert scale.shape == (8,)
    rec = json.loads(paths["record"].read_text())
    entry = rec["layers"]["dw"]["activation"]
    assert entry["axis"] == 1 and len(entry["channel_scales"]) == 8
    read_record(paths["record"])
    # closer to FP32 than per-tensor scales on held-out data
    ref = run(model, {"x": held})[0]
    per_tensor = save_model(_quantize(model, calib, False), tmp_path / "t")
    err_c = _rms(ref - run(fq, {"x": held})[0])
    err_t = _rms(ref - run(onnx.load(per_tensor["fake_quant"]), {"x": held})[0])
    assert err_c < 0.9 * err_t
    run(onnx.load(paths["deploy"]), {"x": held})  # the deploy model runs in onnxruntime


@pytest.mark.parametrize("profile", ["onnxruntime", "tensorrt"])
def test_profiles_with_per_tensor_kernels_refuse_them(profile, tmp_path):
    rng = np.random.default_rng(1)
    model = _net(rng)
    cm = _quantize(model, _data(rng, 2), True, profile)
    with pytest.raises(ModelError, match="per_channel_activation"):
        save_model(cm, tmp_path / "m", latency_check=False)
    with pytest.warns(RuntimeWarning, match="per_channel_activation"):
        paths = save_model(cm, tmp_path / "f", allow_float=True, latency_check=False)
    assert "dw" in json.loads(paths["record"].read_text())["extra"]["kept_float"]


def test_channel_calibrator_state_round_trips_and_checks_channels():
    from ferroquant.calibrate import from_state_dict
    from ferroquant.errors import ShapeError

    rng = np.random.default_rng(2)
    cal = ChannelCalibrator("t", "hfmg")
    cal.observe(rng.normal(0, 1, (2, 5, 4, 4)).astype(np.float32))
    again = from_state_dict(cal.state_dict())
    assert again.qparams().scales == cal.qparams().scales
    with pytest.raises(ShapeError, match="channels"):
        cal.observe(rng.normal(0, 1, (2, 4, 4, 4)).astype(np.float32))
