"""The numbers of the per-layer report, measured on a :class:`~ferroquant.onnx.CalibratedModel`.

Per quantized layer: the observed range of its input activation and the fraction of values outside the chosen
clip (from the calibrator's state: its histogram, or IFMR's stored samples, i.e. every calibration batch), the
weight SQNR (fake-quant weights vs float), and, on the measured batches (by default the first
:data:`REPORT_BATCHES` calibration batches), with onnxruntime graph optimizations disabled:

- ``output_sqnr_db`` / ``output_cosine``: the layer's output as the next layers read it in the fake-quant model
  (every layer up to it quantized, errors accumulate; after the output's own Q/DQ where the deploy profile
  quantizes it, and after a Relu/Clip the profile absorbs) against the same tensor of the FP32 model. At the
  last layer this is the model's output SQNR on those batches;
- ``local_sqnr_db``: the layer alone quantized (its input Q/DQ and its weight), fed the FP32 input: the error
  this layer adds by itself. It ranks layers by sensitivity (:meth:`QuantReport.worst`).

SQNRs are pooled over every measured sample (sums of squares over all of them); ``*_spread_db`` gives the
[min, median, max] of the per-sample SQNR (a sample: one slice along the first axis), so a number measured on
a few unrepresentative samples shows as a wide spread.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx

from ferroquant import ops
from ferroquant.onnx.calibration import CalibratedModel, iterate_batches
from ferroquant.onnx.deploy import deploy_layout, quantized_output
from ferroquant.onnx.external import reattach, skeleton
from ferroquant.onnx.graph import GraphView, node_label
from ferroquant.onnx.session import cpu_session
from ferroquant.quant.table import LayerQuant, QuantTable
from ferroquant.onnx.qdq import export_fake_quant
from ferroquant.progress import ProgressBar

Histogram = Tuple[np.ndarray, float, float]  # counts, lo, hi
#: calibration batches measured by default
REPORT_BATCHES = 2
#: a measured batch is run in at most this many pieces along its batch axis (where the model's batch dim is
#: free), so the tapped tensors held at once are those of a few samples, not of a whole batch
SPLIT = 8


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
    output_sqnr_spread_db: Optional[List[float]] = None
    local_sqnr_spread_db: Optional[List[float]] = None
    activation_bits: int = 8  # the input's bits (mixed precision may choose 16)


@dataclass
class QuantReport:
    """All rows, in graph order, the activation histograms they were read from (by tensor), and how much data
    the output and local SQNRs were measured on (``batches``, ``samples``)."""

    layers: List[LayerStats]
    batches: int
    histograms: Dict[str, Histogram] = field(default_factory=dict, repr=False)
    samples: int = 0

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
        return {"batches": self.batches, "samples": self.samples, "ranking": self.ranking(), "layers": [asdict(l) for l in self.layers]}


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


def with_single_layers(model: onnx.ModelProto, table: QuantTable) -> Tuple[onnx.ModelProto, Dict[str, str]]:
    """``model`` (float) plus, for every layer of ``table``, a copy of its node quantized alone (its input Q/DQ
    and its weight, as in the full model) that reads the layer's FP32 input inside the same graph and writes
    ``<output>::alone``. One session then gives each layer's FP32 output and its output quantized alone; returns
    the model and the copies' outputs by layer name. The large weights are not copied (shared initializers)."""
    sk = skeleton(model)
    graph = sk.model.graph
    nodes = {node_label(n): n for n in graph.node}
    taken = {n.name for n in graph.node} | {o for n in graph.node for o in n.output}
    copies: Dict[str, LayerQuant] = {}
    outs: Dict[str, str] = {}
    for name, lq in table.layers.items():
        node = onnx.NodeProto()
        node.CopyFrom(nodes[name])
        label, out = f"{name}::alone", f"{node.output[0]}::alone"
        while label in taken or out in taken:
            label, out = label + "_", out + "_"
        taken.update((label, out))
        node.name = label
        del node.output[:]
        node.output.append(out)
        graph.node.append(node)
        copies[label] = replace(lq, layer=replace(lq.layer, name=label))
        outs[name] = out
    combined = reattach(sk, sk.model, model)
    return export_fake_quant(combined, QuantTable(copies)), outs


