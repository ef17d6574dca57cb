"""A tiny MLP with one deliberately sensitive layer, its data, and an evaluator file, shared by the CLI, report
and autocal tests.

``x [N, 16] -> Gemm fc1 -> Relu -> MatMul fc2 (+ b2) -> Relu -> MatMul fc3 -> logits [N, 10]``. fc1's output
channel 0 is a constant 1000 that fc2 ignores (its weight row is zero): fc2's input range is [0, 1000], so an
int8 grid has a step of about 4 and the ordinary values (about 0..3) all round to one or two levels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EVALUATOR = '''
"""Top-1 agreement with the FP32 labels stored beside this file."""
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).parent


def evaluate(model_path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    x, labels = np.load(HERE / "eval_x.npy"), np.load(HERE / "eval_labels.npy")
    return float(np.mean(s.run(None, {"x": x})[0].argmax(1) == labels))
'''


def sensitive_mlp(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (16, 32)).astype(np.float32)
    b1 = rng.normal(0, 0.3, 32).astype(np.float32)
    w1[:, 0], b1[0] = 0.0, 1000.0
    w2 = rng.normal(0, 0.3, (32, 32)).astype(np.float32)
    w2[0, :] = 0.0
    b2 = rng.normal(0, 0.1, 32).astype(np.float32)
    w3 = rng.normal(0, 0.3, (32, 10)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["m2", "b2"], ["h2"], name="add2"),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "w3"], ["logits"], name="fc3")]
    inits = [numpy_helper.from_array(v, k) for k, v in {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3}.items()]
    g = helper.make_graph(nodes, "sensitive_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    ops = [helper.make_opsetid("", 13)]
    m = helper.make_model(g, opset_imports=ops, ir_version=helper.find_min_ir_version_for(ops))
    onnx.checker.check_model(m)
    return m


def samples(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 16)).astype(np.float32)


def feeds(n: int = 64, batch: int = 16, seed: int = 1) -> List[Dict[str, np.ndarray]]:
    x = samples(n, seed)
    return [{"x": x[i:i + batch]} for i in range(0, n, batch)]


def write_case(folder: Path) -> Dict[str, Path]:
    """The model, calibration data (.npy), evaluation data with FP32 labels and the evaluator in ``folder``."""
    import onnxruntime as ort

    folder.mkdir(parents=True, exist_ok=True)
    model = sensitive_mlp()
    paths = {"model": folder / "mlp.onnx", "calib": folder / "calib.npy", "evaluator": folder / "evaluator.py"}
    onnx.save(model, str(paths["model"]))
    np.save(paths["calib"], samples(64, 1))
    x = samples(256, 2)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.save(folder / "eval_x.npy", x)
    np.save(folder / "eval_labels.npy", s.run(None, {"x": x})[0].argmax(1))
    paths["evaluator"].write_text(EVALUATOR)
    return paths
