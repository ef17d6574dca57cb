"""AMCT's scale guard, made visible. A scale below ``FLT_EPSILON`` becomes 1.0 (AMCT's ``ProcessScale``, kept
as is in the kernels), so a tensor whose values are all below about 1e-5 in magnitude gets all-zero codes and the
quantized layer outputs nothing. :func:`guarded_tensors` finds the tensors of a table the guard hit (a scale of
exactly 1.0 for values whose range is under 0.5, which no real scale of 1.0 can have: that needs a range of at
least ``qmax - qmin``; all-zero tensors and channels, whose zero codes are right, are not reported), and
:func:`warn_guarded` says so once per model, naming them and what to do."""

from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ferroquant.quant.table import LayerQuant, WeightQuant

#: below this range a scale of exactly 1.0 can only come from the guard (see the module's note)
GUARD_RANGE = 0.5


def _weight_hit(wq: WeightQuant, weight: Callable[[], Optional[np.ndarray]]) -> bool:
    """Whether the guard zeroed the weight; ``weight()`` is read only when one of its scales is exactly 1.0 (a
    copy of every weight otherwise: 14 MB on MobileNetV2)."""
    scale = np.asarray(wq.scale, np.float64).ravel()
    if not np.any(scale == 1.0):
        return False
    w = weight()
    if w is None:
        return False
    w = np.asarray(w)
    if scale.size > 1 and wq.axis is not None and w.shape[wq.axis] == scale.size:
        peak = np.abs(np.moveaxis(w, wq.axis, 0).reshape(scale.size, -1)).max(axis=1)
    else:  # one scale, or one per group: judged on the whole tensor
        peak = np.full(scale.size, np.abs(w).max(), np.float64)
    return bool(np.any((scale == 1.0) & (peak > 0) & (peak < GUARD_RANGE)))


def guarded_tensors(layers: Mapping[str, LayerQuant], weight: Callable[[str], Optional[np.ndarray]],
                    observed: Mapping[str, Tuple[float, float]]) -> List[Dict[str, str]]:
    """``[{"layer", "tensor", "kind"}]`` for each weight (``weight(layer name)``: the weight as quantized, read
    only for a layer with a scale of exactly 1.0) and each activation (``observed``: its calibrator's observed
    range, by tensor) the scale guard zeroed, in layer order."""
    hits: List[Dict[str, str]] = []
    for name, lq in layers.items():
        aq = lq.activation
        lo, hi = observed.get(aq.tensor, (0.0, 0.0))
        if aq.scale == 1.0 and 0 < max(abs(lo), abs(hi)) < GUARD_RANGE / 2:
            hits.append({"layer": name, "tensor": aq.tensor, "kind": "activation"})
        if _weight_hit(lq.weight, lambda: weight(name)):
            hits.append({"layer": name, "tensor": lq.weight.tensor, "kind": "weight"})
    return hits


def warn_guarded(hits: List[Dict[str, str]], stacklevel: int = 3) -> None:
    """One warning for the model (``warnings.warn``, so it can be filtered) naming the tensors the guard hit."""
    if not hits:
        return
    names = ", ".join(f"{h['kind']} {h['tensor']!r} of layer {h['layer']}" for h in hits)
    layers = sorted({h["layer"] for h in hits})
    warnings.warn(f"values too small to quantize (scale below FLT_EPSILON, so AMCT's rule sets it to 1.0 and every "
                  f"code is zero): {names}. These layers will output zeros; keep them in float ({', '.join(layers)}: "
                  "--skip NAME, or quant_enable false in the config). The record lists them under 'scale_guard'.",
                  RuntimeWarning, stacklevel=stacklevel)


__all__ = ["GUARD_RANGE", "guarded_tensors", "warn_guarded"]
