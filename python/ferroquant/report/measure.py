"""The numbers of the per-layer report, measured on a :class:`~ferroquant.onnx.CalibratedModel`.

Per quantized layer: the observed range of its input activation and the fraction of values outside the chosen
clip (from the calibrator's state: its histogram, or IFMR's stored samples), the weight SQNR (fake-quant
weights vs float), and on a few batches, with onnxruntime graph optimizations disabled:

- ``output_sqnr_db`` / ``output_cosine``: the layer's output in the fake-quant model (every layer quantized,
  errors accumulate) against the FP32 model;
- ``local_sqnr_db``: the layer alone quantized (its input Q/DQ and its weight), fed the FP32 input: the error
  this layer adds by itself. It ranks layers by sensitivity (:meth:`QuantReport.worst`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

from ferroquant import ops
from ferroquant.onnx.calibration import CalibratedModel, iterate_batches
from ferroquant.onnx.deploy import deploy_layout, quantized_output
from ferroquant.onnx.graph import GraphView, node_label
from ferroquant.onnx.session import cpu_session
from ferroquant.quant.table import LayerQuant, QuantTable
from ferroquant.onnx.qdq import export_fake_quant
from ferroquant.progress import ProgressBar

Histogram = Tuple[np.ndarray, float, float]  # counts, lo, hi


@dataclass
class LayerStats:
    """One row of the report (every number a plain float; None where not measurable)."""

    name: str
    op_type: str
    activation: str
    act_algorithm: str
    weight_algorithm: str
    weight_bits: int
    observed_min: float
    observed_max: float
    clip_min: float
    clip_max: float
    clipped_fraction: float
    weight_sqnr_db: Optional[float]
    output_sqnr_db: Optional[float] = None
    output_cosine: Optional[float] = None
    local_sqnr_db: Optional[float] = None


@dataclass
class QuantReport:
    """All rows, in graph order, and the activation histograms they were read from (by tensor)."""

    layers: List[LayerStats]
    batches: int
    histograms: Dict[str, Histogram] = field(default_factory=dict, repr=False)

    def ranking(self) -> List[str]:
        """Layer names, most sensitive (lowest local SQNR) first."""
        key = {l.name: (l.local_sqnr_db if l.local_sqnr_db is not None else math.inf) for l in self.layers}
        return sorted(key, key=lambda n: key[n])

    def worst(self, count: Optional[int] = None, sqnr_db: Optional[float] = 20.0) -> List[str]:
        """The ``count`` most sensitive layers, or (without ``count``) those whose local SQNR is under
        ``sqnr_db``."""
        if count is not None:
            return self.ranking()[:max(0, count)]
        by_name = {l.name: l for l in self.layers}
        return [n for n in self.ranking()
                if by_name[n].local_sqnr_db is not None and sqnr_db is not None and by_name[n].local_sqnr_db < sqnr_db]

    def to_json(self) -> Dict[str, Any]:
        return {"batches": self.batches, "ranking": self.ranking(), "layers": [asdict(l) for l in self.layers]}


def _db(signal: float, noise: float) -> Optional[float]:
    if signal == 0 and noise == 0:
        return None
    return math.inf if noise == 0 else 10.0 * math.log10(max(signal, 1e-300) / noise)


def activation_histogram(cal: Any, num_of_bins: int = 4096) -> Tuple[Histogram, float, float]:
    """The calibrator's histogram of its tensor (for exact IFMR, one built from its samples) and the observed
    min/max (exact for exact IFMR): :meth:`~ferroquant.calibrate.Calibrator.histogram` and
    :meth:`~ferroquant.calibrate.Calibrator.observed_range`, no copy of the calibrator's state."""
    h = cal.histogram()
    mn, mx = cal.observed_range()
    return (h.counts, float(h.lo), float(h.hi)), float(mn), float(mx)


def clipped_fraction(cal: Any, hist: Histogram, clip_min: float, clip_max: float) -> float:
    """Share of the observed values outside ``[clip_min, clip_max]``: exact from IFMR's samples, else from the
    histogram (a bin counts as clipped when its centre is outside)."""
    return cal.clipped_fraction(clip_min, clip_max)


def weight_sqnr(w: np.ndarray, lq: LayerQuant) -> Optional[float]:
    """SQNR (dB) of the dequantized weight codes against the float weight; None for blocked (grouped
    per-channel ConvTranspose) weights."""
    wq = lq.weight
    if lq.layer.blocked(wq.axis is not None):
        return None
    fake = ops.dequantize(wq.codes, wq.scale, wq.zero_point, 8 if wq.levels is not None else wq.bits, wq.axis)
    c = ops.compare(w, fake)
    return _db(c.ref_sq, c.diff_sq)


def _session(model: onnx.ModelProto, taps: Sequence[str] = ()):  # noqa: ANN202 - an InferenceSession
    """A session with optimizations off over ``model`` plus the outputs ``taps``."""
    return cpu_session(model, taps, optimize=False)


