"""Activation calibrators for a model's layers: the factory that turns a layer's :class:`ActivationParams`
into a calibrator (every algorithm the library has: ifmr, hfmg, minmax, percentile, entropy), and the model-wide
memory budget that bounds exact IFMR (decision 7)."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence

from ferroquant import ops
from ferroquant.calibrate import (
    AnyCalibrator,
    CalibResult,
    ChannelCalibrator,
    ChannelCalibResult,
    HistogramCalibrator,
    IFMRCalibrator,
)
from ferroquant.calibrate.ifmr import SampleBudget
from ferroquant.ops.types import IfmrOptions
from ferroquant.config.ptq import ActivationParams, QuantConfig
from ferroquant.quant.table import ActivationQuant, LayerInfo

#: Bytes of samples that all exact-IFMR calibrators of one model may hold together: each is sure of
#: ``MIN_SHARE`` and takes more from what the others leave, first come first served
#: (:class:`~ferroquant.calibrate.ifmr.SampleBudget`); a tensor that finds no room switches to the histogram
#: percentile mode.
IFMR_MODEL_BUDGET = 1 << 30
MIN_SHARE = 4 << 20


def make_activation_calibrator(tensor: str, params: ActivationParams, symmetric: bool,
                               memory_budget: Optional[int] = None, pool: Optional[SampleBudget] = None
                               ) -> AnyCalibrator:
    """The calibrator ``params.algorithm`` names, for the activation tensor ``tensor`` (exact IFMR: at most
    ``memory_budget`` bytes of samples, within the model's ``pool``)."""
    a = params
    if a.algorithm == "ifmr":
        extra: Dict[str, Any] = {} if memory_budget is None else {"memory_budget": memory_budget}
        if pool is not None:
            extra["pool"] = pool
        return IFMRCalibrator(tensor, bits=a.bits, symmetric=symmetric, max_percentile=a.max_percentile,
                              min_percentile=a.min_percentile, search_range=a.search_range,
                              search_step=a.search_step, search_extend=a.search_extend, search_2d=a.search_2d,
                              num_of_bins=a.num_of_bins, **extra)
    return HistogramCalibrator(tensor, a.algorithm, num_of_bins=a.num_of_bins, bits=a.bits, symmetric=symmetric,
                               refine=a.hfmg_refine, percentile=a.percentile,
                               num_quantized_bins=a.num_quantized_bins)


def make_channel_calibrator(tensor: str, params: ActivationParams, symmetric: bool) -> ChannelCalibrator:
    """A per-channel calibrator (channel axis 1) with ``params``'s algorithm, for a depthwise Conv's input."""
    a = params
    ifmr = IfmrOptions(a.bits, symmetric, a.max_percentile, a.min_percentile, a.search_range[0], a.search_range[1],
                       a.search_step, a.search_extend, a.search_2d)
    return ChannelCalibrator(tensor, a.algorithm, bits=a.bits, symmetric=symmetric, refine=a.hfmg_refine,
                             percentile=a.percentile, num_quantized_bins=a.num_quantized_bins, ifmr=ifmr)


def ifmr_share(config: QuantConfig, layers: Iterable[LayerInfo], total: int = IFMR_MODEL_BUDGET,
               others: int = 0) -> int:
    """Each exact-IFMR tensor's share of the model's sample budget ``total`` (at least 4 MiB), with ``others``
    more IFMR tensors beside the layers' inputs."""
    tensors = {l.activation for l in layers if config.layers[l.name].activation.algorithm == "ifmr"}
    return max(MIN_SHARE, total // max(1, len(tensors) + others))


def layer_calibrators(config: QuantConfig, layers: Iterable[LayerInfo], memory_budget: int = IFMR_MODEL_BUDGET,
                      tensors: Sequence[str] = (), channel_tensors: Iterable[str] = ()) -> Dict[str, AnyCalibrator]:
    """One calibrator per activation tensor read by ``layers`` (the first layer that reads a tensor decides its
    parameters), by tensor name, in layer order; then one per other tensor of ``tensors`` (a deploy profile's
    outputs, residual Adds...) with the config's tensor parameters. Exact IFMR shares ``memory_budget`` among all
    of them. Tensors of ``channel_tensors`` (read only by depthwise Convs) whose first reader asks for
    ``channel_wise`` activations get a per-channel calibrator."""
    channel = set(channel_tensors)
    layers = list(layers)
    extra = [t for t in tensors if t not in {l.activation for l in layers}]
    ifmr_extra = len(extra) if config.tensor_activation().algorithm == "ifmr" else 0
    share = ifmr_share(config, layers, memory_budget, ifmr_extra)
    pool = SampleBudget(memory_budget, MIN_SHARE)
    cap = max(memory_budget, share)
    cals: Dict[str, AnyCalibrator] = {}
    for l in layers:
        params = config.layers[l.name].activation
        if l.activation not in cals and params.channel_wise and l.activation in channel:
            cals[l.activation] = make_channel_calibrator(l.activation, params, config.activation_symmetric(l.name))
        elif l.activation not in cals:
            cals[l.activation] = make_activation_calibrator(l.activation, config.layers[l.name].activation,
                                                            config.activation_symmetric(l.name), cap, pool)
    cals.update(tensor_calibrators(config, extra, cap, pool))
    return cals


def activation_quant(tensor: str, r: CalibResult) -> ActivationQuant:
    """A table entry from a calibrator's result (per channel for a :class:`ChannelCalibResult`)."""
    if isinstance(r, ChannelCalibResult):
        return ActivationQuant(tensor, r.scale, r.zero_point, r.bits, r.algorithm, r.clip_min, r.clip_max,
                               dict(r.details), r.axis, r.scales, r.zero_points)
    return ActivationQuant(tensor, r.scale, r.zero_point, r.bits, r.algorithm, r.clip_min, r.clip_max,
                           dict(r.details))


def widened(tensor: str, cal: AnyCalibrator, bits: int) -> ActivationQuant:
    """The qparams of ``tensor`` at ``bits`` wider than its calibrator's (mixed precision's 16-bit activations):
    the observed range (min/max) on the new grid, no clip search (at 16 bits the step is 1/256 of 8 bits', so
    clipping outliers no longer pays), symmetric as the calibrator is."""
    lo, hi = cal.observed_range()
    p = ops.qparams_from_range(min(float(lo), 0.0), max(float(hi), 0.0), bits, symmetric=bool(cal.symmetric))
    q_lo, q_hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return ActivationQuant(tensor, p.scale, p.zero_point, bits, "minmax",
                           float(p.scale * (q_lo - p.zero_point)), float(p.scale * (q_hi - p.zero_point)),
                           {"mixed_precision": f"{cal.bits} -> {bits} bits"})


def tensor_calibrators(config: QuantConfig, tensors: Iterable[str], budget: int,
                       pool: Optional[SampleBudget] = None) -> Dict[str, AnyCalibrator]:
    """Calibrators for activation tensors that are no layer's input, with the config's tensor parameters."""
    params, symmetric = config.tensor_activation(), config.tensor_symmetric()
    return {t: make_activation_calibrator(t, params, symmetric, budget, pool) for t in tensors}


def bounded(aq: ActivationQuant, lo: float, hi: float) -> ActivationQuant:
    """``aq`` with its clip range kept inside ``[lo, hi]`` (the values an absorbed Relu/Clip lets through), so
    that removing the activation from the deploy model changes nothing: the qparams are recomputed (asymmetric:
    activations are absorbed only then) from the narrowed range when the search's clip reaches outside it."""
    if aq.clip_min >= lo and aq.clip_max <= hi or aq.per_channel:
        return aq  # per-channel activations are refused by the profiles that absorb activations
    new_lo, new_hi = max(aq.clip_min, lo), min(aq.clip_max, hi)
    p = ops.qparams_from_range(new_lo, new_hi, aq.bits, symmetric=False)
    grid_lo = p.scale * (-(1 << (aq.bits - 1)) - p.zero_point)
    grid_hi = p.scale * ((1 << (aq.bits - 1)) - 1 - p.zero_point)
    details = {**aq.details, "bounded": [float(lo), float(hi)], "search_clip": [aq.clip_min, aq.clip_max]}
    return ActivationQuant(aq.tensor, p.scale, p.zero_point, aq.bits, aq.algorithm, float(grid_lo), float(grid_hi),
                           details)


__all__ = ["IFMR_MODEL_BUDGET", "activation_quant", "bounded", "ifmr_share", "layer_calibrators",
           "make_activation_calibrator", "make_channel_calibrator", "tensor_calibrators", "widened"]
