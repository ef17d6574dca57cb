"""The placeholders the README's Python snippets use, defined once (documented here, used by
tests/test_readme.py). A snippet may use only these names, the modules it imports, and the files below.

Files (in the current folder, a fresh temporary one per snippet):
- ``model.onnx``: a small CNN, input ``"input"`` of shape ``[N, 3, 16, 16]``, 10 logits (Conv, Relu, Conv,
  Relu, GlobalAveragePool, Flatten, Gemm).

Names:
- ``calib_images``: 32 float32 images ``[32, 3, 16, 16]`` for ``model.onnx``;
- ``evaluate(model_path) -> float``: top-1 agreement of a model with ``model.onnx`` on other images;
- ``w``-like arrays for the array API: ``x`` (``[8, 4, 16]`` float32), ``scales`` / ``zero_points`` (one per
  channel of ``x``'s axis 1), ``w_t`` (a grouped ConvTranspose weight ``[8, 3, 3, 3]``, 2 groups), ``batch``
  (``{tensor name: array}``, as a model's tapped activations);
- torch snippets (run only when torch is installed): ``model`` / ``model_fp32`` (a small CNN), ``train_loader``
  (a list of ``(images, labels)`` batches) and ``calib_batches`` (a list of image tensors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np


def _cnn(rng: np.random.Generator):  # noqa: ANN202 - onnx.ModelProto
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w1", rng.normal(0, 0.3, (8, 3, 3, 3))), ("b1", rng.normal(0, 0.1, 8)),
        ("w2", rng.normal(0, 0.2, (16, 8, 3, 3))), ("b2", rng.normal(0, 0.1, 16)),
        ("w3", rng.normal(0, 0.3, (10, 16))), ("b3", rng.normal(0, 0.1, 10)))]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "readme_cnn",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def onnx_placeholders(folder: Path) -> Dict[str, Any]:
    """``model.onnx`` written into ``folder``; ``calib_images`` and ``evaluate``."""
    import onnx
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    onnx.save(_cnn(rng), str(folder / "model.onnx"))
    eval_x = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)

    def logits(path: str) -> np.ndarray:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": eval_x})[0]

    labels = logits(str(folder / "model.onnx")).argmax(1)

    def evaluate(model_path: str) -> float:
        return float(np.mean(logits(model_path).argmax(1) == labels))

    return {"calib_images": rng.standard_normal((32, 3, 16, 16)).astype(np.float32), "evaluate": evaluate}


def array_placeholders() -> Dict[str, Any]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 4, 16)).astype(np.float32)
    return {"x": x, "scales": np.full(4, 0.02, np.float32), "zero_points": np.zeros(4, np.int32),
            "w_t": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
            "batch": {"conv1.input": x, "fc.input": np.maximum(rng.standard_normal((8, 32)), 0).astype(np.float32)}}


def torch_placeholders() -> Dict[str, Any]:
    import torch

    torch.manual_seed(0)

    def net() -> "torch.nn.Module":
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))

    images = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    return {"model": net(), "model_fp32": net().eval(), "train_loader": [(x, torch.randint(0, 10, (8,))) for x in images],
            "calib_batches": images}


def placeholders(folder: Path) -> Dict[str, Any]:
    """Every placeholder a snippet may use (torch ones only when torch is installed)."""
    ns: Dict[str, Any] = {**onnx_placeholders(folder), **array_placeholders()}
    try:
        ns.update(torch_placeholders())
    except ImportError:
        pass
    return ns
