"""Mixed precision in the ONNX flow (``methods.mixed_precision``): measure each layer's local error at every
(weight bits, activation bits) pair on the first calibration batches, choose the bits under the budget
(:func:`ferroquant.quant.mixed_precision.choose_bits`), and set them on the calibrated model: the chosen weight
codes replace the layer's (learned rounding and bias correction then work on them), the tensors chosen wider are
re-quantized from their observed range when the table is made, and the record's ``methods.mixed_precision``
names every layer's bits with the errors they were chosen from.

The local error is the report's (:func:`ferroquant.report.measure.with_single_layers`): each layer alone
quantized, fed its FP32 input, against its FP32 output; one session per bit pair.
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import islice
from typing import Any, Dict, Iterable, List, Mapping, Tuple

import numpy as np

from ferroquant import ops
from ferroquant.calibrate import ChannelCalibrator, search_all
from ferroquant.config.methods import MixedPrecisionParams
from ferroquant.errors import DataError
from ferroquant.onnx.calibration import CalibratedModel, iterate_batches
from ferroquant.onnx.graph import GraphView, node_label
from ferroquant.onnx.session import cpu_session
from ferroquant.quant.calibrators import activation_quant, widened
from ferroquant.quant.mixed_precision import Bits, Budget, Choice, LayerCost, choose_bits
from ferroquant.quant.table import ActivationQuant, LayerQuant, QuantTable, WeightQuant
from ferroquant.quant.weights import quantize_weight


def _weight_choices(cm: CalibratedModel, params: MixedPrecisionParams) -> Dict[str, Tuple[int, ...]]:
    """The weight bits open to each layer: ``params.weight_bits`` for ARQ weights (capped by the CPU's widest
    codes), the bits it has for NUQ."""
    out = {}
    for l in cm.layers:
        if cm.config.layers[l.name].weight.algorithm != "arq":
            out[l.name] = (cm.weights[l.name].bits,)
        else:
            out[l.name] = tuple(sorted({min(b, cm.cpu.max_weight_bits) for b in params.weight_bits}))
    return out


def _act_choices(cm: CalibratedModel, params: MixedPrecisionParams) -> Dict[str, Tuple[int, ...]]:
    """The activation bits open to each layer input: ``params.activation_bits``; per-channel inputs keep theirs."""
    return {l.activation: (cm.calibrators[l.activation].bits,)
            if isinstance(cm.calibrators[l.activation], ChannelCalibrator) else tuple(params.activation_bits)
            for l in cm.layers}


def _activation(cm: CalibratedModel, searched: Mapping[str, ActivationQuant], tensor: str, bits: int
                ) -> ActivationQuant:
    cal = cm.calibrators[tensor]
    return searched[tensor] if bits == cal.bits else widened(tensor, cal, bits)


def _weights(cm: CalibratedModel, view: GraphView, wchoices: Mapping[str, Tuple[int, ...]]
             ) -> Dict[Tuple[str, int], WeightQuant]:
    """Every layer's weight at every bit width open to it (its own codes at its own bits)."""
    out = {}
    for l in cm.layers:
        own = cm.weights[l.name]
        for b in wchoices[l.name]:
            params = replace(cm.config.layers[l.name].weight, bits=b)
            out[(l.name, b)] = own if b == own.bits else quantize_weight(l, view.array(l.weight), params)
    return out


def _local_noise(cm: CalibratedModel, tables: Mapping[Bits, QuantTable], data: Iterable[Mapping[str, np.ndarray]],
                 batches: int) -> Tuple[Dict[Bits, Dict[str, float]], Dict[str, float]]:
    """Per bit pair and layer, the relative noise power of the layer alone quantized (pooled over the first
    ``batches`` batches); and per layer its MACs per sample."""
    from ferroquant.report.measure import with_single_layers

    nodes = {node_label(n): n for n in cm.model.graph.node}
    outs = {l.name: nodes[l.name].output[0] for l in cm.layers}
    view = GraphView(cm.model)
    sums = {bits: {n: [0.0, 0.0] for n in outs} for bits in tables}
    macs: Dict[str, float] = {}
    for bits, table in tables.items():
        model, alone = with_single_layers(cm.model, table)
        sess = cpu_session(model, list(dict.fromkeys([*outs.values(), *alone.values()])), optimize=False)
        names = [o.name for o in sess.get_outputs()]
        seen = 0
        for feed in iterate_batches(data, [i.name for i in sess.get_inputs()]):
            if seen >= batches:
                break
            got = dict(zip(names, sess.run(names, dict(feed))))
            for l in cm.layers:
                ref = got[outs[l.name]]
                c = ops.compare(ref, got[alone[l.name]])
                sums[bits][l.name][0] += c.ref_sq
                sums[bits][l.name][1] += c.diff_sq
                w = view.array(l.weight)
                per_sample = ref.size / max(1, ref.shape[0]) if ref.ndim > 1 else ref.size
                macs[l.name] = float(per_sample) * (w.size / max(1, w.shape[l.axis]))
            seen += 1
        if seen == 0:
            raise DataError("methods.mixed_precision: the calibration data yielded no batch to measure on")
    noise = {bits: {n: (d / r if r > 0 else (0.0 if d == 0 else math.inf)) for n, (r, d) in per.items()}
             for bits, per in sums.items()}
    return noise, macs


