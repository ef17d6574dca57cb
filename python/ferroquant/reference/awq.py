"""Specifies rust/ferroquant-core/src/awq.rs: AWQ's scale search (llm-awq ``auto_scale``) and per-group clip
search (``auto_clip``) by output error, for a ``[K, N]`` weight and calibration rows ``x`` ``[R, K]``."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ferroquant.errors import ParameterError, ShapeError
from ferroquant.ops.groupwise import AwqResult, ClipSearch, GroupSpec
from ferroquant.reference._common import check_finite
from ferroquant.reference.groupwise import best_params, dequant_rows, quantize_params, ratios_of, rtn, weight_of

f32, f64 = np.float32, np.float64
MIN_SCALE = 1e-4


def mean_abs(x: np.ndarray) -> np.ndarray:
    """Mean |x| per channel, summed row by row in float64."""
    return np.cumsum(np.abs(x).astype(f64), axis=0)[-1] / x.shape[0]


def scales_for(m: np.ndarray, alpha: float) -> np.ndarray:
    """``max(m^alpha, 1e-4)`` normalized by ``sqrt(max * min)``, as float32 (``math.pow`` is the C ``pow`` the
    kernel's ``powf`` calls)."""
    s = np.array([max(math.pow(float(v), alpha), MIN_SCALE) for v in m], f64)
    return (s / math.sqrt(s.max() * s.min())).astype(f32)


def output_error(w: np.ndarray, x64: np.ndarray, sc: np.ndarray, spec: GroupSpec) -> float:
    """``‖X (W - Q(W·s)/s)‖²``."""
    ws = (w * sc[:, None]).astype(f32)
    q = rtn(ws, spec)
    eff = (dequant_rows(q.codes, q.scale, q.zero_point, spec.group_size) / sc[:, None]).astype(f32)
    y = x64 @ (w.astype(f64) - eff.astype(f64))
    return float((y * y).sum())


def awq(w: object, x: object, spec: GroupSpec = GroupSpec(), n_grid: int = 20,
        clip: Optional[ClipSearch] = ClipSearch()) -> AwqResult:
    """Specifies awq.rs::awq."""
    w = weight_of(w)
    x = np.asarray(x, f32)
    k, gs = w.shape[0], spec.group_size
    if x.shape[-1] != k:
        raise ShapeError(f"x must have K={k} values in its last axis, got shape {x.shape}")
    if n_grid < 1:
        raise ParameterError(f"n_grid must be >= 1, got {n_grid}")
    check_finite(x)
    x = x.reshape(-1, k)
    m, x64 = mean_abs(x), x.astype(f64)
    alphas = np.array([i / n_grid for i in range(n_grid)])
    losses = np.array([output_error(w, x64, scales_for(m, a), spec) for a in alphas]) / (x.shape[0] * w.shape[1])
    best = int(np.argmin(losses))
    sc = scales_for(m, alphas[best])
    ws = (w * sc[:, None]).astype(f32)
    if clip is None:
        return AwqResult(sc, float(alphas[best]), alphas, losses, rtn(ws, spec))
    ratios = ratios_of(clip)
    xs = x64 / sc.astype(f64)[None, :]

    def params(j: int, block: np.ndarray):
        xg = xs[:, j * gs:j * gs + block.shape[0]]
        gram = xg.T @ xg
        return best_params(block, spec, ratios, lambda d: np.einsum("an,an->n", d, gram @ d), clip.refine)

    return AwqResult(sc, float(alphas[best]), alphas, losses, quantize_params(ws, spec, params))

__all__ = ["awq"]
