"""The ``onnxruntime`` profile's latency check: the deploy model is timed against the FP32 model in onnxruntime
(graph optimizations on, one thread, the same session options for both: a second thread's spinning makes
timings on a busy machine meaningless) on a calibration batch, and layers whose integer
version is slower are kept in float, so the written model is never slower than FP32 on the machine that
quantizes it.

When the quantized model is slower, each quantized layer is measured alone: the layer's node as FP32 and as the
deploy profile writes it (its input and output Q/DQ, which onnxruntime fuses into one integer kernel), each fed
the layer's real input; onnxruntime's profiler gives the time of the layer's own kernel (the fused integer
kernel, or the float op), so the Q/DQ at the edges of the one-layer model, which a chain of integer layers does
not pay, is not counted. Layers whose integer kernel is slower are kept float; if the model is still slower, every
layer is kept float (a warning says so).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

from ferroquant.onnx.graph import GraphView, node_label
from ferroquant.onnx.session import cpu_session

Feed = Mapping[str, np.ndarray]


@dataclass
class LatencyReport:
    """What the check measured: median milliseconds per run of the FP32 and the written deploy model, the
    layers kept float for speed (with their float and integer kernel times in microseconds), and the runs."""

    fp32_ms: float
    deploy_ms: float
    runs: int
    kept_float: List[str] = field(default_factory=list)
    layer_us: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    all_float: bool = False

    def to_json(self) -> Dict[str, object]:
        return {"fp32_ms": self.fp32_ms, "deploy_ms": self.deploy_ms, "runs": self.runs,
                "kept_float": self.kept_float, "all_float": self.all_float,
                "layer_us": {k: {"float": f, "int": i} for k, (f, i) in self.layer_us.items()}}


def time_models(models: Sequence[onnx.ModelProto], feed: Feed, runs: int = 7) -> List[float]:
    """Median seconds per run of each model on ``feed``, runs interleaved (A B A B ...) so that a change in the
    machine's speed affects every model alike."""
    sessions = [cpu_session(m, threads=1) for m in models]
    feeds = [{i.name: feed[i.name] for i in s.get_inputs()} for s in sessions]
    for s, f in zip(sessions, feeds):
        s.run(None, f)  # warm-up
    times: List[List[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for k, (s, f) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            s.run(None, f)
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def kernel_us(model: onnx.ModelProto, feed: Feed, runs: int = 5) -> float:
    """Microseconds per run spent in the model's costliest kernel (its one layer), from onnxruntime's profiler."""
    with tempfile.TemporaryDirectory() as d:
        s = cpu_session(model, profile_dir=d, threads=1)
        for _ in range(runs + 1):
            s.run(None, dict(feed))
        with open(s.end_profiling()) as f:
            events = json.load(f)
    per: Dict[str, List[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per.setdefault(e["name"], []).append(float(e["dur"]))
    return max(statistics.median(v[1:] or v) for v in per.values()) if per else 0.0


def one_layer(model: onnx.ModelProto, layer: str, x: np.ndarray, y: np.ndarray) -> onnx.ModelProto:
    """The node ``layer`` alone, its constants as initializers, I/O declared from the arrays it saw. Its output
    goes through an Identity to the graph output, so that a Q/DQ pair on it is read (and fused) as in a chain."""
    view = GraphView(model)
    node = next(n for n in model.graph.node if node_label(n) == layer)
    out = f"{node.output[0]}__out"
    io = [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(a.dtype), [None] * a.ndim)
          for t, a in ((node.input[0], x), (out, y))]
    inits = [onnx.numpy_helper.from_array(view.array(i), i) for i in node.input[1:] if i]
    nodes = [node, helper.make_node("Identity", [node.output[0]], [out], name=f"{layer}__out")]
    g = helper.make_graph(nodes, "layer", [io[0]], [io[1]], initializer=inits)
    return helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def slow_layers(fp32: onnx.ModelProto, layers: Sequence[str], quantize_one: Callable[[onnx.ModelProto, str], onnx.ModelProto],
                feed: Feed) -> Dict[str, Tuple[float, float]]:
    """Per layer, (float, integer) kernel microseconds, measured alone on the layer's real input."""
    nodes = {node_label(n): n for n in fp32.graph.node}
    tensors = list(dict.fromkeys(t for l in layers for t in (nodes[l].input[0], nodes[l].output[0])))
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors
                              if t not in have)
    s = cpu_session(probe)
    arrays = dict(zip([o.name for o in s.get_outputs()], s.run(None, {i.name: feed[i.name] for i in s.get_inputs()})))
    out: Dict[str, Tuple[float, float]] = {}
    for l in layers:
        x, y = arrays[nodes[l].input[0]], arrays[nodes[l].output[0]]
        single = one_layer(fp32, l, x, y)
        out[l] = (kernel_us(single, {nodes[l].input[0]: x}), kernel_us(quantize_one(single, l), {nodes[l].input[0]: x}))
    return out


__all__ = ["LatencyReport", "kernel_us", "one_layer", "slow_layers", "time_models"]
