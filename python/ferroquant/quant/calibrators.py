"""Activation calibrators for a model's layers: the factory that turns a layer's :class:`ActivationParams`
into a calibrator (every algorithm the library has: ifmr, hfmg, minmax, percentile, entropy), and the model-wide
memory budget that bounds exact IFMR (decision 7)."""

from __future__ import annotations

from typing import Dict, Iterable, Optional

from ferroquant.calibrate import AnyCalibrator, CalibResult, HistogramCalibrator, IFMRCalibrator
from ferroquant.config.ptq import ActivationParams, QuantConfig
from ferroquant.quant.table import ActivationQuant, LayerInfo

#: Bytes of samples that all exact-IFMR calibrators of one model may hold together: each gets an equal share;
#: a tensor that outgrows its share switches to the histogram percentile mode.
IFMR_MODEL_BUDGET = 1 << 30
MIN_SHARE = 4 << 20


def make_activation_calibrator(tensor: str, params: ActivationParams, symmetric: bool,
                               memory_budget: Optional[int] = None) -> AnyCalibrator:
    """The calibrator ``params.algorithm`` names, for the activation tensor ``tensor``."""
    a = params
    if a.algorithm == "ifmr":
        extra = {} if memory_budget is None else {"memory_budget": memory_budget}
        return IFMRCalibrator(tensor, bits=a.bits, symmetric=symmetric, max_percentile=a.max_percentile,
                              min_percentile=a.min_percentile, search_range=a.search_range,
                              search_step=a.search_step, search_extend=a.search_extend, search_2d=a.search_2d,
                              num_of_bins=a.num_of_bins, **extra)
    return HistogramCalibrator(tensor, a.algorithm, num_of_bins=a.num_of_bins, bits=a.bits, symmetric=symmetric,
                               refine=a.hfmg_refine, percentile=a.percentile * 100.0,
                               num_quantized_bins=a.num_quantized_bins)


def ifmr_share(config: QuantConfig, layers: Iterable[LayerInfo], total: int = IFMR_MODEL_BUDGET) -> int:
    """Each exact-IFMR tensor's share of the model's sample budget ``total`` (at least 4 MiB)."""
    tensors = {l.activation for l in layers if config.layers[l.name].activation.algorithm == "ifmr"}
    return max(MIN_SHARE, total // max(1, len(tensors)))


def layer_calibrators(config: QuantConfig, layers: Iterable[LayerInfo],
                      memory_budget: int = IFMR_MODEL_BUDGET) -> Dict[str, AnyCalibrator]:
    """One calibrator per activation tensor read by ``layers`` (the first layer that reads a tensor decides its
    parameters), by tensor name, in layer order."""
    layers = list(layers)
    share = ifmr_share(config, layers, memory_budget)
    cals: Dict[str, AnyCalibrator] = {}
    for l in layers:
        if l.activation not in cals:
            cals[l.activation] = make_activation_calibrator(l.activation, config.layers[l.name].activation,
                                                            config.activation_symmetric(l.name), share)
    return cals


def activation_quant(tensor: str, r: CalibResult) -> ActivationQuant:
    """A table entry from a calibrator's result."""
    return ActivationQuant(tensor, r.scale, r.zero_point, r.bits, r.algorithm, r.clip_min, r.clip_max,
                           dict(r.details))


__all__ = ["IFMR_MODEL_BUDGET", "activation_quant", "ifmr_share", "layer_calibrators", "make_activation_calibrator"]