def _single_layer(view: GraphView, node: onnx.NodeProto, lq: LayerQuant, x: np.ndarray, y: np.ndarray,
                  base: onnx.ModelProto) -> onnx.ModelProto:
    """The layer's node alone (its constants as initializers), quantized like in the full model. Its input and
    output are declared from the arrays ``x`` and ``y`` the layer saw (dtype and rank, every dim free): the
    model's own value_info may lack a shape where shape inference could not find one."""
    io = [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(a.dtype), [None] * a.ndim)
          for t, a in ((node.input[0], x), (node.output[0], y))]
    inits = [onnx.numpy_helper.from_array(view.array(i), i) for i in node.input[1:] if i]
    g = helper.make_graph([node], "layer", [io[0]], [io[1]], initializer=inits)
    m = helper.make_model(g, opset_imports=list(base.opset_import), ir_version=base.ir_version)
    return export_fake_quant(m, QuantTable({lq.layer.name: lq}))


class _Acc:
    """Running comparison of a reference and a test tensor across batches (native f64 sums)."""

    def __init__(self) -> None:
        self.total: Optional[ops.Comparison] = None

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        c = ops.compare(ref, got)
        self.total = c if self.total is None else self.total + c

    def sqnr(self) -> Optional[float]:
        return None if self.total is None else _db(self.total.ref_sq, self.total.diff_sq)

    def cosine(self) -> Optional[float]:
        if self.total is None:
            return None
        cos = self.total.cosine
        return None if math.isnan(cos) else cos


def measure(cm: CalibratedModel, data: Iterable[Mapping[str, np.ndarray]], max_batches: int = 2,
            table: Optional[QuantTable] = None) -> QuantReport:
    """The report's numbers for every quantized layer of ``cm`` (see the module docstring), measured on at most
    ``max_batches`` batches of ``data`` (feeds as for calibration)."""
    table = table or cm.table()
    view = GraphView(cm.model)
    nodes = {node_label(n): n for n in cm.model.graph.node}
    rows: List[LayerStats] = []
    hists: Dict[str, Histogram] = {}
    ranges: Dict[str, Tuple[float, float]] = {}
    for name, lq in table.layers.items():
        aq, cal = lq.activation, cm.calibrators[lq.activation.tensor]
        if aq.tensor not in hists:
            hists[aq.tensor], mn, mx = activation_histogram(cal)
            ranges[aq.tensor] = (mn, mx)
        mn, mx = ranges[aq.tensor]
        rows.append(LayerStats(name, lq.layer.op_type, aq.tensor, aq.algorithm, lq.weight.algorithm, lq.weight.bits,
                               mn, mx, aq.clip_min, aq.clip_max,
                               clipped_fraction(cal, hists[aq.tensor], aq.clip_min, aq.clip_max),
                               weight_sqnr(view.array(lq.layer.weight), lq)))
    outs = {name: nodes[name].output[0] for name in table.layers}
    ins = {name: lq.layer.activation for name, lq in table.layers.items()}
    layout = deploy_layout(cm, table)
    # in a deploy profile's layout an absorbed Relu/Clip is gone: the layer is compared after it
    seen = {n: quantized_output(cm.model, t, layout.absorbed if layout else ()) for n, t in outs.items()}
    fp32 = _session(cm.model, list(dict.fromkeys([*ins.values(), *outs.values(), *seen.values()])))
    fq = _session(export_fake_quant(cm.model, table, layout), list(dict.fromkeys(seen.values())))
    locals_: Dict[str, Any] = {}  # one-layer sessions, made on the first batch (their I/O from real arrays)
    acc_out = {n: _Acc() for n in table.layers}
    acc_loc = {n: _Acc() for n in table.layers}
    taps = fp32.get_outputs()
    names = [o.name for o in taps]
    n_batches = 0
    with ProgressBar("measuring layers", max_batches, "batches") as bar:
        for feed in iterate_batches(data, [i.name for i in fp32.get_inputs()]):
            if n_batches >= max_batches:
                break
            ref = dict(zip(names, fp32.run(names, dict(feed))))
            tensors = list(dict.fromkeys(seen.values()))
            got = dict(zip(tensors, fq.run(tensors, dict(feed))))
            for n in table.layers:
                acc_out[n].add(ref[seen[n]], got[seen[n]])
                if n not in locals_:
                    locals_[n] = _session(_single_layer(view, nodes[n], table.layers[n], ref[ins[n]],
                                                        ref[outs[n]], cm.model))
                acc_loc[n].add(ref[outs[n]], locals_[n].run(None, {ins[n]: ref[ins[n]]})[0])
            n_batches += 1
            bar.update()
    for r in rows:
        r.output_sqnr_db, r.output_cosine = acc_out[r.name].sqnr(), acc_out[r.name].cosine()
        r.local_sqnr_db = acc_loc[r.name].sqnr()
    return QuantReport(rows, n_batches, hists)
