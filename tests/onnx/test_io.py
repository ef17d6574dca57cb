"""Model I/O: load errors, opset upgrade, Constant-node weights, save with external data, the graph view."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import helper, numpy_helper  # noqa: E402

from ferroquant.errors import ModelError, QuantError  # noqa: E402
from ferroquant.onnx import GraphView, constants_to_initializers, load_model, quantize, save_onnx  # noqa: E402
from tests.onnx import builders as B  # noqa: E402


def _small(opset: int = 13) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    model, _ = B.conv_bn(rng)
    if opset != 13:
        model.opset_import[0].version = opset
        model.ir_version = 4
    return model


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope.onnx")


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00\xffthis is not a protobuf\x13\x37" * 10)
    with pytest.raises(ModelError) as info:
        load_model(path)
    assert isinstance(info.value, QuantError) and isinstance(info.value, ValueError)


def test_wrong_type():
    with pytest.raises(ModelError, match="expected a path"):
        load_model(42)  # type: ignore[arg-type]


def test_round_trip_and_external_data(tmp_path):
    model = load_model(_small())
    save_onnx(model, tmp_path / "m.onnx")
    save_onnx(model, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    assert len(model.graph.initializer[0].raw_data) > 0  # the caller's model is not externalized
    for name in ("m.onnx", "ext.onnx"):
        again = load_model(tmp_path / name)
        a = {t.name: numpy_helper.to_array(t) for t in again.graph.initializer}
        for t in model.graph.initializer:
            np.testing.assert_array_equal(a[t.name], numpy_helper.to_array(t))


def test_missing_external_data(tmp_path):
    save_onnx(load_model(_small()), tmp_path / "ext.onnx", external_data=True)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ModelError, match="external data|cannot read"):
        load_model(tmp_path / "ext.onnx")


def test_opset9_is_upgraded_and_runs(tmp_path):
    rng = np.random.default_rng(1)
    inits = B.bn_params(rng, 3)
    nodes = [helper.make_node("BatchNormalization", ["x", *inits], ["b"], name="bn"),
             helper.make_node("Relu", ["b"], ["y"], name="relu")]
    model = B.make_model(nodes, {"x": (1, 3, 4, 4)}, ["y"], inits, opset=9)
    path = save_onnx(model, tmp_path / "old.onnx")
    loaded = load_model(path)
    assert loaded.opset_import[0].version == 13 and loaded.ir_version >= 7
    feed = {"x": rng.normal(size=(1, 3, 4, 4)).astype(np.float32)}
    np.testing.assert_allclose(B.run(loaded, feed)[0], B.run(model, feed)[0], rtol=1e-6)


def test_unconvertible_opset_is_refused(monkeypatch):
    def refuse(model, target):  # noqa: ANN001, ANN202
        raise RuntimeError("No adapter for op X")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    with pytest.raises(ModelError, match="opset 9.*could not upgrade.*No adapter"):
        load_model(_small(opset=9))


def test_constant_node_weights_become_initializers():
    model = _small()
    w = [t for t in model.graph.initializer if t.name == "w"][0]
    model.graph.initializer.remove(w)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["w"], name="const_w", value=w))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["unused_f"], value_float=2.0))
    loaded = load_model(model)
    assert "Constant" not in B.graph_ops(loaded)
    assert GraphView(loaded).array("w").shape == (6, 4, 3, 3)
    _, report = constants_to_initializers(model)
    assert set(report.converted) == {"w", "unused_f"}


def test_ill_formed_graph_names_the_node():
    model = _small()
    model.graph.node[1].input[0] = "nobody_makes_this"
    with pytest.raises(ModelError, match="'bn'"):
        load_model(model)
    empty = _small()
    del empty.graph.node[:]
    with pytest.raises(ModelError, match="no nodes"):
        load_model(empty)


@pytest.mark.parametrize("skeleton_from", [0, None])
def test_malformed_weights_are_refused_by_name(monkeypatch, skeleton_from):
    """The checker runs on the model without its weights (fast) when they are large (here: from 0 bytes on),
    each weight left out then checked by the checker's own tensor check; or on the whole model: either way a
    raw buffer of the wrong size or two value fields are refused."""
    import ferroquant.onnx.io as fio

    if skeleton_from is not None:
        monkeypatch.setattr(fio, "CHECK_SKELETON_BYTES", skeleton_from)
    weight = np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype(np.float32)  # 4.6 KB
    model = B.make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], {"x": (1, 8, 6, 6)}, ["y"],
                         {"w": weight})
    w = model.graph.initializer[0]
    short = onnx.ModelProto()
    short.CopyFrom(model)
    bad = next(t for t in short.graph.initializer if t.name == w.name)
    bad.raw_data = bad.raw_data[:100]
    with pytest.raises(ModelError, match=f"checker refuses.*{w.name}.*raw_data size"):
        load_model(short)
    twice = onnx.ModelProto()
    twice.CopyFrom(model)
    bad = next(t for t in twice.graph.initializer if t.name == w.name)
    bad.float_data.extend([1.0])
    with pytest.raises(ModelError, match="checker refuses"):
        load_model(twice)
    load_model(model)


def test_a_model_onnxruntime_refuses_is_refused_naming_the_node(tmp_path):
    """A strict shape-inference failure is not taken as proof that the model is bad (onnx's inference has
    gaps of its own): the model loads, and the refusal comes from onnxruntime, naming the node."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Mul", ["h", "k"], ["y"], name="badmul")]
    model = B.make_model(nodes, {"x": (2, 3)}, ["y"], {"k": np.ones(3, np.float32), "w": np.ones((3, 3), np.float32)})
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones(5, np.float32), "k"))
    load_model(model)
    with pytest.raises(ModelError, match="onnxruntime cannot run the model.*badmul"):
        quantize(model, [{"x": np.ones((2, 3), np.float32)}], tmp_path / "q.onnx")


