"""Tiny ONNX graphs with random weights and BN statistics, and an onnxruntime runner, shared by the tests."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes: List[onnx.NodeProto], inputs: Dict[str, Sequence], outputs: Sequence[str],
               inits: Dict[str, np.ndarray], opset: int = 13) -> onnx.ModelProto:
    """A checked model: float32 graph inputs with the given shapes, output shapes inferred."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    ops = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=ops, ir_version=helper.find_min_ir_version_for(ops))
    model = onnx.shape_inference.infer_shapes(model)  # fills in the output shapes the checker asks for
    onnx.checker.check_model(model)
    return model


def add_output(model: onnx.ModelProto, name: str) -> None:
    """Make tensor ``name`` a graph output too (in place)."""
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))


def bn_params(rng: np.random.Generator, c: int, prefix: str = "bn") -> Dict[str, np.ndarray]:
    """Random BN constants: gamma of both signs (some negative), positive var."""
    gamma = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c)
    gamma[0] = -abs(gamma[0])
    return {f"{prefix}.scale": gamma.astype(np.float32),
            f"{prefix}.bias": rng.normal(0, 0.5, c).astype(np.float32),
            f"{prefix}.mean": rng.normal(0, 0.5, c).astype(np.float32),
            f"{prefix}.var": rng.uniform(0.2, 2.0, c).astype(np.float32)}


def bn_node(x: str, y: str, prefix: str = "bn", **attrs: object) -> onnx.NodeProto:
    ins = [x] + [f"{prefix}.{p}" for p in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", ins, [y], name=prefix, epsilon=1e-5, **attrs)


def conv_bn(rng: np.random.Generator, *, dims: int = 2, c_in: int = 4, c_out: int = 6, group: int = 1,
            bias: bool = True, transpose: bool = False) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray]]:
    """x -> Conv/ConvTranspose (1-D/2-D/3-D, grouped) -> BN -> y, and a random input feed."""
    k = (3,) * dims
    w_shape = (c_in, c_out // group) + k if transpose else (c_out, c_in // group) + k
    inits = {"w": rng.normal(0, 0.3, w_shape).astype(np.float32), **bn_params(rng, c_out)}
    ins = ["x", "w"]
    if bias:
        inits["b"] = rng.normal(0, 0.3, c_out).astype(np.float32)
        ins.append("b")
    op = "ConvTranspose" if transpose else "Conv"
    attrs = {"group": group, "pads": [1] * (2 * dims)}
    if transpose:
        attrs["strides"] = [2] * dims
    nodes = [helper.make_node(op, ins, ["c"], name="conv", **attrs), bn_node("c", "y")]
    x_shape = (2, c_in) + (5,) * dims
    feed = {"x": rng.normal(0, 1, x_shape).astype(np.float32)}
    return make_model(nodes, {"x": x_shape}, ["y"], inits), feed


def gemm_bn(rng: np.random.Generator, trans_b: int, with_c: bool = True, beta: float = 1.0
            ) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray]]:
    """x[3,5] -> Gemm(transB) -> BN over 4 features -> y."""
    w = rng.normal(0, 0.5, (4, 5) if trans_b else (5, 4)).astype(np.float32)
    inits = {"w": w, **bn_params(rng, 4)}
    ins = ["x", "w"]
    if with_c:
        inits["c"] = rng.normal(0, 0.5, (4,)).astype(np.float32)
        ins.append("c")
    nodes = [helper.make_node("Gemm", ins, ["g"], name="gemm", transB=trans_b, alpha=0.7, beta=beta),
             bn_node("g", "y")]
    feed = {"x": rng.normal(0, 1, (3, 5)).astype(np.float32)}
    return make_model(nodes, {"x": (3, 5)}, ["y"], inits), feed


def bn_then(rng: np.random.Generator, ops: Sequence[Tuple[str, Tuple[int, ...]]], x_shape=(2, 3, 4, 4),
            extra_outputs: Sequence[str] = ()) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray]]:
    """x -> BN -> op1(const1) -> op2(const2) ... -> Identity -> y, each (op_type, constant shape); the BN
    output is ``t0``, the k-th op is named ``op{k}`` and writes ``t{k}``. The closing Identity keeps the
    last op's output from being a graph output (which would block its fold, spec section 6)."""
    c = x_shape[1]
    inits = dict(bn_params(rng, c))
    nodes = [bn_node("x", "t0")]
    for i, (op, shape) in enumerate(ops, 1):
        inits[f"k{i}"] = rng.uniform(0.5, 1.5, shape).astype(np.float32) * (1 if op == "Add" else -1) ** i
        out = f"t{i}"
        # the constant goes first for odd steps, to check both input orders
        ins = [f"k{i}", f"t{i - 1}"] if i % 2 else [f"t{i - 1}", f"k{i}"]
        nodes.append(helper.make_node(op, ins, [out], name=f"op{i}"))
    nodes.append(helper.make_node("Identity", [f"t{len(ops)}"], ["y"], name="out"))
    outs = ["y", *extra_outputs]
    feed = {"x": rng.normal(0, 1, x_shape).astype(np.float32)}
    return make_model(nodes, {"x": x_shape}, outs, inits), feed


def session(model: onnx.ModelProto, optimize: bool = False, save: str = "") -> ort.InferenceSession:
    """A CPU session. By default every graph optimization is off, so ORT runs the graph exactly as written;
    ``optimize`` turns them all on (the integer kernels), ``save`` writes the optimized graph there."""
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    if save:
        so.optimized_model_filepath = save
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
    return session(model).run(None, feed)


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a| (0 when both are all zeros)."""
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    return float(np.max(np.abs(a - b))) / scale if scale > 0 else float(np.max(np.abs(b), initial=0.0))


def op_count(model: onnx.ModelProto, op: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op)


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feed: Dict[str, np.ndarray],
                        tol: float = 1e-4) -> float:
    """Run both models in ORT and check every output agrees within ``tol`` relative; returns the worst."""
    worst = 0.0
    for a, b in zip(run(before, feed), run(after, feed)):
        assert a.shape == b.shape
        worst = max(worst, rel_diff(a, b))
    assert worst <= tol, f"fused and unfused outputs differ by {worst:.3g} (relative)"
    return worst


def graph_ops(model: onnx.ModelProto) -> List[str]:
    return [n.op_type for n in model.graph.node]


def node_names(model: onnx.ModelProto) -> List[str]:
    return [n.name for n in model.graph.node]


def find(model: onnx.ModelProto, name: str) -> Optional[onnx.NodeProto]:
    return next((n for n in model.graph.node if n.name == name), None)
