"""Weight and bias quantization, framework-neutral: arrays in, table entries out.

:func:`quantize_weight` runs the layer's weight algorithm (ARQ, NUQ) in the weight's own layout (the axis and
groups come from the layer, i.e. from the registry); :func:`quantize_bias` turns a bias into the int32 codes of
the QDQ bias pattern, so exporters copy numbers and do no arithmetic.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant import ops
from ferroquant.config.ptq import WeightParams
from ferroquant.errors import ConfigError
from ferroquant.quant.table import ActivationQuant, BiasQuant, LayerInfo, LayerQuant, WeightQuant

_INT32 = np.iinfo(np.int32)


def quantize_weight(layer: LayerInfo, w: np.ndarray, params: WeightParams) -> WeightQuant:
    """ARQ or NUQ per ``params``, in the weight's layout (per output channel along ``layer.axis``, per group for
    grouped ConvTranspose), or one scale for the tensor when not ``channel_wise``."""
    cw = params.channel_wise
    if params.algorithm == "nuq":
        if layer.blocked(cw):
            raise ConfigError(f"layer {layer.name!r}, field 'algorithm': NUQ per channel does not support grouped "
                              "ConvTranspose; set channel_wise false")
        r = ops.nuq(w, params.num_steps, params.num_of_iteration, channel_wise=cw, axis=layer.axis, name=layer.weight)
        return WeightQuant(layer.weight, r.scale, r.zero_point, layer.axis if cw else None, 8, "nuq", r.codes,
                           r.levels)
    a = ops.arq(w, channel_wise=cw, axis=layer.axis, bits=params.bits, groups=layer.groups, name=layer.weight)
    return WeightQuant(layer.weight, a.scale, a.zero_point, layer.axis if cw else None, params.bits, "arq", a.codes)


def quantize_bias(layer: LayerInfo, b: Optional[np.ndarray], act: ActivationQuant, wq: WeightQuant
                  ) -> Optional[BiasQuant]:
    """int32 codes ``round(b / (s_in * s_w[c]))`` (clamped to int32) with scale ``s_in * s_w`` (zero point 0).
    None (the bias stays float) unless ``b`` is a 1-D array with one value per output channel (any length
    with a per-tensor weight scale). With per-channel input scales (a depthwise Conv), output channel ``o`` takes
    the scale of input channel ``o // (C_out / C_in)``."""
    scale_w = np.asarray(wq.scale, np.float32).ravel()
    if b is None or b.ndim != 1 or (wq.axis is not None and b.size != scale_w.size):
        return None
    per_channel = wq.axis is not None
    s_in = np.float32(act.scale)
    if act.per_channel:
        ch = np.asarray(act.channel_scales, np.float32)
        if b.size % ch.size:
            return None
        s_in, per_channel = np.repeat(ch, b.size // ch.size), True
    scale = (s_in * scale_w).astype(np.float32)
    codes = np.rint(np.asarray(b, np.float64) / scale.astype(np.float64))
    codes = np.clip(codes, _INT32.min, _INT32.max).astype(np.int32)
    if not per_channel:
        return BiasQuant(str(layer.bias), scale.reshape(()), codes, None)
    return BiasQuant(str(layer.bias), scale, codes, 0)


def layer_quant(layer: LayerInfo, act: ActivationQuant, wq: WeightQuant, bias: Optional[np.ndarray]
                ) -> LayerQuant:
    """The table entry of one layer: its activation and weight qparams and its bias codes."""
    return LayerQuant(layer, act, wq, quantize_bias(layer, bias, act, wq))


__all__ = ["layer_quant", "quantize_bias", "quantize_weight"]
