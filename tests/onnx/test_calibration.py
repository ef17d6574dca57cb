"""Calibration through onnxruntime: taps, data forms, errors, saved and merged state."""

import re
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from ferroquant.calibrate import load_states, save_states
from ferroquant.errors import ConfigError, DataError, ModelError
from ferroquant.onnx.api import create_quant_config, quantize_model
from ferroquant.onnx.layers import quantizable_layers
from tests.onnx.builders import make_model


def small_net(seed=0):
    """Conv -> Relu -> Conv (shares nothing) and a Gemm head; plus a MatMul on the same flattened tensor."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2,
        "wg": rng.standard_normal((10, 8)).astype(np.float32) * 0.3,
        "wm": rng.standard_normal((8, 5)).astype(np.float32) * 0.3,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg"], ["y"], name="fc", transB=1),
        helper.make_node("MatMul", ["f", "wm"], ["z"], name="proj"),
    ]
    return make_model(nodes, {"x": [None, 3, 8, 8]}, ["y", "z"], inits)


def batches(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def test_layers_found_with_axes():
    layers = {l.name: l for l in quantizable_layers(small_net())}
    assert [(n, l.axis, l.bias) for n, l in layers.items()] == [
        ("conv1", 0, "b1"), ("conv2", 0, None), ("fc", 0, None), ("proj", 1, None)]
    assert layers["fc"].activation == layers["proj"].activation == "f"


@pytest.mark.parametrize("algo", ["ifmr", "hfmg"])
def test_quantize_model_fills_the_table(algo):
    m = small_net()
    cfg = create_quant_config(None, m, batch_num=3, config_defination={
        "common_config": {"activation_quant_params": {"act_algo": algo}},
        "override_layer_configs": {"proj": {"weight_quant_params": {"wts_algo": "nuq", "num_steps": 16}}}})
    cm = quantize_model(cfg, m, batches(5), profile="amct")  # the layers' inputs only
    assert cm.batches == 3  # the config's batch_num bounds the batches used
    assert set(cm.calibrators) == {"x", "r1", "f"}  # fc and proj share their input: one calibrator
    t = cm.table()
    assert set(t.layers) == {"conv1", "conv2", "fc", "proj"}
    r1 = t.layers["conv2"].activation
    assert r1.algorithm == algo and r1.clip_min == pytest.approx(0.0, abs=1e-6)  # after ReLU
    assert t.layers["conv1"].weight.scale.shape == (8,) and t.layers["fc"].weight.axis == 0
    assert t.layers["proj"].weight.algorithm == "nuq" and len(np.unique(t.layers["proj"].weight.codes)) <= 16
    assert t.layers["conv1"].weight.codes.dtype == np.int8


def test_data_forms_agree():
    m = small_net()
    cfg = create_quant_config(None, m, batch_num=10)
    data = batches(3)
    ref = quantize_model(cfg, m, data).table()

    class Reader:  # the onnxruntime CalibrationDataReader protocol
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    for form in (Reader(), lambda: iter(data), [d["x"] for d in data]):
        t = quantize_model(cfg, m, form).table()
        assert {k: v.activation.scale for k, v in t.layers.items()} == \
            {k: v.activation.scale for k, v in ref.layers.items()}
    from onnxruntime.quantization import CalibrationDataReader

    class OrtReader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(data)

        def get_next(self):
            return next(self.it, None)

    assert quantize_model(cfg, m, OrtReader()).batches == 3


def test_state_saved_and_merged(tmp_path):
    m = small_net()
    cfg = create_quant_config(None, m, batch_num=10, config_defination={
        "common_config": {"activation_quant_params": {"act_algo": "hfmg"}}})
    data = batches(6)
    whole = quantize_model(cfg, m, data)
    a, b = quantize_model(cfg, m, data[:3]), quantize_model(cfg, m, data[3:])
    save_states(tmp_path / "b.json", b.calibrators)
    b.load_state_dict({k: v.state_dict() for k, v in load_states(tmp_path / "b.json").items()})
    a.merge(b)
    assert a.batches == 6
    for name, lq in whole.table().layers.items():
        assert a.table().layers[name].activation.scale == pytest.approx(lq.activation.scale, rel=0.02)


def test_clear_errors(tmp_path):
    m = small_net()
    cfg = create_quant_config(None, m)
    with pytest.raises(DataError, match=r"inputs \['input'\] do not match the model's \['x'\]"):
        quantize_model(cfg, m, [{"input": np.zeros((1, 3, 8, 8), np.float32)}])
    with pytest.raises(DataError, match=r"input 'x': shape \[1, 4, 8, 8\] does not fit"):
        quantize_model(cfg, m, [{"x": np.zeros((1, 4, 8, 8), np.float32)}])
    with pytest.raises(DataError, match="expected floats"):
        quantize_model(cfg, m, [{"x": np.zeros((1, 3, 8, 8), np.int64)}])
    with pytest.raises(DataError, match="no batch"):
        quantize_model(cfg, m, [])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="bad.onnx"):
        quantize_model(cfg, bad, batches(1))
    with pytest.raises(ConfigError, match="unknown top-level keys"):
        quantize_model({"layerz": {}}, m, batches(1))
    with pytest.raises(ConfigError, match=r"layers the model does not have.*ghost"):
        quantize_model({"layers": {"ghost": {"layer_type": "Conv"}}}, m, batches(1))
    with pytest.raises(ConfigError, match="skip_layers: no quantizable layer"):
        create_quant_config(None, m, skip_layers=["nope"])


def test_ifmr_model_budget_bounds_memory():
    m = small_net()
    cfg = create_quant_config(None, m, batch_num=10)
    rng = np.random.default_rng(3)
    big = [{"x": rng.standard_normal((2048, 3, 8, 8)).astype(np.float32)} for _ in range(4)]  # 1.5 MB each
    with pytest.warns(RuntimeWarning) as seen:
        cm = quantize_model(cfg, m, big, ifmr_memory_budget=1)  # every tensor gets the 4 MiB minimum share
    (w,) = [w for w in seen if "IFMR" in str(w.message)]
    text = str(w.message)
    assert re.fullmatch(r"IFMR: 3 activation tensor\(s\) \(x, r1, c2\) had more calibration values than fit in "
                        r"the 20 MiB set aside for exact IFMR, so their clipping ranges were searched on a 4096-bin "
                        r"histogram of the values instead, which gives close to \(not always exactly\) the same "
                        r"ranges; for exact IFMR, calibrate on fewer batches or raise ifmr_memory_budget", text), text
    assert cm.calibrators["x"].switched and cm.calibrators["r1"].switched and not cm.calibrators["f"].switched
    roomy = quantize_model(cfg, m, big, ifmr_memory_budget=1 << 30)
    assert not any(c.switched for c in roomy.calibrators.values())
    for t, c in cm.calibrators.items():
        assert c.stored_bytes <= c.memory_budget
    assert cm.table().layers["conv1"].activation.details["mode"] in ("exact", "histogram")


def test_ifmr_budget_is_shared_so_small_runs_stay_exact():
    """Issue 14: the IFMR budget warning fired on a 7-image run: each tensor had an equal share of the model's
    budget, so the large tensors switched to the histogram mode while the small ones left theirs unused. A
    tensor now borrows what the others leave: a run whose samples fit in the budget stays exact, with no
    warning and the exact qparams."""
    m = small_net()
    cfg = create_quant_config(None, m, batch_num=10)
    rng = np.random.default_rng(3)
    big = [{"x": rng.standard_normal((2048, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    roomy = quantize_model(cfg, m, big, ifmr_memory_budget=1 << 30)
    held = {t: c.stored_bytes for t, c in roomy.calibrators.items()}
    budget = 48 << 20
    assert sum(held.values()) <= budget and max(held.values()) > budget // len(held)  # equal shares would switch
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cm = quantize_model(cfg, m, big, ifmr_memory_budget=budget)
    assert not any(c.switched for c in cm.calibrators.values())
    def qparams(c):
        return {n: (a.scale, a.zero_point, a.clip_min, a.clip_max) for n, a in c.table().tensors.items()} | {
            n: (lq.activation.scale, lq.activation.zero_point) for n, lq in c.table().layers.items()}

    assert qparams(cm) == qparams(roomy)


def test_ifmr_share_splits_the_budget():
    from ferroquant.quant.calibrators import ifmr_share

    m = small_net()
    cfg = create_quant_config(None, m)
    layers = quantizable_layers(m)
    assert ifmr_share(cfg, layers, 3 << 30) == 1 << 30  # three IFMR tensors: x, r1, f
    assert ifmr_share(cfg, layers, 1) == 4 << 20


def test_amct_switches_reach_the_calibrators():
    m = small_net()
    cfg = create_quant_config(None, m, config_defination={"override_layer_configs": {
        "conv2": {"activation_quant_params": {"act_algo": "hfmg", "hfmg_refine": False}},
        "conv1": {"activation_quant_params": {"search_extend": False, "search_2d": True}}}})
    cm = quantize_model(cfg, m, batches(2))
    assert cm.calibrators["r1"].refine is False
    assert cm.calibrators["x"].options.search_extend is False and cm.calibrators["x"].options.search_2d
    assert cm.table().layers["conv2"].activation.details["refine"] is False


def token_net(seed=0):
    """int64 token ids -> Gather (embedding) -> MatMul, with an int64 length input and a bool mask that
    multiply the result: inputs of every dtype, as exported transformers have."""
    rng = np.random.default_rng(seed)
    inits = {"emb": rng.standard_normal((50, 16)).astype(np.float32),
             "w": rng.standard_normal((16, 8)).astype(np.float32) * 0.3}
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w"], ["h"], name="proj"),
        helper.make_node("Cast", ["mask"], ["maskf"], to=onnx.TensorProto.FLOAT, name="cast"),
        helper.make_node("Unsqueeze", ["maskf", "axes"], ["mask3"], name="unsq"),
        helper.make_node("Mul", ["h", "mask3"], ["y"], name="masked"),
    ]
    inits["axes"] = np.array([2], np.int64)
    graph = helper.make_graph(
        nodes, "tokens",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("mask", onnx.TensorProto.BOOL, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "seq", 8])],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_integer_and_bool_inputs_pass_through_calibration():
    """Token ids, masks: fed to onnxruntime unchanged (only float tensors are observed); this was refused
    with 'expected floats, got int64'."""
    rng = np.random.default_rng(3)
    feeds = [{"ids": rng.integers(0, 50, (2, 7)), "mask": rng.random((2, 7)) > 0.2} for _ in range(3)]
    cfg = create_quant_config(None, token_net(), batch_num=3)
    cm = quantize_model(cfg, token_net(), feeds)
    table = cm.table()
    assert list(table.layers) == ["proj"] and cm.batches == 3
    assert table.layers["proj"].activation.tensor == "e"


def test_integer_input_of_wrong_kind_is_refused_clearly():
    feeds = [{"ids": np.zeros((2, 7), np.float32), "mask": np.ones((2, 7), bool)}]
    with pytest.raises(DataError, match="'ids'.*int64"):
        quantize_model(create_quant_config(None, token_net()), token_net(), feeds)


@pytest.mark.parametrize("algorithm", ["ifmr", "hfmg", "minmax", "percentile", "entropy"])
def test_every_calibrator_is_selectable_from_the_config(algorithm):
    m = small_net()
    cfg = create_quant_config(None, m, batch_num=2, config_defination={
        "common_config": {"activation": {"algorithm": algorithm, "symmetric": True}}})
    table = quantize_model(cfg, m, batches(2)).table()
    assert {lq.activation.algorithm for lq in table.layers.values()} == {algorithm}
    assert all(lq.activation.zero_point == 0 and lq.activation.scale > 0 for lq in table.layers.values())


def test_skip_layer_types_in_the_config():
    m = small_net()
    cfg = create_quant_config(None, m, skip_layer_types=["Gemm", "MatMul"])
    assert cfg.enabled_layers() == ["conv1", "conv2"] and cfg.skip_layer_types == ("Gemm", "MatMul")
    with pytest.raises(ConfigError, match="skip_layer_types: unknown layer types"):
        create_quant_config(None, m, skip_layer_types=["Relu"])


def test_the_model_is_loaded_and_fused_once_per_run(monkeypatch, tmp_path):
    """create_quant_config then quantize_model loaded and fused the model twice; one call loads it once."""
    import ferroquant.onnx.api as api
    import ferroquant.onnx.io as io_

    calls = {"load": 0, "fuse": 0}
    real_load, real_fuse = io_.load_model, api.fuse

    def load(*a, **k):
        calls["load"] += 1
        return real_load(*a, **k)

    def fuse(*a, **k):
        calls["fuse"] += 1
        return real_fuse(*a, **k)

    monkeypatch.setattr(api, "load_model", load)
    monkeypatch.setattr(api, "fuse", fuse)
    path = tmp_path / "m.onnx"
    onnx.save(small_net(), str(path))
    from ferroquant.onnx.api import quantize

    quantize(str(path), batches(2), tmp_path / "out" / "m_int8.onnx")
    assert calls == {"load": 1, "fuse": 1}


def test_bias_codes_are_in_the_table_and_the_record(tmp_path):
    """The exporter copies the table's int32 bias codes (it does no arithmetic) and the record lists biases."""
    from onnx import numpy_helper

    from ferroquant.onnx import read_record, save_model

    m = small_net()
    cm = quantize_model(create_quant_config(None, m, batch_num=2), m, batches(2))
    table = cm.table()
    bq = table.layers["conv1"].bias
    assert bq is not None and bq.tensor == "b1" and bq.codes.dtype == np.int32 and bq.axis == 0
    s_in, s_w = table.layers["conv1"].activation.scale, table.layers["conv1"].weight.scale
    np.testing.assert_array_equal(bq.scale, (np.float32(s_in) * s_w).astype(np.float32))
    assert table.layers["conv2"].bias is None and table.layers["proj"].bias is None
    paths = save_model(cm, tmp_path / "m", table, latency_check=False)
    dep = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(paths["deploy"])).graph.initializer}
    np.testing.assert_array_equal(dep["conv1.bias_quantized"], bq.codes)
    rec = read_record(paths["record"])["layers"]
    assert rec["conv1"]["bias"]["tensor"] == "b1" and rec["conv1"]["bias"]["bits"] == 32
    assert rec["conv1"]["bias"]["scale"] == [float(v) for v in bq.scale]
    assert "bias" not in rec["conv2"]


