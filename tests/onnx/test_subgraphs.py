"""Models with If/Loop subgraphs: ferroquant quantizes the top-level graph and leaves every subgraph as it is
(never broken: the tensors a branch reads from the outer scope survive fusion, pruning and export)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ferroquant.onnx import export_deploy, export_fake_quant, fuse, load_model, quantize
from ferroquant.onnx.graph import GraphView, implicit_inputs, subgraphs
from tests.onnx import builders as B


def _branch(name: str, reads: str, const: str, out: str) -> onnx.GraphProto:
    """A branch computing ``reads * const`` into ``out`` (both names from the outer scope)."""
    node = helper.make_node("Mul", [reads, const], [out], name=f"{name}_mul")
    return helper.make_graph([node], name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, 6, 6])])


def if_model(rng: np.random.Generator, *, branch_reads: str = "c", then_out: str = "conv.bias_folded"
             ) -> onnx.ModelProto:
    """x -> Conv -> c -> BN -> Relu -> y, and If(cond) whose branches read ``branch_reads`` and an initializer
    (``k_then`` / ``k_else``) that nothing at the top level reads. The then-branch names its output like the
    tensor BN folding would create (``conv.bias_folded``), so a new top-level name must avoid it."""
    inits = {"w": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), **B.bn_params(rng, 4),
             "k_then": np.float32(2.0), "k_else": np.float32(-3.0)}
    then_g = _branch("then", branch_reads, "k_then", then_out)
    else_g = _branch("else", branch_reads, "k_else", "z_else")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             B.bn_node("c", "b"),
             helper.make_node("Relu", ["b"], ["y"], name="relu"),
             helper.make_node("If", ["cond"], ["z"], name="if", then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(
        nodes, "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 6, 6])],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(rng: np.random.Generator):
    x = rng.normal(0, 1, (1, 3, 6, 6)).astype(np.float32)
    return [{"x": x, "cond": np.array(flag)} for flag in (True, False)]


def _branches(model: onnx.ModelProto):
    return {g.name: g.SerializeToString(deterministic=True) for n in model.graph.node for g in subgraphs(n)}


def test_implicit_inputs_are_reads():
    model = if_model(np.random.default_rng(0))
    node = next(n for n in model.graph.node if n.op_type == "If")
    assert implicit_inputs(node) == ["c", "k_else", "k_then"]
    view = GraphView(model)
    assert not view.only_consumer("c", B.find(model, "bn"))  # the branches read it too
    assert view.prune_initializers() == []  # k_then / k_else are read inside the branches


def test_fusion_keeps_what_a_branch_reads():
    """The Conv output is read by the branches: folding the BN (which renames it) must be skipped, and the
    branch-only initializers must survive pruning (they were deleted, and onnxruntime refused the model)."""
    rng = np.random.default_rng(1)
    model = if_model(rng)
    fused, report = fuse(load_model(model))
    assert not report.folded and "other readers" in report.skipped[0].reason
    onnx.checker.check_model(fused, full_check=True)
    assert _branches(fused) == _branches(model)
    for feed in _feeds(rng):
        for a, b in zip(B.run(model, feed), B.run(fused, feed)):
            np.testing.assert_array_equal(a, b)


def test_fold_and_export_around_a_branch(tmp_path):
    """Branches reading the BN output: the fold happens, new names avoid those inside the branches, and the
    exported models keep the branches byte for byte and run both ways."""
    rng = np.random.default_rng(2)
    model = if_model(rng, branch_reads="b")
    fused, report = fuse(load_model(model))
    assert len(report.folded) == 1
    names = {t.name for t in fused.graph.initializer}
    assert "conv.bias_folded" not in names  # the then-branch defines that name
    onnx.checker.check_model(fused, full_check=True)
    feeds = _feeds(rng)
    out = quantize(model, feeds, tmp_path / "q.onnx")
    cm = out["calibrated"]
    table = cm.table()
    for exported in (export_fake_quant(cm.model, table), export_deploy(cm.model, table)):
        onnx.checker.check_model(exported, full_check=True)
        assert _branches(exported) == _branches(model)
        for feed in feeds:
            ref, got = B.run(model, feed), B.run(exported, feed)
            assert B.rel_diff(ref[0], got[0]) < 0.05
            assert B.rel_diff(ref[1], got[1]) < 0.05


@pytest.mark.parametrize("op", ["Loop", "Scan"])
def test_loop_and_scan_bodies_survive(op, tmp_path):
    """A Loop/Scan body reading a weight from the outer scope; the layer outside is quantized."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (8, 8)).astype(np.float32)
    if op == "Loop":
        body = helper.make_graph(
            [helper.make_node("MatMul", ["s_in", "k_body"], ["s_out"]),
             helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [2, 8])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [2, 8])])
        loop = helper.make_node("Loop", ["trip", "", "h"], ["z"], name="loop", body=body)
        extra = {"trip": np.array(3, np.int64)}
    else:
        body = helper.make_graph(
            [helper.make_node("MatMul", ["s_in", "k_body"], ["s_out"]),
             helper.make_node("Identity", ["s_out"], ["o"])], "body",
            [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [8]),
             helper.make_tensor_value_info("e", TensorProto.FLOAT, [8])],
            [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [8]),
             helper.make_tensor_value_info("o", TensorProto.FLOAT, [8])])
        loop = helper.make_node("Scan", ["h0", "h"], ["z", "scanned"], name="scan", body=body, num_scan_inputs=1)
        extra = {"h0": np.zeros(8, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), loop]
    outs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 8] if op == "Loop" else [8])]
    if op == "Scan":
        outs.append(helper.make_tensor_value_info("scanned", TensorProto.FLOAT, [2, 8]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])], outs,
                              initializer=[numpy_helper.from_array(w, "w"),
                                           numpy_helper.from_array(np.eye(8, dtype=np.float32) * 0.5, "k_body")]
                              + [numpy_helper.from_array(v, k) for k, v in extra.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    feed = {"x": rng.normal(0, 1, (2, 8)).astype(np.float32)}
    out = quantize(model, [feed], tmp_path / "q.onnx")
    assert out["layers"] == 1
    q = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(q, full_check=True)
    assert _branches(q) == _branches(model)
    ref, got = B.run(model, feed), B.run(q, feed)
    assert B.rel_diff(ref[0], got[0]) < 0.05


def test_export_names_avoid_names_inside_branches(tmp_path):
    """The exporter's new tensors (``x_QuantizeLinear``...) must not reuse a name a branch defines: the
    checker refuses a name defined twice across scopes."""
    rng = np.random.default_rng(4)
    model = if_model(rng, then_out="x_QuantizeLinear")
    cm = quantize(model, _feeds(rng), tmp_path / "q.onnx")["calibrated"]
    for exported in (export_fake_quant(cm.model, cm.table()), export_deploy(cm.model, cm.table())):
        onnx.checker.check_model(exported, full_check=True)
        assert _branches(exported) == _branches(model)
