"""QDQ export (fake-quant and deploy models) and the quantization record."""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ferroquant import ops
from ferroquant.errors import ConfigError, ModelError
from ferroquant.onnx import (
    RecordError,
    export_deploy,
    export_fake_quant,
    read_record,
    record_dict,
    save_onnx,
    write_record,
)
from ferroquant.onnx.graph import GraphView
from ferroquant.onnx.io import default_opset
from ferroquant.onnx.layers import quantizable_layers
from ferroquant.onnx.qdq import Layout
from ferroquant.quant.profiles import detect_cpu_types
from ferroquant.quant.table import ActivationQuant, LayerQuant, QuantTable, WeightQuant
from ferroquant.quant.weights import layer_quant
from tests.onnx.builders import add_output, make_model, run

Feed = Dict[str, np.ndarray]


# ---------------------------------------------------------------- helpers: tables, runs, tiny graphs


def activation_ranges(model: onnx.ModelProto, tensors: Sequence[str], feeds: Sequence[Feed]) -> Dict[str, tuple]:
    """(min, max) of each tensor over ``feeds``, by running a copy of ``model`` with extra outputs in ORT."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in outputs:
            add_output(probe, t)
            outputs.add(t)
    names = [o.name for o in probe.graph.output]
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    for feed in feeds:
        values = dict(zip(names, run(probe, feed)))
        for t in tensors:
            v = feed[t] if t in feed else values[t]
            lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    return {t: (lo[t], hi[t]) for t in tensors}


def build_table(model: onnx.ModelProto, feeds: Sequence[Feed], *, w_bits: int = 8, a_bits: int = 8,
                channel_wise: bool = True, algorithm: str = "arq") -> QuantTable:
    """ARQ (or NUQ) weights and min/max asymmetric activations for every quantizable layer."""
    layers = quantizable_layers(model)
    view = GraphView(model)
    ranges = activation_ranges(model, sorted({ly.activation for ly in layers}), feeds)
    table = QuantTable()
    for ly in layers:
        w = view.array(ly.weight)
        if algorithm == "nuq":
            r = ops.nuq(w, num_steps=16, channel_wise=channel_wise, axis=ly.axis)
            wq = WeightQuant(ly.weight, r.scale, r.zero_point, ly.axis if channel_wise else None, 8, "nuq",
                             r.codes, r.levels)
        else:
            r = ops.arq(w, channel_wise=channel_wise, axis=ly.axis, bits=w_bits, groups=ly.groups)
            wq = WeightQuant(ly.weight, r.scale, r.zero_point, r.axis, w_bits, "arq", r.codes)
        lo, hi = ranges[ly.activation]
        qp = ops.qparams_from_range(lo, hi, bits=a_bits, symmetric=False)
        aq = ActivationQuant(ly.activation, qp.scale, qp.zero_point, a_bits, "minmax", lo, hi, {"batches": 1})
        table.layers[ly.name] = layer_quant(ly, aq, wq, view.array(ly.bias) if ly.bias else None)
    return table


def ort_run(model: onnx.ModelProto, feed: Feed, optimize: bool = False) -> List[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def ops_of(model: onnx.ModelProto, op: str) -> List[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


def init_types(model: onnx.ModelProto) -> Dict[str, int]:
    return {t.name: t.data_type for t in model.graph.initializer}


def single(rng: np.random.Generator, op: str, w_shape: tuple, x_shape: tuple, bias: Optional[int] = None,
           **attrs: object) -> tuple:
    """x -> one ``op`` node (weight ``w``, optional bias ``b`` of length ``bias``) -> y."""
    inits = {"w": rng.normal(0, 0.3, w_shape).astype(np.float32)}
    ins = ["x", "w"]
    if bias:
        inits["b"] = rng.normal(0, 0.5, bias).astype(np.float32)
        ins.append("b")
    model = make_model([helper.make_node(op, ins, ["y"], name="layer", **attrs)], {"x": x_shape}, ["y"], inits)
    feeds = [{"x": rng.normal(0, 1, x_shape).astype(np.float32)} for _ in range(2)]
    return model, feeds


CASES = {
    "conv_bias": lambda r: single(r, "Conv", (6, 4, 3, 3), (2, 4, 7, 7), 6, pads=[1, 1, 1, 1]),
    "conv_nobias": lambda r: single(r, "Conv", (6, 4, 3, 3), (2, 4, 7, 7), None, strides=[2, 2]),
    "conv_grouped": lambda r: single(r, "Conv", (6, 2, 3, 3), (2, 4, 7, 7), 6, group=2),
    "convT_g1": lambda r: single(r, "ConvTranspose", (4, 6, 3, 3), (2, 4, 5, 5), 6, strides=[2, 2]),
    "convT_g2": lambda r: single(r, "ConvTranspose", (4, 3, 3, 3), (2, 4, 5, 5), 6, group=2, strides=[2, 2]),
    "gemm_transB1": lambda r: single(r, "Gemm", (5, 8), (3, 8), 5, transB=1),
    "gemm_transB0": lambda r: single(r, "Gemm", (8, 5), (3, 8), 5, transB=0),
    "matmul": lambda r: single(r, "MatMul", (8, 5), (2, 3, 8)),
}


def simulate(model: onnx.ModelProto, table: QuantTable, feed: Feed) -> np.ndarray:
    """A single-layer model computed on fake-quantized input and weight in plain float (ORT, no Q/DQ)."""
    (lq,) = table.layers.values()
    layer, aq, wq = lq.layer, lq.activation, lq.weight
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    w = GraphView(ref).array(layer.weight)
    fake_w = ops.arq(w, channel_wise=wq.axis is not None, axis=layer.axis, bits=wq.bits, groups=layer.groups).fake
    GraphView(ref).set_initializer(layer.weight, fake_w)
    x = ops.fake_quant(feed["x"], aq.scale, aq.zero_point, bits=aq.bits)
    return ort_run(ref, {"x": x})[0]


def bias_step(table: QuantTable) -> float:
    """Half the largest bias quantization step s_in * s_w: the most bias rounding can move an output."""
    return max(0.5 * lq.activation.scale * float(np.max(lq.weight.scale)) for lq in table.layers.values())


# ---------------------------------------------------------------- single layers


@pytest.mark.parametrize("case", sorted(CASES))
def test_single_layer_exports(case: str) -> None:
    model, feeds = CASES[case](np.random.default_rng(0))
    before = model.SerializeToString()
    table = build_table(model, feeds)
    fq, dep = export_fake_quant(model, table), export_deploy(model, table)
    assert model.SerializeToString() == before, "the input model must not be modified"
    expect_opset = 21 if case == "convT_g2" else 13
    assert default_opset(fq) == default_opset(dep) == expect_opset
    for m in (fq, dep):
        names = [n.name for n in m.graph.node]
        assert len(names) == len(set(names)) and all(names)
        assert len(ops_of(m, "QuantizeLinear")) == (2 if m is fq else 1)
    types = init_types(dep)
    assert "w" not in types and types["layer.weight_quantized"] == TensorProto.INT8
    assert types["x_zero_point"] == TensorProto.INT8  # AMCT: signed int8 even for asymmetric activations
    if "b" in {i for n in model.graph.node for i in n.input}:
        assert "b" not in types and types["layer.bias_quantized"] == TensorProto.INT32
    feed = feeds[0]
    y_fq, y_dep = ort_run(fq, feed)[0], ort_run(dep, feed)[0]
    y_sim = simulate(model, table, feed)
    scale = float(np.max(np.abs(y_sim)))
    np.testing.assert_allclose(y_fq, y_sim, rtol=0, atol=1e-5 * scale)
    assert float(np.max(np.abs(y_fq - y_dep))) <= bias_step(table) + 1e-5 * scale
    # the deploy model in this CPU's integer types (uint8 activations; 7-bit weights without VNNI, see
    # quant/profiles.py): onnxruntime's fused integer kernels compute what the Q/DQ graph specifies
    cpu = detect_cpu_types()
    rt_table = build_table(model, feeds, w_bits=min(8, cpu.max_weight_bits))
    rt = export_deploy(model, rt_table, Layout({aq.tensor: aq for aq in rt_table.activations().values()},
                                               unsigned=cpu.unsigned_activations))
    y_rt = ort_run(rt, feed)[0]
    assert float(np.max(np.abs(y_rt - y_fq))) <= 0.02 * scale
    assert float(np.max(np.abs(ort_run(rt, feed, optimize=True)[0] - y_rt))) <= 0.02 * scale


def test_gemm_matches_numpy() -> None:
    """Fake-quant Gemm against a pure NumPy quantize -> dequantize simulation (round half to even)."""
    model, feeds = CASES["gemm_transB1"](np.random.default_rng(1))
    table = build_table(model, feeds)
    (lq,) = table.layers.values()
    aq, wq = lq.activation, lq.weight
    view = GraphView(model)
    w, b, x = view.array("w"), view.array("b"), feeds[1]["x"]
    xq = np.clip(np.rint(x / np.float32(aq.scale)) + aq.zero_point, -128, 127)
    x_hat = (xq - aq.zero_point) * np.float32(aq.scale)
    s = np.asarray(wq.scale, np.float32)[:, None]
    w_hat = np.clip(np.rint(w / s), -128, 127) * s
    want = x_hat.astype(np.float64) @ w_hat.T.astype(np.float64) + b
    got = ort_run(export_fake_quant(model, table), feeds[1])[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.max(np.abs(want))))


def test_per_tensor_weights() -> None:
    model, feeds = CASES["conv_bias"](np.random.default_rng(2))
    table = build_table(model, feeds, channel_wise=False)
    dep = export_deploy(model, table)
    (dq,) = [n for n in ops_of(dep, "DequantizeLinear") if n.input[0] == "layer.weight_quantized"]
    assert not any(a.name == "axis" for a in dq.attribute)
    y_sim = simulate(model, table, feeds[0])
    np.testing.assert_allclose(ort_run(export_fake_quant(model, table), feeds[0])[0], y_sim, rtol=0,
                               atol=1e-5 * float(np.max(np.abs(y_sim))))
    assert float(np.max(np.abs(ort_run(dep, feeds[0])[0] - y_sim))) <= bias_step(table) + 1e-4


def test_grouped_conv_transpose_is_blocked() -> None:
    model, feeds = CASES["convT_g2"](np.random.default_rng(3))
    dep = export_deploy(model, build_table(model, feeds))
    (dq,) = [n for n in ops_of(dep, "DequantizeLinear") if n.input[0] == "layer.weight_quantized"]
    attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
    assert attrs == {"axis": 0, "block_size": 2}
    scale = GraphView(dep).array(dq.input[1])
    assert scale.shape == (2, 3, 3, 3)


def test_int4_weights_and_int16_activations() -> None:
    model, feeds = CASES["conv_bias"](np.random.default_rng(4))
    table = build_table(model, feeds, w_bits=4, a_bits=16)
    fq, dep = export_fake_quant(model, table), export_deploy(model, table)
    assert default_opset(dep) == 21 and dep.ir_version >= 10
    types = init_types(dep)
    assert types["layer.weight_quantized"] == TensorProto.INT4
    assert types["x_zero_point"] == TensorProto.INT16
    y_sim = simulate(model, table, feeds[0])
    np.testing.assert_allclose(ort_run(fq, feeds[0])[0], y_sim, rtol=0, atol=1e-5 * float(np.max(np.abs(y_sim))))
    assert float(np.max(np.abs(ort_run(dep, feeds[0])[0] - y_sim))) <= bias_step(table) + 1e-4


def test_nuq_weights_feed_codes_in_both_models() -> None:
    model, feeds = CASES["conv_bias"](np.random.default_rng(5))
    table = build_table(model, feeds, algorithm="nuq")
    fq, dep = export_fake_quant(model, table), export_deploy(model, table)
    for m in (fq, dep):
        assert init_types(m)["layer.weight_quantized"] == TensorProto.INT8 and "w" not in init_types(m)
        assert len(ops_of(m, "QuantizeLinear")) == 1  # the activation only
    (lq,) = table.layers.values()
    codes = GraphView(dep).array("layer.weight_quantized")
    assert set(np.unique(codes)) <= set(np.asarray(lq.weight.levels).tolist())
    diff = np.max(np.abs(ort_run(fq, feeds[0])[0] - ort_run(dep, feeds[0])[0]))
    assert diff <= bias_step(table) + 1e-5


# ---------------------------------------------------------------- graph structure


def shared_input_model(rng: np.random.Generator) -> tuple:
    """x feeds Conv a, Conv b (both quantized) and a Relu (not quantized, a second graph output);
    conv_c reads a + b."""
    inits = {"wa": rng.normal(0, 0.3, (6, 4, 3, 3)).astype(np.float32),
             "wb": rng.normal(0, 0.3, (6, 4, 1, 1)).astype(np.float32),
             "ba": rng.normal(0, 0.3, 6).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b"),
             helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Add", ["a", "b"], ["s"], name="add"),
             helper.make_node("Conv", ["s", "wb2"], ["y"], name="conv_c")]
    inits["wb2"] = rng.normal(0, 0.3, (3, 6, 1, 1)).astype(np.float32)
    model = make_model(nodes, {"x": (2, 4, 6, 6)}, ["y", "r"], inits)
    feeds = [{"x": rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float32)} for _ in range(2)]
    return model, feeds


def test_one_qdq_per_activation_and_float_for_other_readers() -> None:
    model, feeds = shared_input_model(np.random.default_rng(6))
    table = build_table(model, feeds)
    for m in (export_fake_quant(model, table), export_deploy(model, table)):
        q_inputs = [n.input[0] for n in ops_of(m, "QuantizeLinear") if not n.input[0].startswith("w")]
        assert sorted(q_inputs) == ["s", "x"]
        view = GraphView(m)
        (dq_x,) = [n.output[0] for n in ops_of(m, "DequantizeLinear") if n.input[0] == "x_QuantizeLinear"]
        readers = {n.name for n in view.consumers_of(dq_x)}
        assert readers == {"conv_a", "conv_b"}
        assert {n.name for n in view.consumers_of("x")} == {"relu", "x_QuantizeLinear"}
        out_fq = ort_run(m, feeds[0])
        np.testing.assert_array_equal(out_fq[1], np.maximum(feeds[0]["x"], 0))  # Relu read the float x
        ort_run(m, feeds[0], optimize=True)


def test_layers_not_in_table_stay_float() -> None:
    model, feeds = shared_input_model(np.random.default_rng(7))
    table = build_table(model, feeds)
    del table.layers["conv_c"]
    dep = export_deploy(model, table)
    assert "wb2" in init_types(dep) and init_types(dep)["wb2"] == TensorProto.FLOAT
    assert [n.input[0] for n in ops_of(dep, "QuantizeLinear")] == ["x"]


def conv_stack(rng: np.random.Generator, depth: int = 4, c: int = 128) -> tuple:
    nodes, inits, x = [], {}, "x"
    for i in range(depth):
        inits[f"w{i}"] = rng.normal(0, 0.1, (c, c if i else 3, 3, 3)).astype(np.float32)
        inits[f"b{i}"] = rng.normal(0, 0.1, c).astype(np.float32)
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    model = make_model(nodes, {"x": (1, 3, 8, 8)}, [x], inits)
    return model, [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)}]


def test_deploy_file_is_four_times_smaller(tmp_path) -> None:
    model, feeds = conv_stack(np.random.default_rng(8))
    table = build_table(model, feeds)
    dep = export_deploy(model, table)
    ratio = save_onnx(model, tmp_path / "f.onnx").stat().st_size / save_onnx(dep, tmp_path / "d.onnx").stat().st_size
    assert ratio > 3.8, ratio  # int8 weights; per-channel scales and int32 biases are the rest
    y, y_fq = ort_run(dep, feeds[0])[0], ort_run(export_fake_quant(model, table), feeds[0])[0]
    assert float(np.max(np.abs(y - y_fq))) <= 0.02 * float(np.max(np.abs(y_fq)))


@pytest.mark.parametrize("deploy", [False, True])
def test_exports_declare_the_types_and_shapes_of_their_qdq_tensors(deploy) -> None:
    """The exports type the Q/DQ tensors they add themselves (onnx's shape inference over a whole export took
    17 ms each on MobileNetV2, for these alone): what they declare is what shape inference finds for them."""
    from ferroquant.onnx.io import load_model

    model, feeds = conv_stack(np.random.default_rng(8), depth=2, c=16)
    model = load_model(model)  # shapes inferred, as quantize does
    out = (export_deploy if deploy else export_fake_quant)(model, build_table(model, feeds))
    made = {n.output[0] for n in out.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    declared = {v.name: v.type for v in out.graph.value_info}
    assert made <= set(declared)
    bare = onnx.ModelProto()
    bare.CopyFrom(out)
    kept = [v for v in bare.graph.value_info if v.name not in made]
    del bare.graph.value_info[:]
    bare.graph.value_info.extend(kept)
    inferred = {v.name: v.type for v in onnx.shape_inference.infer_shapes(bare, strict_mode=True).graph.value_info}
    assert {t: declared[t] for t in made} == {t: inferred[t] for t in made}


# ---------------------------------------------------------------- errors


def test_export_errors_name_the_problem() -> None:
    model, feeds = CASES["conv_bias"](np.random.default_rng(9))
    table = build_table(model, feeds)
    (lq,) = table.layers.values()
    bad = QuantTable({"layer": LayerQuant(lq.layer, ActivationQuant("x", 0.1, 0, 6, "minmax", -1, 1), lq.weight)})
    with pytest.raises(ConfigError, match="'x'.*bits=6"):
        export_deploy(model, bad)
    wq = lq.weight
    short = WeightQuant(wq.tensor, wq.scale[:3], wq.zero_point[:3], wq.axis, 8, "arq", wq.codes)
    with pytest.raises(ConfigError, match="'layer'.*3 weight scales"):
        export_deploy(model, QuantTable({"layer": LayerQuant(lq.layer, lq.activation, short)}))
    with pytest.raises(ModelError, match="'nope'"):
        export_fake_quant(model, QuantTable({"nope": lq}))


# ---------------------------------------------------------------- record


def test_record_round_trip_is_exact(tmp_path) -> None:
    model, feeds = shared_input_model(np.random.default_rng(10))
    table = build_table(model, feeds)
    conv_a = table.layers["conv_a"]
    nuq = ops.nuq(GraphView(model).array("wb"), num_steps=16, axis=0)
    table.layers["conv_b"] = LayerQuant(table.layers["conv_b"].layer, table.layers["conv_b"].activation,
                                        WeightQuant("wb", nuq.scale, nuq.zero_point, 0, 8, "nuq", nuq.codes,
                                                    nuq.levels))
    path = write_record(tmp_path / "quant.json", table, extra={"model": "tiny", "seed": np.int64(10)})
    data = read_record(path)
    assert data == record_dict(table, {"model": "tiny", "seed": 10})
    entry = data["layers"]["conv_a"]
    assert entry["op_type"] == "Conv" and entry["weight"]["axis"] == 0
    np.testing.assert_array_equal(np.asarray(entry["weight"]["scale"], np.float32), conv_a.weight.scale)
    assert entry["activation"]["scale"] == conv_a.activation.scale
    assert entry["activation"]["zero_point"] == conv_a.activation.zero_point
    assert data["layers"]["conv_b"]["weight"]["levels"] == [int(v) for v in np.ravel(nuq.levels)]


def _corrupt(tmp_path, table: QuantTable, edit) -> str:  # noqa: ANN001 - a callable editing the dict
    data = record_dict(table)
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("format"), "not a ferroquant record"),
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d["layers"]["layer"]["weight"].pop("scale"), r"layer\.weight: missing field 'scale'"),
    (lambda d: d["layers"]["layer"]["weight"]["scale"].__setitem__(0, -1.0), r"layer\.weight\.scale: -1\.0"),
    (lambda d: d["layers"]["layer"]["weight"]["zero_point"].pop(), "6 scales and 5 zero points"),
    (lambda d: d["layers"]["layer"]["activation"].update(zero_point=300), r"activation\.zero_point: 300"),
    (lambda d: d["layers"]["layer"]["activation"].update(bits="8"), r"activation\.bits: expected int"),
    (lambda d: d["layers"]["layer"]["activation"].update(clip_min=5.0), "clip_min 5.0 > clip_max"),
])
def test_malformed_record_errors(tmp_path, edit, message: str) -> None:
    model, feeds = CASES["conv_bias"](np.random.default_rng(11))
    path = _corrupt(tmp_path, build_table(model, feeds), edit)
    with pytest.raises(RecordError, match=message):
        read_record(path)


def test_unreadable_record_errors(tmp_path) -> None:
    with pytest.raises(RecordError, match="not found"):
        read_record(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a JSON record"):
        read_record(tmp_path / "junk.json")


# ---------------------------------------------------------------- MobileNetV2 on real photos


@pytest.mark.slow
def test_mobilenet_v2_deploy_agrees_with_fp32() -> None:
    pytest.importorskip("PIL")
    from ferroquant.examples.photos import calibration_and_eval_sets
    from ferroquant.examples.models import mobilenet_v2_onnx
    from ferroquant.onnx import fuse

    try:
        model, _ = fuse(mobilenet_v2_onnx())
        sets = calibration_and_eval_sets(3, 3, seed=0)
    except Exception as e:  # noqa: BLE001 - the weights or photo packages are optional extras
        pytest.skip(f"MobileNetV2 weights or photos unavailable: {e}")
    table = build_table(model, [{"input": sets.calibration}])
    assert len(table.layers) == 53
    dep = export_deploy(model, table)
    assert sum(1 for t in dep.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 4) == 0
    cal, ev = sets.calibration, sets.evaluation
    ref_cal, ref_ev = (ort_run(model, {"input": x})[0].argmax(1) for x in (cal, ev))
    for m in (dep, export_fake_quant(model, table)):
        for optimize in (False, True):
            got_cal = ort_run(m, {"input": cal}, optimize=optimize)[0]
            got_ev = ort_run(m, {"input": ev}, optimize=optimize)[0]
            assert np.array_equal(got_cal.argmax(1), ref_cal), optimize  # the calibration photos
            # disjoint photos: FP32's class in the quantized top 5, top-1 on most (one crop is ambiguous)
            assert all(r in np.argsort(g)[-5:] for r, g in zip(ref_ev, got_ev))
            assert np.mean(got_ev.argmax(1) == ref_ev) >= 2 / 3


@pytest.mark.parametrize("field", ["weight", "bias", "details"])
def test_record_refuses_non_finite_numbers(field: str) -> None:
    """The record converts per-channel arrays in one call; a non-finite value still raises, naming the layer."""
    import dataclasses

    model, feeds = CASES["conv_bias"](np.random.default_rng(11))
    table = build_table(model, feeds)
    name, lq = next(iter(table.layers.items()))
    if field == "weight":
        scale = np.array(lq.weight.scale, np.float32, copy=True)
        scale.ravel()[-1] = np.inf
        lq = dataclasses.replace(lq, weight=dataclasses.replace(lq.weight, scale=scale))
    elif field == "bias":
        scale = np.array(lq.bias.scale, np.float32, copy=True)
        scale.ravel()[0] = np.nan
        lq = dataclasses.replace(lq, bias=dataclasses.replace(lq.bias, scale=scale))
    else:
        details = {**lq.activation.details, "losses": np.array([1.0, np.inf])}
        lq = dataclasses.replace(lq, activation=dataclasses.replace(lq.activation, details=details))
    table.layers[name] = lq
    with pytest.raises(RecordError, match=rf"{name}\..*non-finite number (inf|nan)"):
        record_dict(table)


def _json_leaves() -> "object":
    from hypothesis import strategies as st

    leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.text(max_size=12),
                     st.floats(allow_nan=False, allow_infinity=False))
    numbers = st.lists(st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False, allow_infinity=False)),
                       min_size=1, max_size=6)
    return st.recursive(st.one_of(leaf, numbers),
                        lambda kids: st.one_of(st.lists(kids, max_size=4).filter(lambda v: not v or not isinstance(
                            v[0], (int, float)) or isinstance(v[0], bool)),
                                               st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                        max_leaves=20)


def test_record_text_is_what_json_writes(monkeypatch):
    """The record's writer skips json.dumps for its thousands of leaves (MobileNetV2's record: 53 -> 20 ms);
    the text is the same, character for character, as the same layout with every key and leaf from json.dumps,
    and NaN/Inf are still refused."""
    from hypothesis import given, settings

    import ferroquant.onnx.record as record
    from ferroquant.onnx.record import dumps

    def with_json(value):
        with monkeypatch.context() as m:
            m.setattr(record, "_scalar", lambda v: json.dumps(v, allow_nan=False))
            m.setattr(record, "_quote", json.dumps)
            return record.dumps(value)

    @settings(max_examples=300, deadline=None)
    @given(_json_leaves())
    def same(value):
        text = dumps(value)
        assert text == with_json(value)
        assert json.loads(text) == value

    same()
    for bad in (float("nan"), float("inf"), {"a": [1.0, float("-inf")]}, {"s": float("nan")}):
        with pytest.raises(ValueError):
            dumps(bad)
