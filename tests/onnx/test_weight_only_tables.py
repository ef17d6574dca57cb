"""Weight-only embedding tables (issue 12, item 1: Gather tables weight-only): with ``embeddings`` on, each
Gather of a constant table gets group-wise int4/int8 rows (RTN), exported as onnxruntime's
GatherBlockQuantized (``matmulnbits``) or as blocked DequantizeLinear feeding the Gather (``qdq``, ragged
groups allowed); the looked-up rows are exactly the dequantized table's; off by default."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from onnx import TensorProto, helper, numpy_helper

from ferroquant.config import WeightOnlyConfig
from ferroquant.errors import ConfigError
from ferroquant.onnx.weight_only import quantize_weights_only

V, N = 50, 8


def _model(d: int = 64, seed: int = 0) -> onnx.ModelProto:
    """ids [2, 5] -> Gather(table [V, d]) -> h (also an output) -> MatMul (w [d, N]) -> y."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((V, d)).astype(np.float32)
    table[7] = 0.0  # an all-zero row
    table[:, 3] *= 20  # an outlier channel
    g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["h"], name="embed", axis=0),
                           helper.make_node("MatMul", ["h", "w"], ["y"], name="fc")], "emb",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, N]),
                           helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 5, d])],
                          [numpy_helper.from_array(table, "table"),
                           numpy_helper.from_array(rng.standard_normal((d, N)).astype(np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


IDS = np.array([[0, 7, 49, 3, 3], [12, 1, 2, 7, 30]], np.int64)


def _run(m: onnx.ModelProto) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        ["h"], {"ids": IDS})[0]


def test_off_by_default():
    wom = quantize_weights_only(_model(), WeightOnlyConfig())
    assert set(wom.quants) == {"fc"}
    assert "embeddings" not in WeightOnlyConfig().to_json()["weight_only"]  # saved as before


@pytest.mark.parametrize("bits,symmetric,group_size", [(4, False, 32), (4, True, 16), (8, False, 64),
                                                       (8, True, 32)])
def test_gather_block_quantized_looks_up_the_dequantized_rows(bits, symmetric, group_size):
    cfg = WeightOnlyConfig("rtn", bits, group_size, symmetric, embeddings=True)
    wom = quantize_weights_only(_model(), cfg)
    q = wom.quants["embed"]
    assert (q.layer.k, q.layer.n) == (64, V) and q.quant.codes.shape == (64, V)
    out = wom.export()
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["GatherBlockQuantized", "MatMulNBits"], ops
    table = q.quant.dequantize().T  # [V, d]
    assert_array_equal(table[7], 0)
    assert_allclose(_run(out), table[IDS], rtol=0, atol=1e-6)
    ref = numpy_helper.to_array(_model().graph.initializer[0])
    rel = np.linalg.norm(table - ref) / np.linalg.norm(ref)
    assert rel < (0.15 if bits == 4 else 0.015), rel  # the rows approximate the float table (outlier channel)


@pytest.mark.parametrize("bits,symmetric", [(4, False), (8, True)])
def test_blocked_dequantize_feeds_the_gather_with_ragged_groups(bits, symmetric):
    cfg = WeightOnlyConfig("gptq", bits, 16, symmetric, format="qdq", embeddings=True)  # gptq: tables use RTN
    m = _model(d=40)
    feeds = [{"ids": IDS}]
    wom = quantize_weights_only(m, cfg, feeds)
    out = wom.export()
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert {n.output[0] for n in dq} & set(next(n for n in out.graph.node if n.op_type == "Gather").input)
    assert wom.quants["embed"].algorithm == "rtn" and wom.quants["embed"].quant.scale.shape == (3, V)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(out.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        ["h"], {"ids": IDS})[0]
    assert_allclose(got, wom.quants["embed"].quant.dequantize().T[IDS], rtol=0, atol=1e-6)


def test_record_lists_every_rows_groups_and_skip_keeps_a_table_float():
    cfg = WeightOnlyConfig("rtn", 4, 32, embeddings=True)
    entry = quantize_weights_only(_model(), cfg).record()["layers"]["embed"]
    assert entry["op_type"] == "Gather" and len(entry["scale"]) == V and all(len(r) == 2 for r in entry["scale"])
    wom = quantize_weights_only(_model(), WeightOnlyConfig("rtn", 4, 32, embeddings=True, skip_layers=("embed",)))
    assert set(wom.quants) == {"fc"} and "Gather" in [n.op_type for n in wom.export().graph.node]


def test_a_width_gather_block_quantized_cannot_block_is_a_clear_error():
    with pytest.raises(ConfigError, match="'embed'.*40 values.*group_size 32"):
        quantize_weights_only(_model(d=40), WeightOnlyConfig("rtn", 4, 32, embeddings=True))
