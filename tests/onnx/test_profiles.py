"""Deploy profiles: where each one puts Q/DQ, the integer types per CPU, what onnxruntime then runs, and every
rule of the rule checkers with a model that triggers it."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from ferroquant.errors import ModelError
from ferroquant.onnx import create_quant_config, quantize_model, save_model
from ferroquant.onnx.deploy import check_rules, deploy_layout
from ferroquant.onnx.qdq import Layout, export_deploy
from ferroquant.quant.profiles import NO_VNNI, PROFILES
from tests.onnx.builders import make_model, session


def residual_net(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> Conv, + the input (residual Add) -> Clip(0, 6) -> MaxPool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "b1": rng.normal(0, 0.1, 4).astype(np.float32),
             "w2": rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32),
             "wg": rng.normal(0, 0.3, (10, 64)).astype(np.float32),
             "zero": np.array(0.0, np.float32), "six": np.array(6.0, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["s"], name="add"),
        helper.make_node("Clip", ["s", "zero", "six"], ["r2"], name="relu6"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, {"x": [None, 4, 8, 8]}, ["y"], inits)


def feeds(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (4, 4, 8, 8)).astype(np.float32)} for _ in range(n)]


def calibrated(profile: str, cpu_types=None, **cfg):
    m = residual_net()
    return quantize_model(create_quant_config(None, m, batch_num=4, **cfg), m, feeds(), profile=profile,
                          cpu_types=cpu_types)


def deploy(cm, tmp_path):
    """The deploy model as the profile places it (no latency check: these models are too small to gain)."""
    return onnx.load(str(save_model(cm, tmp_path / "m", latency_check=False)["deploy"]))


def test_onnxruntime_plan_absorbs_carries_and_calibrates_outputs():
    cm = calibrated("onnxruntime", "u8s8")
    plan = cm.plan
    assert plan.absorbed == {"relu1": "r1", "relu6": "r2"}  # Relu after conv1, Clip(0, 6) after the Add
    assert plan.bounds["r1"] == (0.0, np.inf) and plan.bounds["r2"] == (0.0, 6.0)
    assert plan.carried == {"p": "r2", "f": "r2"}  # MaxPool and Flatten carry the Clip output's qparams
    assert plan.calibrate == ["c2", "r2"]  # the conv2 output (an Add input) and the Add output (after Clip)
    assert set(cm.calibrators) == {"x", "r1", "f", "c2", "r2"}
    table = cm.table()
    assert table.tensors["r2"].clip_min == 0.0 and table.tensors["r2"].clip_max <= 6.0 + 1e-5


def test_onnxruntime_deploy_runs_as_integer_kernels(tmp_path):
    cm = calibrated("onnxruntime", "u8s8")
    dep = deploy(cm, tmp_path)
    assert not [n for n in dep.graph.node if n.op_type in ("Relu", "Clip")]  # absorbed
    zps = {t.name: t.data_type for t in dep.graph.initializer if t.name.endswith("zero_point")}
    assert zps["x_zero_point"] == onnx.TensorProto.UINT8 and zps["r2_zero_point"] == onnx.TensorProto.UINT8
    meta = {p.key: p.value for p in dep.metadata_props}
    assert meta["ferroquant.profile"] == "onnxruntime" and meta["ferroquant.cpu_types"] == "u8s8"
    session(dep, True, str(tmp_path / "opt.onnx"))
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["QLinearConv"] == 2 and ops["QLinearAdd"] == 1 and ops["Conv"] == 0 and ops["Add"] == 0, ops
    fp32 = session(residual_net(), False)
    x = feeds(1, seed=9)[0]
    ref = fp32.run(None, x)[0]
    spec, fused = session(dep, False).run(None, x)[0], session(dep, True).run(None, x)[0]
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - spec) ** 2))
    assert sqnr > 25, sqnr
    np.testing.assert_allclose(fused, spec, atol=0.05 * float(np.abs(spec).max()))


def _pair_bound(w: np.ndarray, axis: int = 0) -> int:
    """The largest magnitude of a uint8 x int8 pair sum (what vpmaddubsw adds in 16 bits): 255 * (|a| + |b|)."""
    a = np.sort(np.abs(w.astype(np.int64)).reshape(-1))
    return int(255 * (a[-1] + a[-2]))


def test_forced_no_vnni_types_cannot_saturate(tmp_path):
    """Whatever CPU runs the tests: with the no-VNNI choice, int8 weight codes keep 7 bits beside uint8
    activations, so no u8 x s8 pair sum leaves int16; NUQ weights (the full int8 grid) go as uint8."""
    cm = calibrated("onnxruntime", "u8s7")
    assert cm.cpu == NO_VNNI
    dep = deploy(cm, tmp_path)
    inits = {t.name: numpy_helper.to_array(t) for t in dep.graph.initializer}
    weights = {k: v for k, v in inits.items() if k.endswith("weight_quantized")}
    assert len(weights) == 3
    for name, w in weights.items():
        assert w.dtype == np.int8 and w.min() >= -64 and w.max() <= 63, name
        assert _pair_bound(w) <= 32767
    assert all(v.dtype == np.uint8 for k, v in inits.items() if k.endswith("zero_point") and "weight" not in k
               and "bias" not in k)
    assert check_rules(dep, PROFILES["onnxruntime"], NO_VNNI) == []
    m = residual_net()
    nuq = quantize_model(create_quant_config(None, m, batch_num=4, config_defination={
        "common_config": {"weight": {"algorithm": "nuq"}}}), m, feeds(), cpu_types="u8s7")
    inits = {t.name: numpy_helper.to_array(t) for t in deploy(nuq, tmp_path / "nuq").graph.initializer}
    assert all(v.dtype == np.uint8 for k, v in inits.items() if k.endswith("weight_quantized"))


def test_forced_vnni_keeps_8_bit_weights(tmp_path):
    dep = deploy(calibrated("onnxruntime", "u8s8"), tmp_path)
    w = numpy_helper.to_array(next(t for t in dep.graph.initializer if t.name == "conv1.weight_quantized"))
    assert w.dtype == np.int8 and int(np.abs(w.astype(np.int16)).max()) in (127, 128)


def test_tensorrt_profile_is_symmetric_and_quantizes_residual_inputs(tmp_path):
    cm = calibrated("tensorrt")
    dep = deploy(cm, tmp_path)
    inits = {t.name: numpy_helper.to_array(t) for t in dep.graph.initializer}
    assert all(np.all(v == 0) for k, v in inits.items() if k.endswith("zero_point"))
    q_inputs = {n.input[0] for n in dep.graph.node if n.op_type == "QuantizeLinear"}
    assert {"x", "r1", "f", "c2"} <= q_inputs  # layer inputs and both Add inputs
    assert "r2" not in q_inputs  # TensorRT: no Q/DQ on outputs
    assert check_rules(dep, PROFILES["tensorrt"], cm.cpu) == []
    out = session(dep, False).run(None, feeds(1)[0])[0]
    assert np.all(np.isfinite(out))


# -- the rules, one model each --------------------------------------------------------------------------------
def test_rule_zero_point_for_tensorrt():
    cm = calibrated("onnxruntime", "s8s8")
    table = cm.table()
    model = export_deploy(cm.model, table, deploy_layout(cm, table))
    found = check_rules(model, PROFILES["tensorrt"], cm.cpu)
    assert found and {v.rule for v in found} == {"zero_point"}
    assert found[0].node.endswith("QuantizeLinear") or found[0].node.endswith("DequantizeLinear")


def test_rule_opset_for_tensorrt(tmp_path):
    cm = calibrated("tensorrt", config_defination={"common_config": {"weight": {"bits": 4}}})  # int4: opset 21
    with pytest.raises(ModelError, match="opset: opset 21; tensorrt parses 13 to 20"):
        save_model(cm, tmp_path / "m", latency_check=False)


def test_rule_weights_saturate_without_vnni():
    cm = calibrated("onnxruntime", "u8s8")  # 8-bit weights...
    table = cm.table()
    lay = deploy_layout(cm, table)
    model = export_deploy(cm.model, table, Layout(lay.tensors, lay.absorbed, unsigned=True))
    found = check_rules(model, PROFILES["onnxruntime"], NO_VNNI)  # ...on a CPU without VNNI
    assert {v.rule for v in found} == {"weights_saturate"} and {v.node for v in found} == {"conv1", "conv2", "fc"}


def convt_net():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c", "w2"], ["y"], name="up", strides=[2, 2])]
    return make_model(nodes, {"x": [None, 4, 8, 8]}, ["y"], {"w1": rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32),
                                                             "w2": rng.normal(0, 0.3, (4, 3, 2, 2)).astype(np.float32)})


def test_rule_no_integer_kernel_keeps_the_layer_float(tmp_path):
    m = convt_net()
    cm = quantize_model(create_quant_config(None, m, batch_num=4), m, feeds(), cpu_types="u8s8")
    with pytest.warns(RuntimeWarning, match="node 'up': no_integer_kernel"):
        paths = save_model(cm, tmp_path / "m", latency_check=False)
    dep = onnx.load(str(paths["deploy"]))
    assert "up.weight_quantized" not in {t.name for t in dep.graph.initializer}  # ConvTranspose left float
    assert "conv.weight_quantized" in {t.name for t in dep.graph.initializer}
    from ferroquant.onnx import read_record

    assert read_record(paths["record"])["extra"]["kept_float"] == ["up"]


def test_allow_float_keeps_an_error_layer_float(tmp_path):
    cm = calibrated("tensorrt", config_defination={"override_layer_configs": {"fc": {"weight": {"bits": 4}}}})
    with pytest.raises(ModelError, match="opset"):
        save_model(cm, tmp_path / "a")
    with pytest.warns(RuntimeWarning, match="opset"):
        save_model(cm, tmp_path / "b", allow_float=True)


def slow_depthwise_net():
    """A 3x3 conv (about 3x faster in int8) then a 7x7 depthwise conv, whose int8 kernel in onnxruntime's CPU is
    many times slower than its float one (measured: 8.4 ms against 0.8 ms at 64x56x56)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="dw7", group=64, pads=[3, 3, 3, 3])]
    inits = {"w1": rng.normal(0, 0.1, (64, 64, 3, 3)).astype(np.float32),
             "w2": rng.normal(0, 0.1, (64, 1, 7, 7)).astype(np.float32)}
    return make_model(nodes, {"x": [1, 64, 56, 56]}, ["y"], inits)


