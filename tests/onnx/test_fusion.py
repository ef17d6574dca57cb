"""BN fusion on tiny graphs: ORT (optimizations off) gives the same outputs before and after each fold."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from ferroquant.onnx import fold_batch_norm_add, fold_batch_norm_mul, fold_conv_batch_norm, fuse  # noqa: E402
from ferroquant.quant import fold as fm  # noqa: E402
from tests.onnx import builders as B  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


CONV_CASES = [
    dict(dims=2),
    dict(dims=2, bias=False),
    dict(dims=1),
    dict(dims=3, c_in=2, c_out=4),
    dict(dims=2, c_in=4, c_out=6, group=2),
    dict(dims=2, c_in=6, c_out=6, group=6),  # depthwise
    dict(dims=2, c_in=4, c_out=8, group=4, bias=False),  # depthwise with multiplier 2
    dict(dims=2, c_in=4, c_out=6, transpose=True),
    dict(dims=2, c_in=4, c_out=6, group=2, transpose=True),  # grouped, C_in != C_out
    dict(dims=2, c_in=6, c_out=4, group=2, transpose=True, bias=False),
    dict(dims=1, c_in=2, c_out=6, group=2, transpose=True),
    dict(dims=3, c_in=2, c_out=4, group=2, transpose=True),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_conv_bn_fold(rng, case):
    model, feed = B.conv_bn(rng, **case)
    fused, report = fold_conv_batch_norm(model)
    assert B.op_count(fused, "BatchNormalization") == 0
    assert [f.node for f in report.folded] == ["bn"] and report.skipped == ()
    assert len(fused.graph.initializer) == 2  # weight and bias; the BN constants are pruned
    B.assert_same_outputs(model, fused, feed)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c,beta", [(True, 1.0), (True, 0.5), (False, 1.0)])
def test_gemm_bn_fold(rng, trans_b, with_c, beta):
    model, feed = B.gemm_bn(rng, trans_b, with_c, beta)
    fused, report = fold_conv_batch_norm(model)
    assert B.graph_ops(fused) == ["Gemm"] and report.removed_nodes == ("bn",)
    B.assert_same_outputs(model, fused, feed)


MUL_ADD_SHAPES = [((), (2, 3, 4, 4)), ((1,), (2, 3, 4, 4)), ((3, 1, 1), (2, 3, 4, 4)),
                  ((1, 3, 1, 1), (2, 3, 4, 4)), ((1, 1, 1, 1), (2, 3, 4, 4)), ((3,), (2, 3)),
                  ((1, 3), (2, 3)), ((3, 1), (2, 3, 5)), ((1, 3, 1, 1, 1), (2, 3, 2, 2, 2))]


@pytest.mark.parametrize("op", ["Mul", "Add"])
@pytest.mark.parametrize("shape,x_shape", MUL_ADD_SHAPES)
def test_bn_mul_add_fold(rng, op, shape, x_shape):
    model, feed = B.bn_then(rng, [(op, shape)], x_shape)
    fold = fold_batch_norm_mul if op == "Mul" else fold_batch_norm_add
    fused, report = fold(model)
    assert B.graph_ops(fused) == ["BatchNormalization", "Identity"], report.summary()
    assert fused.graph.node[0].output[0] == "t1"
    B.assert_same_outputs(model, fused, feed)


def test_bn_mul_add_chain_then_conv(rng):
    """Conv -> BN -> Mul -> Add -> Mul folds one node at a time down to the Conv alone."""
    conv, _ = B.conv_bn(rng, c_in=3, c_out=3)
    chain, feed = B.bn_then(rng, [("Mul", (3, 1, 1)), ("Add", (1, 3, 1, 1)), ("Mul", ())], (2, 3, 5, 5))
    nodes = [conv.graph.node[0]] + list(chain.graph.node)
    nodes[0].output[0] = "x_bn"
    nodes[1].input[0] = "x_bn"
    inits = {t.name: numpy_helper.to_array(t) for t in conv.graph.initializer if t.name in ("w", "b")}
    inits.update({t.name: numpy_helper.to_array(t) for t in chain.graph.initializer})
    model = B.make_model(nodes, {"x": (2, 3, 5, 5)}, ["y"], inits)
    fused, report = fuse(model)
    assert B.graph_ops(fused) == ["Conv", "Identity"], report.summary()
    assert [f.kind for f in report.folded] == ["bn_mul", "bn_add", "bn_mul", "conv_bn"]
    B.assert_same_outputs(model, fused, feed)


def test_bn_output_with_two_readers_is_kept(rng):
    model, feed = B.bn_then(rng, [("Mul", (3, 1, 1))], extra_outputs=["t0"])
    fused, report = fuse(model)
    assert B.graph_ops(fused) == ["BatchNormalization", "Mul", "Identity"]
    assert report.skipped[0].kind == "bn_mul" and "other readers" in report.skipped[0].reason
    B.assert_same_outputs(model, fused, feed)


def test_conv_output_with_two_readers_is_kept(rng):
    model, feed = B.conv_bn(rng)
    model.graph.node.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    B.add_output(model, "r")
    fused, report = fuse(model)
    assert B.op_count(fused, "BatchNormalization") == 1
    assert "other readers" in report.skipped[0].reason
    B.assert_same_outputs(model, fused, feed)


def test_conv_output_that_is_a_graph_output_is_kept(rng):
    model, feed = B.conv_bn(rng)
    B.add_output(model, "c")
    fused, report = fuse(model)
    assert B.op_count(fused, "BatchNormalization") == 1 and report.folded == ()


def test_bn_output_that_is_a_graph_output_is_kept(rng):
    model, feed = B.bn_then(rng, [("Add", ())], extra_outputs=["t0"])
    fused, report = fold_batch_norm_add(model)
    assert B.op_count(fused, "Add") == 1 and "graph output" in report.skipped[0].reason


def test_mul_output_that_is_a_graph_output_is_kept(rng):
    model, feed = B.bn_then(rng, [("Mul", (3, 1, 1))], extra_outputs=["t1"])
    fused, report = fuse(model)
    assert B.op_count(fused, "Mul") == 1 and "graph output" in report.skipped[0].reason


@pytest.mark.parametrize("shape,x_shape", [((4,), (2, 3, 4, 4)), ((1, 4), (2, 3, 4, 4)), ((1, 1, 4, 4), (2, 3, 4, 4)),
                                           ((2, 3, 1, 1), (2, 3, 4, 4)), ((1, 1, 1, 1, 1), (2, 3, 4, 4))])
def test_mul_by_a_non_per_channel_tensor_is_kept(rng, shape, x_shape):
    model, feed = B.bn_then(rng, [("Mul", shape)], x_shape)
    fused, report = fuse(model)
    assert B.op_count(fused, "Mul") == 1 and "not per channel" in report.skipped[0].reason
    B.assert_same_outputs(model, fused, feed)


def test_mul_by_a_graph_input_is_not_a_candidate(rng):
    model, feed = B.bn_then(rng, [("Mul", (3, 1, 1))])
    k1 = [t for t in model.graph.initializer if t.name == "k1"][0]
    model.graph.input.append(helper.make_tensor_value_info("k1", 1, [3, 1, 1]))
    feed["k1"] = numpy_helper.to_array(k1)
    model.graph.initializer.remove(k1)
    fused, report = fuse(model)
    assert B.op_count(fused, "Mul") == 1 and report.folded == ()


def test_skip_fusion_layers_and_do_fusion(rng):
    model, feed = B.conv_bn(rng)
    for skip in (["conv"], ["bn"]):
        fused, report = fuse(model, skip_fusion_layers=skip)
        assert B.op_count(fused, "BatchNormalization") == 1
        assert report.skipped[0].reason == "named in skip_fusion_layers"
    fused, report = fuse(model, do_fusion=False)
    assert B.graph_ops(fused) == B.graph_ops(model) and not report.enabled and report.folded == ()
    with pytest.warns(UserWarning, match="no node"):
        fuse(model, skip_fusion_layers=["typo"])


def test_training_mode_bn_is_skipped(rng):
    model, feed = B.conv_bn(rng)
    model.graph.node[1].attribute.append(helper.make_attribute("training_mode", 1))
    model.opset_import[0].version = 14
    fused, report = fuse(model)
    assert B.op_count(fused, "BatchNormalization") == 1 and "training" in report.skipped[0].reason


def test_non_positive_variance_is_skipped(rng):
    model, feed = B.conv_bn(rng)
    var = [t for t in model.graph.initializer if t.name == "bn.var"][0]
    arr = numpy_helper.to_array(var).copy()
    arr[2] = -1.0
    var.CopyFrom(numpy_helper.from_array(arr, "bn.var"))
    fused, report = fuse(model)
    assert B.op_count(fused, "BatchNormalization") == 1 and "var + eps <= 0" in report.skipped[0].reason


def test_shared_weight_is_not_overwritten(rng):
    """Two convs read one weight; folding the BN after one of them must leave the other conv's weight alone."""
    model, feed = B.conv_bn(rng, c_in=4, c_out=4)
    model.graph.node.append(helper.make_node("Conv", ["y", "w", "b"], ["z"], name="conv2", pads=[1, 1, 1, 1]))
    model.graph.output[0].name = "z"
    fused, report = fuse(model)
    assert report.removed_nodes == ("bn",)
    conv2 = B.find(fused, "conv2")
    assert conv2.input[1] == "w" and B.find(fused, "conv").input[1] != "w"
    B.assert_same_outputs(model, fused, feed)


def test_fold_math_convtranspose_group_mapping():
    """Output channel o = gi*(C_out/g)+j scales W[gi*(C_in/g):(gi+1)*(C_in/g), j]."""
    w = np.ones((4, 3, 1, 1))  # C_in=4, g=2, C_out=6
    k = np.arange(1.0, 7.0)
    p = fm.BatchNormParams.make(k, np.zeros(6), np.zeros(6), np.ones(6) - 1e-5, eps=1e-5)
    new_w, _ = fm.fold_conv(w, None, p, group=2, transpose=True)
    assert np.allclose(new_w[:2, :, 0, 0], [[1, 2, 3]] * 2) and np.allclose(new_w[2:, :, 0, 0], [[4, 5, 6]] * 2)