def _budget(params: MixedPrecisionParams, layers: List[LayerCost]) -> Budget:
    int8 = sum(l.weight_bytes(8) for l in layers)
    size = params.size_bytes if params.size_bytes is not None else int8 * (
        1.0 if params.size_fraction is None else params.size_fraction)
    return Budget(float(size), float(params.int8_compute_share))


def _db(noise: float) -> Any:
    return None if noise <= 0 or not math.isfinite(noise) else round(-10.0 * math.log10(noise), 3)


def _float_outputs(sess: Any, feeds: List[Mapping[str, np.ndarray]]) -> Tuple[List[str], List[List[np.ndarray]]]:
    names = [o.name for o in sess.get_outputs() if o.type in ("tensor(float)", "tensor(float16)", "tensor(double)")]
    return names, [[np.asarray(v, np.float32) for v in sess.run(names, dict(f))] for f in feeds]


def _output_noise(cm: CalibratedModel, base: Mapping[str, LayerQuant], variants: Mapping[Tuple[str, Bits], LayerQuant],
                  feeds: List[Mapping[str, np.ndarray]]) -> Tuple[float, Dict[Tuple[str, Bits], float]]:
    """The relative noise power of the model's float outputs against FP32 on ``feeds``: with every layer at its
    base bits, and with one layer changed to each variant (one fake-quant model per variant)."""
    from ferroquant.onnx.deploy import deploy_layout
    from ferroquant.onnx.qdq import export_fake_quant

    names, ref = _float_outputs(cpu_session(cm.model, optimize=False), feeds)

    def noise(rows: Mapping[str, LayerQuant]) -> float:
        table = QuantTable(dict(rows))
        sess = cpu_session(export_fake_quant(cm.model, table, deploy_layout(cm, table)), optimize=False)
        r_sq = d_sq = 0.0
        for f, outs in zip(feeds, ref):
            for r, g in zip(outs, sess.run(names, dict(f))):
                c = ops.compare(r, np.asarray(g, np.float32))
                r_sq, d_sq = r_sq + c.ref_sq, d_sq + c.diff_sq
        return d_sq / r_sq if r_sq > 0 else 0.0

    return noise(base), {(n, bits): noise({**base, n: lq}) for (n, bits), lq in variants.items()}


def _in_context(cm: CalibratedModel, rows: Mapping[Bits, Mapping[str, LayerQuant]], base_pair: Mapping[str, Bits],
                data: Iterable[Mapping[str, np.ndarray]], batches: int) -> Dict[Bits, Dict[str, float]]:
    """``sensitivity: output``: per pair and layer, the model's output noise with that layer alone at the pair
    and every other at its base bits; pairs two steps away are filled in additively."""
    feeds = list(islice(iterate_batches(data, [i.name for i in cm.model.graph.input]), batches))
    if not feeds:
        raise DataError("methods.mixed_precision: the calibration data yielded no batch to measure on")
    base = {n: rows[base_pair[n]][n] for n in base_pair}
    variants = {(n, bits): rows[bits][n] for bits in rows for n in rows[bits]
                if bits != base_pair[n] and (bits[0] == base_pair[n][0] or bits[1] == base_pair[n][1])}
    at_base, changed = _output_noise(cm, base, variants, feeds)
    out: Dict[Bits, Dict[str, float]] = {bits: {} for bits in rows}
    for bits in rows:
        for n in rows[bits]:
            w0, a0 = base_pair[n]
            if bits == base_pair[n]:
                out[bits][n] = at_base
            elif (n, bits) in changed:
                out[bits][n] = changed[(n, bits)]
            else:
                out[bits][n] = max(0.0, changed[(n, (bits[0], a0))] + changed[(n, (w0, bits[1]))] - at_base)
    return out