def test_latency_check_keeps_a_slow_int8_layer_float(tmp_path, monkeypatch):
    """The decision, on given timings (a timed assertion would follow the machine's load): the whole deploy model
    is slower, dw7's integer kernel (measured alone on its real input, the single-layer models built for real)
    is slower than its float one, so dw7 is kept float and recorded; the 3x3 conv stays quantized."""
    import ferroquant.onnx.deploy as deploy
    import ferroquant.onnx.latency as latency

    m = slow_depthwise_net()
    data = [{"x": np.random.default_rng(i).normal(0, 1, (1, 64, 56, 56)).astype(np.float32)} for i in range(2)]
    cm = quantize_model(create_quant_config(None, m, batch_num=2), m, data, cpu_types="u8s7")
    whole = iter([[1.0e-3, 2.0e-3], [1.0e-3, 0.5e-3]])  # deploy slower, then faster without dw7
    monkeypatch.setattr(deploy, "time_models", lambda models, feed, runs=7: (next(whole), runs))
    measured = []

    def kernel_times(model, feed, runs=5):
        """What the profiler would say of the side-by-side model: each one-layer model's layer and its Q/DQ."""
        integer = any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in model.graph.node)
        out = {}
        for n in model.graph.node:
            if n.op_type in ("Conv", "QLinearConv", "ConvInteger"):
                measured.append((n.name, integer))
                out[n.name] = (300.0 if "dw7" in n.name else 50.0) if integer else 100.0
            elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                out[n.name] = 20.0  # the edges of a one-layer model: not the layer's time
        assert set(feed) == {i.name for i in model.graph.input}
        return out

    monkeypatch.setattr(latency, "kernel_times", kernel_times)
    with pytest.warns(RuntimeWarning, match="slower"):
        paths = save_model(cm, tmp_path / "m", latency_check=True)
    rep = cm.latency
    assert sorted(measured) == sorted((n, i) for n in {n for n, _ in measured} for i in (False, True))
    assert any("dw7" in n for n, _ in measured) and len(measured) == 2 * len(cm.layers)
    assert rep.layer_us["dw7"] == (100.0, 300.0) and rep.kept_float == ["dw7"] and not rep.all_float
    from ferroquant.onnx import read_record

    rec = read_record(paths["record"])
    assert "dw7" in rec["extra"]["kept_float"] and rec["extra"]["latency"]["fp32_ms"] == 1.0
    assert "dw7" not in rec["layers"] and "conv" in rec["layers"]
    kinds = {n.op_type for n in onnx.load(str(paths["deploy"])).graph.node}
    assert "Conv" in kinds and ("QLinearConv" in kinds or "QuantizeLinear" in kinds)