def test_graph_view_maps():
    model = load_model(_small())
    view = GraphView(model)
    conv = view.producer("c")
    assert conv.name == "conv" and [n.name for n in view.consumers_of("c")] == ["bn"]
    assert view.is_graph_output("y") and view.only_consumer("c", view.consumers_of("c")[0])
    assert view.array("missing") is None and view.array("w").dtype == np.float32


def _zero_d_constant_model() -> onnx.ModelProto:
    """Conv -> Reshape by a shape built from a 0-d Constant (Unsqueeze of a scalar), as torch exports write."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["minus_one"], value=numpy_helper.from_array(np.array(-1, np.int64))),
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Unsqueeze", ["minus_one", "axes"], ["one_d"]),
        helper.make_node("Constant", [], ["batch"], value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("Concat", ["batch", "one_d"], ["shape"], axis=0),
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["y", "shape"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "zero_d", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 256])],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_zero_d_constants_keep_their_shape():
    """A 0-d Constant became a [1] initializer (np.ascontiguousarray), which broke shape inference and
    onnxruntime (Reshape's shape turned 2-D)."""
    m = load_model(_zero_d_constant_model())
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert inits["minus_one"].shape == ()
    assert inits["axes"].shape == (1,)
    x = np.random.default_rng(2).normal(size=(1, 3, 8, 8)).astype(np.float32)
    assert B.run(m, {"x": x})[0].shape == (1, 256)


def test_set_initializer_keeps_zero_d_and_empty():
    m = _zero_d_constant_model()
    view = GraphView(m)
    view.set_initializer("scalar", np.float32(2.5))
    view.set_initializer("empty", np.zeros((0,), np.int64))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert inits["scalar"].shape == () and inits["scalar"] == np.float32(2.5)
    assert inits["empty"].shape == (0,)


def test_constant_transposes_fold_into_initializers():
    """``MatMul(x, Transpose(w))`` (torch's export of ``nn.Linear``) becomes ``MatMul(x, w')``: ``w'`` takes
    ``w``'s name when the Transpose was its only reader, ``w_transposed`` when ``w`` is read elsewhere too."""
    from ferroquant.onnx.io import fold_constant_transposes

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 4)).astype(np.float32)
    g = helper.make_graph([
        helper.make_node("Transpose", ["w1"], ["w1t"], name="t1"),
        helper.make_node("MatMul", ["x", "w1t"], ["h"], name="mm1"),
        helper.make_node("Transpose", ["w2"], ["w2t"], name="t2", perm=[1, 0]),
        helper.make_node("MatMul", ["h", "w2t"], ["h2"], name="mm2"),
        helper.make_node("MatMul", ["h2", "w2"], ["y"], name="mm3")],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 3)).astype(np.float32)
    import onnxruntime as ort

    def run(m):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x})[0]

    before = run(model)
    assert fold_constant_transposes(model) == {"w1": "w1", "w2": "w2_transposed"}
    assert "Transpose" not in B.graph_ops(model)
    view = GraphView(model)
    np.testing.assert_array_equal(view.array("w1"), w1.T)
    np.testing.assert_array_equal(view.array("w2_transposed"), w2.T)
    np.testing.assert_array_equal(view.array("w2"), w2)
    np.testing.assert_array_equal(run(model), before)


def test_shape_inference_without_the_weights_is_that_of_the_whole_model():
    """Shape inference runs on a skeleton without the float weights (onnx would serialize and parse them: 45 of
    MobileNetV2's 10 ms); integer tensors stay, so data propagation still computes a Reshape's shape from a
    1 KiB+ int64 tensor, and every initializer comes back, in order, the unread one too."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ferroquant.onnx.shapes import infer_or_keep

    rng = np.random.default_rng(0)
    big_ints = np.arange(300, dtype=np.int64)  # 2.4 KB: detached by a plain skeleton
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(big_ints, "idx"),
             numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "unread"),
             numpy_helper.from_array(np.array([0], np.int64), "zero")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Gather", ["idx", "zero"], ["g"], axis=0),   # [0]
             helper.make_node("Concat", ["g", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["y", "shape"], ["z"])]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "minus1"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    got = infer_or_keep(m)
    want = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    assert [t.name for t in got.graph.initializer] == [t.name for t in m.graph.initializer]
    assert [i.name for i in got.graph.input] == ["x"]