def test_the_calibration_session_plans_no_memory_pattern_and_does_not_spin():
    """onnxruntime's memory pattern puts a new session's second run into a fresh planned block, whose pages are
    faulted in again (0.08 s of MobileNetV2's 0.48 s calibration run, bench_ptq_time), and its worker threads
    spin after each run, taking the cores the histogram observes run on (0.29 -> 0.23 s without); the tapped
    session goes without both, and its taps are the same."""
    from ferroquant.onnx.calibration import tapped_session

    model = small_net()
    sess = tapped_session(model, ["r1", "f"])
    options = sess.get_session_options()
    assert options.enable_mem_pattern is False
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    feed = batches(1)[0]
    import onnxruntime as ort

    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, z, r1, f = sess.run(["y", "z", "r1", "f"], feed)
    np.testing.assert_array_equal(y, plain.run(["y"], feed)[0])
    assert r1.shape == (2, 8, 8, 8) and f.shape == (2, 8) and (r1 >= 0).all()


def test_session_source_adds_the_taps_without_copying_the_model():
    """The tapped session's bytes are the model's, then a message holding only the extra outputs (a parser
    appends them), instead of a copy of the whole model with the outputs added: the same model, each tap once,
    the graph's own outputs not repeated, and the model left unchanged."""
    from ferroquant.onnx.external import session_source

    model = small_net()
    before = model.SerializeToString(deterministic=True)
    data, keep = session_source(model, ["r1", "y", "f", "r1", "c2"])
    assert keep is None and model.SerializeToString(deterministic=True) == before
    parsed = onnx.ModelProto.FromString(data)
    assert [o.name for o in parsed.graph.output] == ["y", "z", "r1", "f", "c2"]
    assert parsed.graph.name == model.graph.name and len(parsed.graph.initializer) == len(model.graph.initializer)
    assert [n.name for n in parsed.graph.node] == [n.name for n in model.graph.node]
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["y", "z", "r1", "f", "c2"]
