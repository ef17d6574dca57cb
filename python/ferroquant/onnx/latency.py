"""The ``onnxruntime`` profile's latency check: the deploy model is timed against the FP32 model in onnxruntime
(graph optimizations on, one thread, the same session options for both: a second thread's spinning makes
timings on a busy machine meaningless) on a calibration batch, and layers whose integer
version is slower are kept in float, so the written model is never slower than FP32 on the machine that
quantizes it.

When the quantized model is slower, each quantized layer is measured alone: the layer's node as FP32 and as the
deploy profile writes it (its input and output Q/DQ, which onnxruntime fuses into one integer kernel), each fed
the layer's real input; onnxruntime's profiler gives the time of the layer's own kernel (the fused integer
kernel, or the float op), so the Q/DQ at the edges of the one-layer model, which a chain of integer layers does
not pay, is not counted. The one-layer models are run side by side in one float and one integer model (two
sessions, two profiles, whatever the number of layers; one session per layer and form cost 106 s on PP-OCRv6 det). Layers whose integer kernel is slower are kept float; if the model is still slower, every
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


#: Seconds of timed runs per model that the check aims at: a model slower than this per run gets fewer runs (never
#: fewer than MIN_RUNS), so the check's cost follows the model's size.
RUN_BUDGET_S = 2.0
MIN_RUNS = 3


def _runs_for(seconds_per_run: float, runs: int) -> int:
    """``runs``, fewer for a model whose run takes longer than ``RUN_BUDGET_S / runs`` (at least ``MIN_RUNS``)."""
    return max(min(runs, MIN_RUNS), min(runs, int(RUN_BUDGET_S / max(seconds_per_run, 1e-9))))


def time_models(models: Sequence[onnx.ModelProto], feed: Feed, runs: int = 7) -> Tuple[List[float], int]:
    """Median seconds per run of each model on ``feed``, runs interleaved (A B A B ...) so that a change in the
    machine's speed affects every model alike, and the number of runs: fewer than ``runs`` when the slowest
    model's warm-up took longer than ``RUN_BUDGET_S / runs``, at least ``MIN_RUNS``."""
    sessions = [cpu_session(m, threads=1) for m in models]
    feeds = [{i.name: feed[i.name] for i in s.get_inputs()} for s in sessions]
    warm = 0.0
    for s, f in zip(sessions, feeds):
        t0 = time.perf_counter()
        s.run(None, f)  # warm-up
        warm = max(warm, time.perf_counter() - t0)
    times: List[List[float]] = [[] for _ in sessions]
    done = _runs_for(warm, runs)
    for _ in range(done):
        for k, (s, f) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            s.run(None, f)
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times], done


def kernel_times(model: onnx.ModelProto, feed: Feed, runs: int = 5) -> Dict[str, float]:
    """Microseconds per run of each kernel of ``model`` (median over ``runs`` profiled runs after a warm-up, fewer
    for a slow model as in :func:`time_models`), by
    node name as onnxruntime's profiler reports it (a node that onnxruntime fused into an integer kernel keeps its
    name with a ``_token_N`` suffix)."""
    with tempfile.TemporaryDirectory() as d:
        s = cpu_session(model, profile_dir=d, threads=1)
        t0 = time.perf_counter()
        s.run(None, dict(feed))  # warm-up (profiled too; its events are dropped below)
        for _ in range(_runs_for(time.perf_counter() - t0, runs)):
            s.run(None, dict(feed))
        with open(s.end_profiling()) as f:
            events = json.load(f)
    per: Dict[str, List[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per.setdefault(e["name"][: -len("_kernel_time")], []).append(float(e["dur"]))
    return {k: statistics.median(v[1:] or v) for k, v in per.items()}


def _prefixed(model: onnx.ModelProto, prefix: str) -> onnx.GraphProto:
    """The graph of ``model`` with every node, tensor and initializer name prefixed (to sit beside others)."""
    g = onnx.GraphProto()
    g.CopyFrom(model.graph)
    for n in g.node:
        n.name = prefix + n.name
        n.input[:] = [prefix + t if t else t for t in n.input]
        n.output[:] = [prefix + t if t else t for t in n.output]
    for t in list(g.initializer) + list(g.sparse_initializer):
        t.name = prefix + t.name
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = prefix + vi.name
    return g


def side_by_side(models: Sequence[onnx.ModelProto]) -> onnx.ModelProto:
    """One model holding the graphs of ``models`` side by side, the k-th one's names prefixed ``L{k}/``, so that
    one session (and one profile) measures every one-layer model as if alone."""
    graphs = [_prefixed(m, f"L{k}/") for k, m in enumerate(models)]
    g = helper.make_graph([n for x in graphs for n in x.node], "layers", [i for x in graphs for i in x.input],
                          [o for x in graphs for o in x.output], [t for x in graphs for t in x.initializer])
    opsets: Dict[str, int] = {}
    for m in models:
        for o in m.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                             ir_version=max(m.ir_version for m in models))


def _per_model(times: Mapping[str, float], count: int) -> List[float]:
    """The costliest kernel of each ``L{k}/`` model (its one layer; the Q/DQ at its edges, which a chain of
    integer layers does not pay, is not counted)."""
    best = [0.0] * count
    for name, us in times.items():
        head, sep, _ = name.partition("/")
        if sep and head[:1] == "L" and head[1:].isdigit() and int(head[1:]) < count:
            best[int(head[1:])] = max(best[int(head[1:])], us)
    return best


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
    """Per layer, (float, integer) kernel microseconds, measured alone on the layer's real input: every layer's
    one-layer model side by side in one float and one integer model, so two sessions and two profiles measure
    them all."""
    nodes = {node_label(n): n for n in fp32.graph.node}
    tensors = list(dict.fromkeys(t for l in layers for t in (nodes[l].input[0], nodes[l].output[0])))
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors
                              if t not in have)
    s = cpu_session(probe)
    arrays = dict(zip([o.name for o in s.get_outputs()], s.run(None, {i.name: feed[i.name] for i in s.get_inputs()})))
    del s, probe
    singles = [one_layer(fp32, l, arrays[nodes[l].input[0]], arrays[nodes[l].output[0]]) for l in layers]
    feed_all = {f"L{k}/{nodes[l].input[0]}": arrays[nodes[l].input[0]] for k, l in enumerate(layers)}
    del arrays
    floats = _per_model(kernel_times(side_by_side(singles), feed_all), len(layers))
    ints = _per_model(kernel_times(side_by_side([quantize_one(m, l) for m, l in zip(singles, layers)]), feed_all),
                      len(layers))
    return {l: (f, i) for l, f, i in zip(layers, floats, ints)}


__all__ = ["LatencyReport", "kernel_times", "one_layer", "side_by_side", "slow_layers", "time_models"]