def readers_view(fq: onnx.ModelProto, tensors: Iterable[str]) -> Dict[str, str]:
    """For each tensor, the name of what its readers see in the fake-quant model ``fq``: the output of its
    ``QuantizeLinear -> DequantizeLinear`` pair where the model quantizes it, else the tensor itself. (With a
    deploy profile's layout a Relu/Clip after a layer is absorbed: the tensor itself is then the layer's raw,
    unrectified output, and only the pair's output is what the model computes.)"""
    q = {n.input[0]: n.output[0] for n in fq.graph.node if n.op_type == "QuantizeLinear" and n.input}
    dq = {n.input[0]: n.output[0] for n in fq.graph.node if n.op_type == "DequantizeLinear" and n.input}
    return {t: dq.get(q[t], t) if t in q else t for t in tensors}


class _Acc:
    """Running comparison of a reference and a test tensor across batches (native f64 sums), and the SQNR of
    each sample (slice along the first axis) for the spread."""

    def __init__(self) -> None:
        self.total: Optional[ops.Comparison] = None
        self.per_sample: List[float] = []
        self.samples = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        pieces = zip(ref, got) if ref.ndim > 1 and ref.shape[0] > 1 and ref.shape == got.shape else [(ref, got)]
        for r, g in pieces:
            c = ops.compare(r, g)
            self.samples += 1
            self.total = c if self.total is None else self.total + c
            db = _db(c.ref_sq, c.diff_sq)
            if db is not None:
                self.per_sample.append(db)

    def sqnr(self) -> Optional[float]:
        return None if self.total is None else _db(self.total.ref_sq, self.total.diff_sq)

    def spread(self) -> Optional[List[float]]:
        """[min, median, max] of the per-sample SQNR (dB)."""
        if not self.per_sample:
            return None
        v = np.sort(np.asarray(self.per_sample, np.float64))
        return [float(v[0]), float(np.median(v)), float(v[-1])]

    def cosine(self) -> Optional[float]:
        if self.total is None:
            return None
        cos = self.total.cosine
        return None if math.isnan(cos) else cos


def _rows(cm: CalibratedModel, table: QuantTable, view: GraphView) -> Tuple[List[LayerStats], Dict[str, Histogram]]:
    rows: List[LayerStats] = []
    hists: Dict[str, Histogram] = {}
    ranges: Dict[str, Tuple[float, float]] = {}
    for name, lq in table.layers.items():
        aq, cal = lq.activation, cm.calibrators[lq.activation.tensor]
        if aq.tensor not in hists:
            hists[aq.tensor], mn, mx = activation_histogram(cal)
            ranges[aq.tensor] = (mn, mx)
        mn, mx = ranges[aq.tensor]
        oc = aq.details.get("output_clip", {})
        algo = aq.algorithm + (f" +output clip x{oc['ratio']:g}" if "ratio" in oc else "")
        rows.append(LayerStats(name, lq.layer.op_type, aq.tensor, algo, lq.weight.algorithm, lq.weight.bits,
                               mn, mx, aq.clip_min, aq.clip_max,
                               clipped_fraction(cal, hists[aq.tensor], aq.clip_min, aq.clip_max),
                               weight_sqnr(view.array(lq.layer.weight), lq), activation_bits=aq.bits))
    return rows, hists


