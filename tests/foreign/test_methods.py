"""The accuracy methods of issue 15 on models nobody here wrote: cross-layer equalization keeps each model's FP32
function (exact: ReLU6 kept), and quantizing with every method on (equalization, bias correction, per-channel
depthwise inputs, output-aware clips, learned rounding) succeeds and gives a deploy model that runs, whether or not the model has what a method applies
to (MobileNetV3's HardSwish, SVTR's MatMuls, YOLOv8's SiLU, an LSTM inside subgraphs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ferroquant.onnx.api import prepare_model
from ferroquant.onnx.equalize import equalize, max_relative_difference
from tests.foreign.corpus import BY_NAME, session
from tests.foreign.models import need

NAMES = ["PP-OCR mobile cls", "PP-OCRv6 rec", "nudenet 320n (YOLOv8n)", "silero-vad 16k op15"]
# learned rounding with few iterations: what is checked here is that it runs on every layer kind it meets
ALL_ON = {"methods": {"equalization": {"enabled": True}, "adaround": {"enabled": True, "iterations": 5}},
          "common_config": {"weight": {"bias_correction": "empirical"}, "activation": {"channel_wise": True, "output_clip": True}}}


def _run(model: onnx.ModelProto, feed):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("name", NAMES)
def test_methods_keep_foreign_models_working(name, tmp_path):
    import ferroquant as fq

    entry = BY_NAME[name]
    fp32 = need(entry.package, entry.file)
    feeds = list(entry.calib(fp32))[:2]
    fused = prepare_model(fp32).model
    equalized, _ = equalize(fused)
    for a, b in zip(_run(fused, feeds[0]), _run(equalized, feeds[0])):
        if np.issubdtype(np.asarray(a).dtype, np.floating):
            assert max_relative_difference(a, b) < 1e-3
    out = fq.quantize(fp32, feeds, tmp_path / "m_int8.onnx", profile="amct", latency_check=False,
                      config_defination=ALL_ON)
    import json

    clips = json.loads(out["paths"]["record"].read_text())["extra"]["methods"]["output_clip"]
    assert clips["tensors"] or clips["skipped"]  # searched or named, never silently dropped
    got = session(out["paths"]["deploy"]).run(None, feeds[0])
    assert all(np.all(np.isfinite(g)) for g in got if np.issubdtype(np.asarray(g).dtype, np.floating))
