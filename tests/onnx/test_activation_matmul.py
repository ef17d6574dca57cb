"""Attention's activation x activation MatMuls (Q.K^T, P.V) quantized per tensor (issue 12, item 1), an opt-in
rule of the registry: off by every profile's policy (the default layout and the golden digests do not change),
on with the config's ``activation_matmul`` (``create_quant_config(..., activation_matmul=True)``, CLI
``--activation-matmul``). Both inputs get their own per-tensor qparams and Q/DQ; onnxruntime then runs the
MatMul as ``MatMulIntegerToFloat``; TensorRT's are symmetric; the AMCT layout (layer inputs only) ignores it."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper

from ferroquant.config import load_config
from ferroquant.errors import ConfigError
from ferroquant.onnx import create_quant_config, quantize_model, save_model
from tests.onnx.builders import make_model, session

T, D = 6, 16


def attention(seed: int = 0) -> onnx.ModelProto:
    """x [B, T, D] -> q, k, v (MatMul with weights) -> softmax(q k^T * c) v -> o (MatMul with a weight)."""
    rng = np.random.default_rng(seed)
    inits = {n: rng.normal(0, 0.3, (D, D)).astype(np.float32) for n in ("wq", "wk", "wv", "wo")}
    inits["c"] = np.array(D ** -0.5, np.float32)
    nodes = [helper.make_node("MatMul", ["x", w], [t], name=t) for w, t in (("wq", "q"), ("wk", "k"), ("wv", "v"))]
    nodes += [helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
              helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
              helper.make_node("Mul", ["s", "c"], ["s2"], name="scale"),
              helper.make_node("Softmax", ["s2"], ["p"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["a"], name="pv"),
              helper.make_node("MatMul", ["a", "wo"], ["y"], name="o")]
    return make_model(nodes, {"x": [None, T, D]}, ["y"], inits)


def feeds(n: int = 4, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (3, T, D)).astype(np.float32)} for _ in range(n)]


def calibrated(profile: str = "onnxruntime", **cfg):
    m = attention()
    return quantize_model(create_quant_config(None, m, batch_num=None, **cfg), m, feeds(), profile=profile,
                          cpu_types="u8s8" if profile == "onnxruntime" else None)


def test_off_by_default_in_every_profile():
    for profile in ("onnxruntime", "tensorrt", "amct"):
        cm = calibrated(profile)
        assert not {"kt", "p"} & set(cm.plan.quantized([l.activation for l in cm.layers])), profile
    assert "activation_matmul" not in create_quant_config(None, attention()).to_json()  # saved as before


def test_on_both_inputs_get_per_tensor_qparams_and_onnxruntime_runs_integer_matmuls(tmp_path):
    cm = calibrated(activation_matmul=True)
    assert {"q", "kt", "p", "v"} <= set(cm.plan.calibrate) and {"q", "kt", "p", "v"} <= set(cm.calibrators)
    table = cm.table()
    for t in ("q", "kt", "p", "v"):
        assert np.ndim(table.tensors[t].scale) == 0  # per tensor
    assert table.tensors["p"].clip_min >= -1e-6  # softmax output: from 0
    dep = onnx.load(str(save_model(cm, tmp_path / "m", latency_check=False)["deploy"]))
    readers = {n.name: n for n in dep.graph.node}
    for name in ("qk", "pv"):
        producers = {o: n.op_type for n in dep.graph.node for o in n.output}
        assert [producers.get(i) for i in readers[name].input] == ["DequantizeLinear", "DequantizeLinear"]
    session(dep, True, str(tmp_path / "opt.onnx"))
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["MatMul"] == 0 and ops["MatMulIntegerToFloat"] + ops["QLinearMatMul"] == 6, ops
    x = feeds(1, seed=9)[0]
    ref = session(attention(), False).run(None, x)[0]
    got = session(dep, False).run(None, x)[0]
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
    assert sqnr > 20, sqnr  # 33 dB with them float: the per-tensor P and Q.K^T inputs cost accuracy


def test_tensorrt_quantizes_them_symmetric_and_amct_ignores_the_switch():
    cm = calibrated("tensorrt", activation_matmul=True)
    table = cm.table()
    assert all(float(table.tensors[t].zero_point) == 0 for t in ("q", "kt", "p", "v"))
    cm = calibrated("amct", activation_matmul=True)
    assert not cm.plan.calibrate


def test_config_key_round_trips_and_is_checked(tmp_path):
    cfg = create_quant_config(tmp_path / "c.json", attention(), activation_matmul=True)
    assert cfg.to_json()["activation_matmul"] is True and load_config(tmp_path / "c.json").activation_matmul is True
    doc = cfg.to_json()
    doc["activation_matmul"] = "yes"
    with pytest.raises(ConfigError, match="activation_matmul"):
        load_config(doc)
    doc["activation_matmul"] = False  # explicitly off: the profile's policy cannot turn it on
    assert load_config(doc).opt_ins() == {"activation_matmul": False}


def test_cli_flag(tmp_path):
    onnx.save(attention(), str(tmp_path / "m.onnx"))
    out = tmp_path / "config.json"
    p = subprocess.run([sys.executable, "-m", "ferroquant", "config", str(tmp_path / "m.onnx"), "-o", str(out),
                        "--activation-matmul"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert load_config(out).activation_matmul is True
