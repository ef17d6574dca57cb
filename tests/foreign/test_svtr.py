"""PP-OCRv6 rec (SVTR: Convs, then two transformer blocks whose LayerNorms are written out in elementary ops)
quantized the transformer ways of issue 12: static int8 with SmoothQuant balancing of both blocks' LayerNorm ->
qkv and LayerNorm -> fc1, and weight-only int4 of every MatMul weight (MatMulNBits). Recognized text must be
FP32's on at least 95% of held-out rendered lines and real crops (tests/foreign/corpus.py's rec evaluation)."""

from __future__ import annotations

import onnx
import pytest

import ferroquant as fq
from ferroquant.config import WeightOnlyConfig
from tests.foreign.corpus import _rec_calib, _rec_eval
from tests.foreign.models import need

pytest.importorskip("scipy")


@pytest.fixture(scope="module")
def rec():
    return need("rapidocr", "PP-OCRv6_rec_small.onnx")


def test_static_int8_with_balanced_attention_blocks_keeps_the_text(rec, tmp_path):
    out = fq.quantize(rec, _rec_calib(rec), tmp_path / "rec_int8.onnx", cpu_types="u8s8", latency_check=False,
                      config_defination={"methods": {"smooth_quant": {"enabled": True}}})
    sq = out["calibrated"].methods["smooth_quant"]
    assert [g["layers"] for g in sq["groups"]] == [["MatMul.0"], ["MatMul.4"], ["MatMul.6"], ["MatMul.10"]]
    assert sq["fp32_max_relative_difference"] < 1e-4
    assert {"MatMul.0", "MatMul.3", "MatMul.4", "MatMul.5"} <= {l.name for l in out["calibrated"].layers}
    metrics = _rec_eval("PP-OCRv6_det_small.onnx")(rec, out["paths"]["deploy"], {})
    print(f"\nPP-OCRv6 rec static int8 + SmoothQuant: {metrics['task']}, cosine {metrics['cosine']:.4f}")
    assert metrics["text_agreement"] >= 0.95, metrics


def test_weight_only_int4_keeps_the_text(rec, tmp_path):
    out = fq.quantize(rec, _rec_calib(rec), tmp_path / "rec_int4.onnx", weight_only=WeightOnlyConfig("rtn", 4, 32))
    deploy = onnx.load(str(out["paths"]["deploy"]))
    assert sum(n.op_type == "MatMulNBits" for n in deploy.graph.node) == out["layers"] >= 9
    metrics = _rec_eval("PP-OCRv6_det_small.onnx")(rec, out["paths"]["deploy"], {})
    print(f"\nPP-OCRv6 rec weight-only int4 g32: {metrics['task']}, cosine {metrics['cosine']:.4f}")
    assert metrics["text_agreement"] >= 0.95, metrics