def test_latency_check_times_every_layer_on_this_machine(tmp_path):
    """The real measurement runs end to end (whatever it decides on a loaded machine): every quantized layer is
    timed alone in float and in integer, the totals are recorded."""
    m = slow_depthwise_net()
    data = [{"x": np.random.default_rng(i).normal(0, 1, (1, 64, 56, 56)).astype(np.float32)} for i in range(2)]
    cm = quantize_model(create_quant_config(None, m, batch_num=2), m, data, cpu_types="u8s7")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # slower layers or not depends on the machine
        paths = save_model(cm, tmp_path / "m", latency_check=True)
    rep = cm.latency
    assert rep.fp32_ms > 0 and rep.deploy_ms > 0
    if rep.layer_us:  # timed per layer only when the whole deploy model was slower
        assert set(rep.layer_us) == {l.name for l in cm.layers}
        assert all(f > 0 and i > 0 for f, i in rep.layer_us.values())
    assert paths["deploy"].is_file()


def test_latency_all_float_writes_no_quantize_dequantize(tmp_path, monkeypatch):
    """When even the slow layers in float leave the model slower, every layer is kept float, and so is every other
    tensor the profile quantizes (residual Adds, outputs): the written model has no Q/DQ left, so it runs as FP32
    (the record's deploy time says it does). It kept the Add's Q/DQ before."""
    import ferroquant.onnx.deploy as deploy
    import ferroquant.onnx.latency as latency

    cm = calibrated("onnxruntime", "u8s8")
    monkeypatch.setattr(deploy, "time_models", lambda models, feed, runs=7: ([1.0e-3, 2.0e-3], runs))
    monkeypatch.setattr(latency, "kernel_times", lambda model, feed, runs=5: {})
    with pytest.warns(RuntimeWarning, match="every layer is kept in float"):
        paths = save_model(cm, tmp_path / "m", latency_check=True)
    assert cm.latency.all_float
    kinds = {n.op_type for n in onnx.load(str(paths["deploy"])).graph.node}
    assert not kinds & {"QuantizeLinear", "DequantizeLinear"}, kinds


