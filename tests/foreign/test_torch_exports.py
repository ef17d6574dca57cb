"""Graphs the torch exporters write: the real MobileNetV2 (ImageNet weights) through the TorchScript exporter
at opsets 11/13/17 with BatchNormalization kept (ferroquant folds it) and folded by the exporter, and through
the dynamo exporter; and transformers BERT / GPT-2 / Llama (int64 inputs, attention, LayerNorm/RMSNorm,
GELU, rotary embeddings) with random weights. Each quantizes, runs with other batch sizes and sequence
lengths than it was calibrated on, and stays close to FP32. Skipped without torch / transformers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ferroquant as fq  # noqa: E402
from ferroquant.onnx import fuse, load_model  # noqa: E402
from tests.foreign.corpus import Agreement, session  # noqa: E402


@pytest.fixture(scope="module")
def photos():
    from ferroquant.examples.photos import calibration_and_eval_sets

    return calibration_and_eval_sets(16, 24, seed=0)


@pytest.mark.parametrize("opset,keep_bn,dynamo", [
    (11, True, False), (13, True, False), (17, True, False), (13, False, False),
    pytest.param(18, False, True, marks=pytest.mark.slow)], ids=["ts-11-bn", "ts-13-bn", "ts-17-bn", "ts-13-folded",
                                                                 "dynamo-18"])
def test_mobilenet_v2_exports(opset, keep_bn, dynamo, photos, tmp_path):
    from tests.foreign.torch_models import export_mobilenet, feeds_of, top1_agreement

    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    path = export_mobilenet(tmp_path / "mnv2.onnx", opset, keep_bn, dynamo)
    _, report = fuse(load_model(path))
    assert len(report.folded) == (52 if keep_bn else 0)
    # the integer types fixed, so that the answer does not depend on the CPU: with VNNI the default is u8s8,
    # whose onnxruntime kernels land differently on these 24 photos (kept-BN exports 0.71 top-1, 0.92 top-5 on a
    # Zen 4; on 96 photos u8s8 0.79 / 0.98 and u8s7 0.85 / 0.99, the simulated QDQ model 0.83 / 1.0 for both)
    out = fq.quantize(path, feeds_of(photos.calibration), tmp_path / "q.onnx", cpu_types="u8s7")
    assert out["layers"] == 53
    ref_s, got_s = session(path, True), session(out["paths"]["deploy"])
    for batch in (1, 5):  # the batch axis stays dynamic
        x = photos.evaluation[:batch]
        assert got_s.run(None, {"input": x})[0].shape == (batch, 1000)
    ref = ref_s.run(None, {"input": photos.evaluation})[0]
    got = got_s.run(None, {"input": photos.evaluation})[0]
    # as the helper-built graph does in bench/results/onnx_ptq.md (0.78 top-1, 1.0 top-5 on these photos)
    top5 = np.mean([r in np.argsort(g)[-5:] for r, g in zip(ref.argmax(1), got)])
    assert top1_agreement(ref, got) >= 0.6 and top5 >= 0.95


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_transformers(kind, tmp_path):
    pytest.importorskip("transformers")
    from tests.foreign.torch_models import export_transformer, token_feeds

    path = export_transformer(kind, tmp_path / f"{kind}.onnx")
    out = fq.quantize(path, token_feeds(6, seed=0), tmp_path / "q.onnx")
    assert out["layers"] >= 8
    ref_s, got_s = session(path, True), session(out["paths"]["deploy"])
    agree = Agreement()
    for feed in token_feeds(4, seed=1, batch=3, seq=(5, 30)):  # other batch sizes and lengths
        agree.add(ref_s.run(None, feed)[0], got_s.run(None, feed)[0])
    assert agree.metrics()["cosine"] > 0.95, agree.metrics()


def test_bert_balances_what_its_layernorms_cannot_through_the_value_projection_and_the_gelu(tmp_path):
    """BERT is post-LN: the residual Add reads every LayerNorm's output, so none can absorb a balancing. The
    attention output projection's input is P.V of the value projection (which absorbs it through the heads'
    reshapes and transposes), and the intermediate GELU, written out, ends in a scalar ``* 0.5`` (which becomes a
    per-channel vector)."""
    pytest.importorskip("transformers")
    from tests.foreign.torch_models import export_transformer, token_feeds

    path = export_transformer("bert", tmp_path / "bert.onnx", trained=True)
    out = fq.quantize(path, token_feeds(6, seed=0), tmp_path / "q.onnx", latency_check=False,
                      config_defination={"methods": {"smooth_quant": {"enabled": True}}})
    entry = out["calibrated"].methods["smooth_quant"]
    got = sorted((g["absorber"], g["norm"].split("/")[-2], g["layers"][0].split("/")[-2]) for g in entry["groups"])
    assert got == [("linear", "value", "dense")] * 2 + [("scalar", "intermediate_act_fn", "dense")] * 2
    assert {s["norm"].split("/")[-2] for s in entry["skipped"]} == {"LayerNorm"}
    assert entry["fp32_max_relative_difference"] < 1e-5
    ref_s, got_s = session(path, True), session(out["paths"]["deploy"])
    agree = Agreement()
    for feed in token_feeds(4, seed=1, batch=3, seq=(5, 30)):
        agree.add(ref_s.run(None, feed)[0], got_s.run(None, feed)[0])
    assert agree.metrics()["cosine"] > 0.99, agree.metrics()
