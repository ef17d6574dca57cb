"""Empirical bias correction (issue 15; Nagel et al. 2019, section 4.2), framework-neutral.

Quantizing a Conv's weight ``W`` to ``W_q`` shifts the mean of each output channel by
``E[W_q x - W x] = (W_q - W) E[x]`` over the data, where ``x`` is the input patch an output position reads
(zero padding included). :class:`~ferroquant.quant.moments.LayerMoments` streams the mean patch during
calibration (bounded memory: one patch per group); :func:`corrected_bias` subtracts the shift from the bias, so
the quantized layer's output has the float layer's mean on the calibration data.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant.errors import ShapeError


def output_mean_error(w: np.ndarray, w_deq: np.ndarray, mean_patch: np.ndarray, groups: int) -> np.ndarray:
    """``(W_q - W) E[x]`` per output channel (float64) for a weight ``[C_out, C_in/g, k...]`` and the mean patch
    per group ``[groups, C_in/g * prod(k)]``."""
    c_out = w.shape[0]
    dw = (np.asarray(w_deq, np.float64) - np.asarray(w, np.float64)).reshape(c_out, -1)
    m = np.asarray(mean_patch, np.float64)
    if groups < 1 or c_out % groups or m.shape != (groups, dw.shape[1]):
        raise ShapeError(f"mean patch of shape {m.shape} does not fit a weight {tuple(w.shape)} in {groups} groups")
    per = c_out // groups
    return np.einsum("gop,gp->go", dw.reshape(groups, per, -1), m).reshape(c_out)


def corrected_bias(b: Optional[np.ndarray], w: np.ndarray, w_deq: np.ndarray, mean_patch: np.ndarray,
                   groups: int) -> np.ndarray:
    """``b - (W_q - W) E[x]`` (a zero bias when ``b`` is None), in ``w``'s dtype."""
    err = output_mean_error(w, w_deq, mean_patch, groups)
    base = np.zeros(w.shape[0], np.float64) if b is None else np.asarray(b, np.float64).reshape(-1)
    if base.shape != err.shape:
        raise ShapeError(f"bias of shape {np.shape(b)} for {w.shape[0]} output channels")
    return (base - err).astype(w.dtype)


__all__ = ["corrected_bias", "output_mean_error"]