def search_precision(cm: CalibratedModel, data: Iterable[Mapping[str, np.ndarray]]) -> Choice:
    """Measure, choose and apply the bits of ``cm``'s layers (see the module docstring); the record's
    ``methods.mixed_precision`` says what was chosen and why."""
    params = cm.config.methods.mixed_precision
    view = GraphView(cm.model)
    searched = {t: activation_quant(t, r) for t, r in search_all(cm.calibrators).items()}
    wchoices, achoices = _weight_choices(cm, params), _act_choices(cm, params)
    weights = _weights(cm, view, wchoices)
    pairs = sorted({(w, a) for l in cm.layers for w in wchoices[l.name] for a in achoices[l.activation]})
    rows: Dict[Bits, Dict[str, LayerQuant]] = {}
    for w, a in pairs:
        rows[(w, a)] = {}
        for l in cm.layers:
            if w in wchoices[l.name] and a in achoices[l.activation]:
                rows[(w, a)][l.name] = LayerQuant(l, _activation(cm, searched, l.activation, a),
                                                  weights[(l.name, w)])
    base_pair = {l.name: (wchoices[l.name][-1], achoices[l.activation][0]) for l in cm.layers}
    base_rows = {l.name: rows[base_pair[l.name]][l.name] for l in cm.layers}
    tables = {bits: QuantTable({**base_rows, **r}) for bits, r in rows.items()}
    local, macs = _local_noise(cm, tables, data, params.batches)
    noise = local if params.sensitivity == "local" else _in_context(cm, rows, base_pair, data, params.batches)
    costs = [LayerCost(l.name, l.activation, int(view.array(l.weight).size), macs[l.name], wchoices[l.name],
                       {bits: noise[bits][l.name] for bits in pairs if l.name in rows[bits]}) for l in cm.layers]
    choice = choose_bits(costs, achoices, _budget(params, costs))
    _apply(cm, choice, weights, costs, local)
    return choice


def _apply(cm: CalibratedModel, choice: Choice, weights: Mapping[Tuple[str, int], WeightQuant],
           costs: List[LayerCost], local: Mapping[Bits, Mapping[str, float]]) -> None:
    """Set the chosen bits on ``cm`` (weights now, wide activations when the table is made) and record them."""
    layers = dict(cm.config.layers)
    for l in cm.layers:
        wb, ab = choice.weight_bits[l.name], choice.activation_bits[l.activation]
        cm.weights[l.name] = weights[(l.name, wb)]
        c = layers[l.name]
        layers[l.name] = replace(c, weight=replace(c.weight, bits=wb), activation=replace(c.activation, bits=ab))
        if ab != cm.calibrators[l.activation].bits:
            cm.wide_activations[l.activation] = ab
    cm.config = replace(cm.config, layers=layers)
    budget = _budget(cm.config.methods.mixed_precision, costs)
    sensitivity = cm.config.methods.mixed_precision.sensitivity
    cm.methods["mixed_precision"] = {"sensitivity": sensitivity,
        "budget": {"weight_bytes": budget.weight_bytes, "int8_compute_share": budget.int8_compute_share},
        "weight_bytes": choice.weight_bytes, "all_int8_weight_bytes": choice.all_int8_weight_bytes,
        "size_fraction": choice.weight_bytes / choice.all_int8_weight_bytes if choice.all_int8_weight_bytes else None,
        "wide_mac_share": choice.wide_mac_share, "steps": choice.steps,
        "layers": {c.name: {"weight_bits": choice.weight_bits[c.name], "activation_bits":
                            choice.activation_bits[c.tensor], "macs": c.macs,
                            "local_sqnr_db": {f"W{w}A{a}": _db(local[(w, a)][c.name]) for (w, a) in sorted(c.noise)},
                            **({"output_sqnr_db": {f"W{w}A{a}": _db(n) for (w, a), n in sorted(c.noise.items())}}
                               if sensitivity == "output" else {})}
                   for c in costs}}


__all__ = ["search_precision"]
