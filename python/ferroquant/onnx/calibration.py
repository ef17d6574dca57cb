"""Calibration through onnxruntime: tap the input tensor of every quantized layer, run the calibration batches,
stream each tapped tensor into its calibrator as it arrives (nothing keeps all activations), then quantize the
weights. The result is a :class:`QuantTable` plus the calibrators' state (saveable and mergeable)."""

from __future__ import annotations

import os
import sys
import time
import warnings
from itertools import islice
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Union

import numpy as np
import onnx

from ferroquant.calibrate import AnyCalibrator, from_state_dict, observe_all, search_all
from ferroquant.config import QuantConfig
from ferroquant.errors import DataError
from ferroquant.onnx.graph import GraphView
from ferroquant.onnx.placement import DeployPlan
from ferroquant import ops
from ferroquant.onnx.session import cpu_session
from ferroquant.quant.bias_correction import shift_test, subtract_shift
from ferroquant.quant.calibrators import activation_quant, bounded, widened
from ferroquant.quant.guard import guarded_tensors, warn_guarded
from ferroquant.ops.types import AdaRoundOptions
from ferroquant.quant.adaround import LayerGram, learn_rounding, weight_rows
from ferroquant.quant.output_clip import LayerPatches, Reader, search_output_clip, window
from ferroquant.quant.moments import LayerMoments
from ferroquant.quant.profiles import PROFILES, SIGNED, CpuTypes, Profile
from ferroquant.quant.table import ActivationQuant, LayerInfo, QuantTable, WeightQuant
from ferroquant.quant.weights import layer_quant

Feed = Mapping[str, np.ndarray]
CalibrationData = Union[Iterable[Feed], Callable[[], Iterable[Feed]], Any]
Progress = Union[bool, Callable[[int, Optional[int]], None]]


def iterate_batches(data: CalibrationData, input_names: List[str]) -> Iterator[Feed]:
    """Feeds from an iterable of dicts, a callable returning one, an onnxruntime ``CalibrationDataReader``
    (``get_next()``), or, for single-input models, arrays."""
    if hasattr(data, "get_next") and callable(data.get_next):
        while (feed := data.get_next()) is not None:
            yield feed
        return
    if callable(data):
        data = data()
    if isinstance(data, np.ndarray):
        data = [data]
    if isinstance(data, (str, bytes, os.PathLike)):
        raise DataError(f"calibration_data is a {type(data).__name__} ({str(data)[:60]!r}), not batches: pass an "
                        "iterable of {input name: array}; for a file or folder, "
                        "ferroquant.calib_data.load_calibration_data reads it")
    if not isinstance(data, Iterable):
        raise DataError(f"calibration_data must be an iterable of {{input name: array}} (or a callable or a "
                        f"CalibrationDataReader), got {type(data).__name__}")
    for item in data:
        if isinstance(item, Mapping):
            yield item
        elif len(input_names) == 1:
            yield {input_names[0]: item}
        else:
            raise DataError(f"a calibration batch must be a dict {{input name: array}} for a model with inputs "
                            f"{input_names}, got {type(item).__name__}")


def replayable(data: CalibrationData, max_batches: Optional[int]) -> CalibrationData:
    """``data`` in a form that can be iterated more than once: a one-shot iterator or ``CalibrationDataReader``
    is read into a list (its first ``max_batches`` batches); lists, arrays and callables are returned as they
    are."""
    if hasattr(data, "get_next") and callable(data.get_next):
        items = []
        while (max_batches is None or len(items) < max_batches) and (feed := data.get_next()) is not None:
            items.append(feed)
        return items
    if isinstance(data, Iterator):
        return list(islice(data, max_batches))
    return data


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
               "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
               "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_}


def _feed_array(a: np.ndarray, want: Optional[type], name: str, index: int) -> np.ndarray:
    """``a`` in the dtype the model input declares. A float input takes floats (converted); an integer input
    takes integers, a bool input bools (token ids, lengths, masks pass through unchanged)."""
    if want is None:  # a type onnxruntime names that we do not map (strings...): passed as given
        return a
    kind = np.dtype(want).kind
    if kind == "f" and a.dtype.kind != "f":
        raise DataError(f"calibration batch {index}, input {name!r}: expected floats, got {a.dtype}")
    if kind != "f" and not (a.dtype.kind in "iu" if kind in "iu" else a.dtype.kind == "b"):
        raise DataError(f"calibration batch {index}, input {name!r}: the model expects {np.dtype(want)}, got "
                        f"{a.dtype}")
    if kind in "iu" and a.dtype != want and a.size:
        info = np.iinfo(want)
        if a.min() < info.min or a.max() > info.max:
            raise DataError(f"calibration batch {index}, input {name!r}: values outside the range of "
                            f"{np.dtype(want)}")
    return np.ascontiguousarray(a, dtype=want)