def test_latency_runs_follow_the_model_size():
    """A model whose run takes longer gets fewer timed runs (at least three), so the check's cost is bounded."""
    from ferroquant.onnx.latency import MIN_RUNS, RUN_BUDGET_S, _runs_for

    assert _runs_for(0.001, 7) == 7
    assert _runs_for(RUN_BUDGET_S / 4, 7) == 4
    assert _runs_for(5.0, 7) == MIN_RUNS
    assert _runs_for(5.0, 2) == 2  # never more than asked


def test_one_layer_models_side_by_side_compute_as_alone():
    """Two one-layer models that read a tensor of the same name sit side by side under their own prefixes and
    compute what each computes alone; the profile of the pair is read back per model."""
    from ferroquant.onnx.latency import _per_model, kernel_times, one_layer, side_by_side
    from ferroquant.onnx.session import cpu_session

    m = slow_depthwise_net()
    x = np.random.default_rng(3).normal(0, 1, (1, 64, 56, 56)).astype(np.float32)
    s = cpu_session(m, ["c1", "r1"])
    c1, r1, y = (dict(zip([o.name for o in s.get_outputs()], s.run(None, {"x": x})))[t] for t in ("c1", "r1", "y"))
    a, b = one_layer(m, "conv", x, c1), one_layer(m, "dw7", r1, y)
    pair = side_by_side([a, b])
    feed = {"L0/x": x, "L1/r1": r1}
    out = dict(zip([o.name for o in cpu_session(pair).get_outputs()], cpu_session(pair).run(None, feed)))
    np.testing.assert_allclose(out["L0/c1__out"], c1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["L1/y__out"], y, rtol=1e-5, atol=1e-5)
    per = _per_model(kernel_times(pair, feed, runs=2), 2)
    assert len(per) == 2 and all(t > 0 for t in per)


def test_kept_float_warnings_say_which_why_and_what_to_do(tmp_path):
    """Issue 14: the fallback message names the layers, the reason, and what the user can do about it."""
    m = convt_net()
    cm = quantize_model(create_quant_config(None, m, batch_num=4), m, feeds(), cpu_types="u8s8")
    with pytest.warns(RuntimeWarning) as caught:
        save_model(cm, tmp_path / "m", latency_check=False)
    (msg,) = [str(w.message) for w in caught if "float" in str(w.message)]
    assert msg.startswith("1 layer kept in float (up)") and "no integer kernel" in msg and "nothing to fix" in msg
    cm = calibrated("tensorrt", config_defination={"override_layer_configs": {"fc": {"weight": {"bits": 4}}}})
    with pytest.warns(RuntimeWarning) as caught:
        save_model(cm, tmp_path / "b", allow_float=True)
    (msg,) = [str(w.message) for w in caught if "float" in str(w.message)]
    assert msg.startswith("1 layer kept in float (fc)") and "allow_float" in msg and "to quantize" in msg
