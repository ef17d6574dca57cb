"""Weight-only quantization on layers that look like a transformer's: GPTQ and AWQ beat plain rounding on
held-out output error, results do not depend on the thread count, and the [G, N] layout is the one an opset-21
blocked DequantizeLinear reads."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from ferroquant import ops


def _layer(seed=0, k=128, n=96, rows=8192, rank=32):
    """Activations as a transformer's look: low-rank structure (a few directions carry most of the energy),
    heavy tails, three outlier channels 15x larger; a heavy-tailed weight. Half the rows calibrate, half are held
    out."""
    rng = np.random.default_rng(seed)
    z = rng.standard_t(3, (rows, rank))
    x = z @ rng.standard_normal((rank, k)) / np.sqrt(rank) + 0.2 * rng.standard_t(3, (rows, k))
    x[:, rng.choice(k, 3, replace=False)] *= 15.0
    w = rng.standard_t(5, (k, n)) / np.sqrt(k)
    x, w = x.astype(np.float32), w.astype(np.float32)
    return w, x[: rows // 2], x[rows // 2:]


def _err(w, deq, x, channel_scale=None):
    xs = x if channel_scale is None else x / channel_scale
    y = x.astype(np.float64) @ w.astype(np.float64)
    return float(np.mean((y - xs.astype(np.float64) @ deq.astype(np.float64)) ** 2))


@pytest.mark.parametrize("bits,gs,sym", [(4, 128, False), (4, 32, True), (3, 64, False)])
def test_gptq_and_awq_beat_rtn_on_held_out_rows(bits, gs, sym):
    w, cal, test = _layer()
    spec = ops.GroupSpec(bits, gs, sym)
    rtn = _err(w, ops.quantize_groupwise(w, spec).dequantize(), test)
    acc = ops.HessianAccumulator(w.shape[0])
    for batch in np.array_split(cal, 4):
        acc.observe(batch)
    for act_order in (False, True):
        g = ops.gptq(w, acc.hessian(), spec, act_order=act_order)
        assert _err(w, g.quant.dequantize(), test) < 0.5 * rtn, act_order
    a = ops.awq(w, cal[:512], spec)
    assert _err(w, a.quant.dequantize(), test, a.channel_scale) < 0.6 * rtn
    assert a.alpha > 0


def test_int8_weight_only_is_nearly_lossless():
    w, cal, test = _layer(1)
    y2 = float(np.mean((test.astype(np.float64) @ w) ** 2))
    q = ops.quantize_groupwise(w, ops.GroupSpec(8, 128, False))
    assert _err(w, q.dequantize(), test) < 1e-4 * y2


def _everything(w, x):
    spec = ops.GroupSpec(4, 48, False)
    acc = ops.HessianAccumulator(w.shape[0])
    acc.observe(x)
    g = ops.gptq(w, acc.hessian(), spec, act_order=True, block_size=64)
    a = ops.awq(w, x[:300], spec)
    c = ops.ChannelStats(w.shape[0])
    c.observe(x)
    s = ops.smooth_search(c.absmax, w, x[:300], alphas=(0.0, 0.5, 0.8))
    r = ops.quantize_groupwise(w, spec, ops.ClipSearch())
    return [acc.sum, g.quant.codes, g.quant.scale, a.losses, a.channel_scale, a.quant.codes, c.abs_sum, c.min,
            s.losses, s.channel_scale, r.codes, r.scale]


def test_results_do_not_depend_on_the_thread_count():
    w, x, _ = _layer(2, k=600, n=700, rows=6000)
    before = ops.get_num_threads()
    try:
        ops.set_num_threads(1)
        one = _everything(w, x)
        ops.set_num_threads(4)
        many = _everything(w, x)
    finally:
        ops.set_num_threads(0)
    assert ops.get_num_threads() == before
    for a, b in zip(one, many):
        assert_array_equal(a, b)


def test_layout_is_opset21_blocked_dequantize_linear():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    w = np.random.default_rng(3).standard_normal((100, 24)).astype(np.float32)  # 100 = 3 groups of 32 + 4
    q = ops.quantize_groupwise(w, ops.GroupSpec(4, 32, False))
    codes = helper.make_tensor("codes", TensorProto.UINT4, q.codes.shape, q.codes.reshape(-1).tolist())
    scale = helper.make_tensor("scale", TensorProto.FLOAT, q.scale.shape, q.scale.reshape(-1).tolist())
    zp = helper.make_tensor("zp", TensorProto.UINT4, q.zero_point.shape, q.zero_point.reshape(-1).tolist())
    node = helper.make_node("DequantizeLinear", ["codes", "scale", "zp"], ["w"], axis=0, block_size=32)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, w.shape)],
                              initializer=[codes, scale, zp])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_array_equal(sess.run(None, {})[0], q.dequantize())