def _check_feed(feed: Feed, inputs: Dict[str, Any], index: int, unranked: Set[str] = frozenset()
                ) -> Dict[str, np.ndarray]:
    """The feed with dtypes matched to the model; clear errors for wrong names, dtypes, ranks and shapes
    (inputs in ``unranked`` declare no shape: any rank goes)."""
    unknown = set(feed) - set(inputs)
    missing = set(inputs) - set(feed)
    if unknown or missing:
        raise DataError(f"calibration batch {index}: inputs {sorted(feed)} do not match the model's "
                        f"{sorted(inputs)} (unknown: {sorted(unknown)}, missing: {sorted(missing)})")
    out = {}
    for name, arg in inputs.items():
        a = np.asarray(feed[name])
        wrong_rank = name not in unranked and len(arg.shape) != a.ndim
        if wrong_rank or any(isinstance(d, int) and d != s for d, s in zip(arg.shape, a.shape)):
            raise DataError(f"calibration batch {index}, input {name!r}: shape {list(a.shape)} does not fit the "
                            f"model's {list(arg.shape)}")
        out[name] = _feed_array(a, _ORT_DTYPES.get(arg.type), name, index)
    return out


@dataclass
class CalibratedModel:
    """What :func:`ferroquant.onnx.quantize_model` returns: the (fused) float model, the config, the layers
    quantized, the calibrators (of the layers' inputs and of the tensors the deploy profile quantizes besides),
    the weight quantization, timings, and the deploy profile with its CPU types and Q/DQ plan."""

    model: onnx.ModelProto
    config: QuantConfig
    layers: List[LayerInfo]
    calibrators: Dict[str, AnyCalibrator]
    weights: Dict[str, WeightQuant]
    batches: int = 0
    timings: Dict[str, float] = field(default_factory=dict)
    fusion: Any = None
    profile: Profile = field(default_factory=lambda: PROFILES["amct"])
    cpu: CpuTypes = SIGNED
    plan: DeployPlan = field(default_factory=lambda: DeployPlan("amct"))
    sample: Optional[Dict[str, np.ndarray]] = field(default=None, repr=False)  # the first batch (latency check)
    latency: Any = None  # the latency check's report, once the deploy model is written
    activations: Dict[str, ActivationQuant] = field(default_factory=dict, repr=False)  # searched, by tensor
    #: input statistics of the layers to bias-correct, by layer name (:mod:`ferroquant.onnx.methods`)
    moments: Dict[str, LayerMoments] = field(default_factory=dict, repr=False)
    methods: Dict[str, Any] = field(default_factory=dict)  # what the accuracy methods did (for the record)
    #: input-patch Gram streams of the layers whose rounding is learned, by layer name (used up by table())
    grams: Dict[str, LayerGram] = field(default_factory=dict, repr=False)
    rounding: Optional[AdaRoundOptions] = None
    #: activation tensors mixed precision widened, with their bits (:mod:`ferroquant.onnx.mixed_precision`)
    wide_activations: Dict[str, int] = field(default_factory=dict)
    #: sampled input patches of the layers whose input clip is searched by output error, by layer name
    patches: Dict[str, LayerPatches] = field(default_factory=dict, repr=False)

    def table(self, progress: Optional[Callable[[int, Optional[int]], None]] = None) -> QuantTable:
        """Search every calibrator and assemble the qparams table the exporters consume (bias codes included).
        ``progress(done, total)`` is called after each tensor's search."""
        acts: Dict[str, ActivationQuant] = {}
        for i, (tensor, found) in enumerate(search_all(self.calibrators).items()):  # HFMG searches in parallel
            acts[tensor] = (activation_quant(tensor, found) if tensor not in self.wide_activations
                            else widened(tensor, self.calibrators[tensor], self.wide_activations[tensor]))
            if progress is not None:
                progress(i + 1, len(self.calibrators))
        view = GraphView(self.model)
        self._output_clips(acts, view)
        self.activations = acts
        self._learn_rounding(view)
        layers = {l.name: layer_quant(l, acts[l.activation], self.weights[l.name], self._bias(view, l))
                  for l in self.layers}
        tensors = {t: bounded(acts[t], *self.plan.bounds[t]) if t in self.plan.bounds else acts[t]
                   for t in self.plan.calibrate}
        weights = {l.name: l.weight for l in self.layers}
        guarded = guarded_tensors(layers, lambda name: view.array(weights[name]),
                                  {t: c.observed_range() for t, c in self.calibrators.items()})
        warn_guarded(guarded)
        return QuantTable(layers, tensors, guarded)

    def _output_clips(self, acts: Dict[str, ActivationQuant], view: GraphView) -> None:
        """Output-aware clip search (:mod:`ferroquant.quant.output_clip`) of the tensors whose readers sampled
        patches: ``acts`` is updated, and the record's ``methods.output_clip`` says what was chosen."""
        readers: Dict[str, List[Reader]] = {}
        first: Dict[str, str] = {}
        unseen = set()
        for l in self.layers:
            first.setdefault(l.activation, l.name)
            pt = self.patches.get(l.name)
            if pt is not None and pt.kept:
                readers.setdefault(l.activation, []).append(
                    Reader(l.name, pt.rows(), pt.weights, weight_rows(l, view.array(l.weight))))
            elif pt is not None:
                unseen.add(l.activation)
        if not readers and not unseen:
            return
        done = self.methods.setdefault("output_clip", {"tensors": {}, "skipped": {}})
        for t in sorted(unseen - set(readers)):  # e.g. calibrators loaded from saved states: no data streamed
            done["skipped"][t] = "no calibration patches were streamed (calibrated from saved states?)"
        # the deploy profile's quantized ops (residual Adds...) read these with the same qparams: their error is
        # not what the search measures
        op_read = {self.plan.carried.get(u, u) for u in self.plan.op_tensors}
        for t, rs in readers.items():
            why = ("widened by mixed precision" if t in self.wide_activations else "per-channel" if acts[t].per_channel
                   else f"also read by ops the {self.plan.target} profile quantizes" if t in op_read else "")
            if why:
                done["skipped"][t] = why
                continue
            params = self.config.layers[first[t]].activation
            t0 = time.perf_counter()
            acts[t], rec = search_output_clip(acts[t], rs, window(*params.search_range, params.search_step),
                                              self.config.activation_symmetric(first[t]))
            done["tensors"][t] = {**rec, "seconds": round(time.perf_counter() - t0, 3)}

    def _learn_rounding(self, view: GraphView) -> None:
        """AdaRound (:mod:`ferroquant.quant.adaround`) for the layers with a Gram stream, once: their weight
        codes are replaced, and the record's ``methods.adaround`` says what changed."""
        if not self.grams or self.rounding is None:
            return
        done = self.methods.setdefault("adaround", {"layers": {}, "skipped": {}})
        for l in self.layers:
            g = self.grams.pop(l.name, None)
            if g is None:
                continue
            w = view.array(l.weight)
            p = int(np.prod(w.shape)) // w.shape[l.axis]
            if g.count < p:
                done["skipped"][l.name] = f"{g.count} calibration rows for {p} inputs (needs at least {p})"
                continue
            t0 = time.perf_counter()
            r = learn_rounding(l, w, self.weights[l.name], g.gram(), self.rounding)
            self.weights[l.name] = r.weight
            done["layers"][l.name] = {**r.to_json(), "rows": g.count, "seconds": round(time.perf_counter() - t0, 3)}
        self.grams = {}

    def _bias(self, view: GraphView, layer: LayerInfo) -> Optional[np.ndarray]:
        """The layer's float bias; empirically corrected (:mod:`ferroquant.quant.bias_correction`) for the
        layers with input statistics whose output shifts stand out from the noise of their estimate (the
        record's ``methods.bias_correction.tests`` says, per layer)."""
        b = view.array(layer.bias) if layer.bias else None
        m = self.moments.get(layer.name)
        if m is None or m.count == 0:
            return b
        wq = self.weights[layer.name]
        w = view.array(layer.weight)
        w_deq = ops.dequantize(wq.codes, wq.scale, wq.zero_point, wq.bits, wq.axis, name=layer.weight)
        w_deq = w_deq.reshape(w.shape)
        test = shift_test(w, w_deq, m)
        done = self.methods.setdefault("bias_correction", {"method": "empirical"})
        done.setdefault("tests", {})[layer.name] = test.to_json()
        done["corrected"] = [n for n, t in done["tests"].items() if t["corrected"]]
        return subtract_shift(b, test.shift, w.dtype) if test.corrects else b

    def state_dict(self) -> Dict[str, Any]:
        """The calibrators' states by tensor (plain numbers and arrays)."""
        return {t: c.state_dict() for t, c in self.calibrators.items()}

    def load_state_dict(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        for t, d in states.items():
            if t not in self.calibrators:
                raise DataError(f"saved calibration state for tensor {t!r}, which this model does not tap")
            self.calibrators[t] = from_state_dict(dict(d))

    def merge(self, other: "CalibratedModel") -> None:
        """Fold the calibration of another run (other batches, process or machine) into this one."""
        for t, c in other.calibrators.items():
            if t not in self.calibrators:
                raise DataError(f"cannot merge: tensor {t!r} is not tapped here")
            self.calibrators[t].merge(c)
        for name, m in other.moments.items():
            if name in self.moments:
                self.moments[name].merge(m)
        for name, g in other.grams.items():
            if name in self.grams:
                self.grams[name].merge(g)
        for name, pt in other.patches.items():
            if name in self.patches:
                self.patches[name].merge(pt)
        self.batches += other.batches


def _report(progress: Progress, i: int, total: Optional[int], t0: float) -> None:
    if callable(progress):
        progress(i, total)
    elif progress:
        of = f"/{total}" if total else ""
        sys.stderr.write(f"\rcalibrating: batch {i}{of} ({time.perf_counter() - t0:.1f} s)")
        sys.stderr.flush()


def tapped_session(model: onnx.ModelProto, tensors: Sequence[str]):  # noqa: ANN201 - an InferenceSession
    """The calibration session: ``model`` with ``tensors`` as outputs too (weights of a model over 2 GB stay
    mapped from its file; no memory pattern, whose planned block a new session faults in again on its second
    run; worker threads that sleep rather than spin after a run, when the calibrators' native work takes the
    cores: MobileNetV2's histogram observes 0.29 -> 0.23 s, the runs 0.43 -> 0.45 s)."""
    return cpu_session(model, tensors, mapped_weights=True, mem_pattern=False, spin=False)


def _warn_switched(cm: CalibratedModel) -> None:
    """One warning, one sentence, for the IFMR calibrators whose samples did not fit in the model's budget."""
    switched = [(t, c) for t, c in cm.calibrators.items() if getattr(c, "switched", False)]
    if not switched:
        return
    names = ", ".join(t for t, _ in switched[:3]) + (f" and {len(switched) - 3} more" if len(switched) > 3 else "")
    first = switched[0][1]
    budget = first.pool.total if first.pool is not None else first.memory_budget
    warnings.warn(f"IFMR: {len(switched)} activation tensor(s) ({names}) had more calibration values than fit in "
                  f"the {budget / 2**20:.0f} MiB set aside for exact IFMR, so their clipping ranges were searched "
                  f"on a {first.num_of_bins}-bin histogram of the values instead, which gives close to (not always "
                  "exactly) the same ranges; for exact IFMR, calibrate on fewer batches or raise "
                  "ifmr_memory_budget", RuntimeWarning, stacklevel=4)


def run_calibration(cm: CalibratedModel, data: CalibrationData, max_batches: Optional[int],
                    progress: Progress = False) -> None:
    """Stream the batches through the tapped model into ``cm.calibrators``. Timings: ``taps_run_s`` (the
    onnxruntime runs), ``observe_s`` (the statistics), ``session_s`` (building the tapped session and releasing
    it: onnxruntime's time too)."""
    taps = list(cm.calibrators)
    t_session = time.perf_counter()
    sess = tapped_session(cm.model, taps)
    session_s = time.perf_counter() - t_session
    inputs = {i.name: i for i in sess.get_inputs()}
    unranked = {i.name for i in cm.model.graph.input if not i.type.tensor_type.HasField("shape")}
    readers: Dict[str, List[Union[LayerMoments, LayerGram, LayerPatches]]] = {}
    for l in cm.layers:
        # bias correction's, learned rounding's and output-aware clips' input statistics
        for streams in (cm.moments, cm.grams, cm.patches):
            if l.name in streams:
                readers.setdefault(l.activation, []).append(streams[l.name])
    t0 = time.perf_counter()
    n, run_s, observe_s = 0, 0.0, 0.0
    with warnings.catch_warnings():
        # one summary below instead of a warning per tensor that outgrows its IFMR sample budget
        warnings.filterwarnings("ignore", message="IFMR calibrator .* switching to the histogram", category=RuntimeWarning)
        for feed in iterate_batches(data, list(inputs)):
            if max_batches is not None and n >= max_batches:
                break
            checked = _check_feed(feed, inputs, n, unranked)
            if cm.sample is None:
                cm.sample = checked
            t1 = time.perf_counter()
            outs = sess.run(taps, checked)
            t2 = time.perf_counter()
            observe_all(cm.calibrators, dict(zip(taps, outs)))  # histograms updated in one native call
            for t, arr in zip(taps, outs):
                for m in readers.get(t, ()):
                    m.observe(arr)
            run_s, observe_s = run_s + t2 - t1, observe_s + time.perf_counter() - t2
            del outs
            n += 1
            _report(progress, n, max_batches, t0)
    calibration_s = time.perf_counter() - t0
    t_session = time.perf_counter()
    del sess, inputs  # the last references: the session and its arena are given back here
    session_s += time.perf_counter() - t_session
    _warn_switched(cm)
    if progress is True and n:
        sys.stderr.write("\n")
    if n == 0:
        raise DataError("the calibration data yielded no batch")
    cm.batches += n
    for key, seconds in (("calibration_s", calibration_s), ("taps_run_s", run_s), ("observe_s", observe_s),
                         ("session_s", session_s)):
        cm.timings[key] = cm.timings.get(key, 0.0) + seconds
