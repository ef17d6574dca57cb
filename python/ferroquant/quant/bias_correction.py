"""Empirical bias correction (issue 15; Nagel et al. 2019, section 4.2), framework-neutral.

Quantizing a Conv's weight ``W`` to ``W_q`` shifts the mean of each output channel by
``E[W_q x - W x] = (W_q - W) E[x]`` over the data, where ``x`` is the input patch an output position reads
(zero padding included). :class:`~ferroquant.quant.moments.LayerMoments` streams the mean patch during
calibration (bounded memory: one patch per group); :func:`corrected_bias` subtracts the shift from the bias, so
the quantized layer's output has the float layer's mean on the calibration data.

A layer whose shifts are small is not corrected: on MobileNetV2 the 1x1 expansions, whose inputs (the residual
stream) have close to no mean, shift by a few 1e-5, less than their estimates vary from one calibration batch to
another, and "correcting" them makes their mean error on other photos 1.4-2.4x larger
(``bench/results/bias_correction.md``). :func:`shift_test` compares the shifts with that variation (from
independent folds of the calibration data), and a layer is corrected only when its mean squared shift is at least
:data:`MIN_SHIFT_SNR` times the mean variance of its estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from ferroquant.errors import ShapeError
from ferroquant.quant.moments import LayerMoments

#: a layer is corrected when its mean squared shift is at least this many times the mean variance of the
#: estimate (about 1-1.5 for a layer with no shift: the statistic is a mean of F(1, folds - 1) variables)
MIN_SHIFT_SNR = 4.0
#: the fewest independent estimates (folds of batches, else of samples) the test is made on
MIN_FOLDS = 3


def output_mean_error(w: np.ndarray, w_deq: np.ndarray, mean_patch: np.ndarray, groups: int) -> np.ndarray:
    """``(W_q - W) E[x]`` per output channel (float64) for a weight ``[C_out, C_in/g, k...]`` and the mean patch
    per group ``[groups, C_in/g * prod(k)]``; or, for a stack of mean patches ``[F, groups, ...]``, ``[F, C_out]``
    (one product for all)."""
    c_out = w.shape[0]
    dw = (np.asarray(w_deq, np.float64) - np.asarray(w, np.float64)).reshape(c_out, -1)
    m = np.asarray(mean_patch, np.float64)
    if groups < 1 or c_out % groups or m.ndim not in (2, 3) or m.shape[-2:] != (groups, dw.shape[1]):
        raise ShapeError(f"mean patch of shape {m.shape} does not fit a weight {tuple(w.shape)} in {groups} groups")
    per = c_out // groups
    return np.einsum("gop,...gp->...go", dw.reshape(groups, per, -1), m).reshape(*m.shape[:-2], c_out)


def subtract_shift(b: Optional[np.ndarray], shift: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``b - shift`` (a zero bias when ``b`` is None), in ``dtype``."""
    base = np.zeros(shift.shape, np.float64) if b is None else np.asarray(b, np.float64).reshape(-1)
    if base.shape != shift.shape:
        raise ShapeError(f"bias of shape {np.shape(b)} for {shift.shape[0]} output channels")
    return (base - shift).astype(dtype)


def corrected_bias(b: Optional[np.ndarray], w: np.ndarray, w_deq: np.ndarray, mean_patch: np.ndarray,
                   groups: int) -> np.ndarray:
    """``b - (W_q - W) E[x]`` (a zero bias when ``b`` is None), in ``w``'s dtype."""
    return subtract_shift(b, output_mean_error(w, w_deq, mean_patch, groups), w.dtype)


@dataclass(frozen=True)
class ShiftTest:
    """Whether a layer's output shifts stand out from the noise of their estimate."""

    snr: float  # mean over channels of shift² over the mean variance of its estimate
    folds: int  # independent estimates the variance comes from
    unit: str  # what a fold is made of: "batch", or "sample" when fewer than MIN_FOLDS batches were seen
    shift: np.ndarray = field(repr=False, compare=False)  # (W_q - W) E[x] per output channel, float64

    @property
    def corrects(self) -> bool:
        return self.folds >= MIN_FOLDS and self.snr >= MIN_SHIFT_SNR

    def to_json(self) -> Dict[str, Any]:
        return {"snr": round(self.snr, 3) if np.isfinite(self.snr) else None, "folds": self.folds,
                "unit": self.unit, "corrected": self.corrects}


def shift_test(w: np.ndarray, w_deq: np.ndarray, moments: LayerMoments) -> ShiftTest:
    """The shifts ``(W_q - W) E[x]`` over the variance of their estimate, from the fold means of ``moments``
    (each fold an independent estimate, weighted by its count): ``var_j = F/(F-1) Σ_f (n_f/N)² (e_fj - e_j)²``."""
    means, counts, unit = moments.fold_means()
    shifts = output_mean_error(w, w_deq, np.concatenate([moments.mean()[None], means]), moments.spec.groups)
    shift, folds = shifts[0], shifts[1:]
    f = len(counts)
    if f < 2:
        return ShiftTest(float("nan"), f, unit, shift)
    share = counts / counts.sum()
    var = f / (f - 1) * np.einsum("f,fc->c", share ** 2, (folds - shift) ** 2)
    signal, noise = float(np.mean(shift ** 2)), float(np.mean(var))
    return ShiftTest(signal / noise if noise > 0 else (float("inf") if signal > 0 else 0.0), f, unit, shift)


__all__ = ["MIN_FOLDS", "MIN_SHIFT_SNR", "ShiftTest", "corrected_bias", "output_mean_error", "shift_test",
           "subtract_shift"]