def _pieces(feed: Mapping[str, np.ndarray], inputs: Sequence[Any], parts: int = SPLIT) -> List[Dict[str, np.ndarray]]:
    """``feed`` cut along the batch axis into at most ``parts`` runs (less memory: every tapped tensor of a run is
    held at once), where every input is batched along a free first dim; else the feed as it is."""
    arrays = {k: np.asarray(v) for k, v in feed.items()}
    n = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    fixed = any(not i.shape or isinstance(i.shape[0], int) for i in inputs)
    if len(n) != 1 or fixed or min(n) <= 1:
        return [arrays]
    size = -(-min(n) // parts)
    return [{k: a[i:i + size] for k, a in arrays.items()} for i in range(0, min(n), size)]


def measure(cm: CalibratedModel, data: Iterable[Mapping[str, np.ndarray]], max_batches: Optional[int] = 2,
            table: Optional[QuantTable] = None) -> QuantReport:
    """The report's numbers for every quantized layer of ``cm`` (see the module docstring), measured on at most
    ``max_batches`` batches of ``data`` (feeds as for calibration; None: all of them). Two sessions: the FP32
    model with each layer's copy quantized alone beside it, and the fake-quant model."""
    table = table or cm.table()
    view = GraphView(cm.model)
    rows, hists = _rows(cm, table, view)
    nodes = {node_label(n): n for n in cm.model.graph.node}
    outs = {name: nodes[name].output[0] for name in table.layers}
    layout = deploy_layout(cm, table)
    # in a deploy profile's layout an absorbed Relu/Clip is gone: the layer is compared after it
    seen = {n: quantized_output(cm.model, t, layout.absorbed if layout else ()) for n, t in outs.items()}
    ref_model, alone = with_single_layers(cm.model, table)
    fq_model = export_fake_quant(cm.model, table, layout)
    read = readers_view(fq_model, seen.values())
    ref_s = _session(ref_model, list(dict.fromkeys([*outs.values(), *seen.values(), *alone.values()])))
    fq_taps = list(dict.fromkeys(read[t] for t in seen.values()))
    fq_s = _session(fq_model, fq_taps)
    del ref_model, fq_model
    acc_out = {n: _Acc() for n in table.layers}
    acc_loc = {n: _Acc() for n in table.layers}
    names = [o.name for o in ref_s.get_outputs()]
    inputs = ref_s.get_inputs()
    n_batches = 0
    with ProgressBar("measuring layers", max_batches, "batches") as bar:
        for feed in iterate_batches(data, [i.name for i in inputs]):
            if max_batches is not None and n_batches >= max_batches:
                break
            for piece in _pieces(feed, inputs):
                ref = dict(zip(names, ref_s.run(names, piece)))
                for n in table.layers:
                    acc_loc[n].add(ref[outs[n]], ref.pop(alone[n]))
                got = dict(zip(fq_taps, fq_s.run(fq_taps, piece)))
                for n in table.layers:
                    acc_out[n].add(ref[seen[n]], got[read[seen[n]]])
                del ref, got
            n_batches += 1
            bar.update()
    for r in rows:
        r.output_sqnr_db, r.output_cosine = acc_out[r.name].sqnr(), acc_out[r.name].cosine()
        r.local_sqnr_db = acc_loc[r.name].sqnr()
        r.output_sqnr_spread_db, r.local_sqnr_spread_db = acc_out[r.name].spread(), acc_loc[r.name].spread()
    samples = acc_out[rows[0].name].samples if rows else 0
    return QuantReport(rows, n_batches, hists, samples)


def output_check(fp32: onnx.ModelProto, fake_quant: onnx.ModelProto, feed: Mapping[str, np.ndarray]
                 ) -> Dict[str, ops.Comparison]:
    """The fake-quant model's float outputs against the FP32 model's on one feed (graph optimizations off): the
    cheap check ``ferroquant quantize`` prints instead of the per-layer report (two runs of one batch)."""
    a, b = _session(fp32), _session(fake_quant)
    names = [o.name for o in a.get_outputs() if o.type in ("tensor(float)", "tensor(float16)", "tensor(double)")]
    ref, got = a.run(names, dict(feed)), b.run(names, dict(feed))
    return {n: ops.compare(np.asarray(r, np.float32), np.asarray(g, np.float32)) for n, r, g in zip(names, ref, got)}


def check_lines(checks: Mapping[str, ops.Comparison], samples: int) -> List[str]:
    """One line per output of :func:`output_check`."""
    return [f"check: fake-quant vs FP32 on the first calibration batch ({samples} sample{'s' * (samples != 1)}): "
            f"output {name!r} SQNR {c.sqnr_db:.1f} dB, cosine {c.cosine:.4f}" for name, c in checks.items()]
