"""Specifies rust/ferroquant-core/src/adaround.rs: learned rounding (AdaRound) of a ``[rows, p]`` weight on its
grid, given the Gram matrix of the layer's input patches per group, written as the algorithm reads: every
channel at once, in float64 (the kernel runs fixed chunks of channels in parallel)."""

from __future__ import annotations

import numpy as np

from ferroquant._arrays import as_f32, check_bits
from ferroquant.errors import EmptyInputError, NonFiniteError, ParameterError, ScaleError, ShapeError, ZeroPointError
from ferroquant.ops.types import AdaRoundOptions, AdaRoundResult
from ferroquant.reference._common import check_finite

ZETA, GAMMA = 1.1, -0.1
B1, B2, EPS = 0.9, 0.999, 1e-8
f32, f64 = np.float32, np.float64


def beta_at(t: int, o: AdaRoundOptions):  # noqa: ANN201 - float or None
    """Specifies adaround.rs::beta_at: None while the regularizer is off, then AIMET's cosine from
    ``beta_start`` to ``beta_end``."""
    warm = o.warm_start * o.iterations
    if t < warm:
        return None
    rel = (t - warm) / (o.iterations - warm)
    return o.beta_end + 0.5 * (o.beta_start - o.beta_end) * (1.0 + np.cos(rel * np.pi))


def _rectified(v: np.ndarray):  # noqa: ANN202
    s = 1.0 / (1.0 + np.exp(-v))
    h = s * (ZETA - GAMMA) + GAMMA
    inside = (h > 0) & (h < 1)
    return np.clip(h, 0.0, 1.0), np.where(inside, s * (1.0 - s) * (ZETA - GAMMA), 0.0)


def _check(w, scale, zero_point, gram, bits, o):  # noqa: ANN001,ANN202
    w = as_f32(w, "w", allow_empty=True)
    if w.ndim != 2 or w.size == 0:
        if w.size == 0:
            raise EmptyInputError("input is empty: weight")
        raise ShapeError(f"w must be [rows, p], got shape {w.shape}")
    rows, p = w.shape
    s = np.broadcast_to(np.asarray(scale, f32).reshape(-1), (rows,)) if np.size(scale) == 1 else \
        np.asarray(scale, f32).reshape(-1)
    z = np.broadcast_to(np.asarray(zero_point).reshape(-1), (rows,)) if np.size(zero_point) == 1 else \
        np.asarray(zero_point).reshape(-1)
    g = np.asarray(gram, f64)
    if s.size != rows or z.size != rows:
        raise ShapeError(f"scale and zero_point need one value per row ({rows}), got {s.size} and {z.size}")
    if g.ndim != 3 or g.shape[1:] != (p, p) or g.shape[0] < 1 or rows % g.shape[0]:
        raise ShapeError(f"gram must be [groups, {p}, {p}] with groups dividing {rows}, got {g.shape}")
    check_finite(w)
    if not np.all(np.isfinite(g)):
        raise NonFiniteError(f"gram contains a non-finite value at flat index {int(np.argmax(~np.isfinite(g)))}")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ScaleError(f"invalid scale at index {int(np.argmax(~(np.isfinite(s) & (s > 0))))}: must be > 0")
    b = check_bits(bits)
    qmin, qmax = -(1 << (b - 1)), (1 << (b - 1)) - 1
    if np.any((z < qmin) | (z > qmax)):
        raise ZeroPointError(f"zero point outside [{qmin}, {qmax}]")
    if not (o.reg_weight >= 0 and o.beta_start > 0 and o.beta_end > 0 and 0 <= o.warm_start < 1 and o.lr > 0):
        raise ParameterError(f"invalid AdaRound options {o}")
    return w, s, z.astype(np.int64), g, qmin, qmax


def _recon(gram_rows: np.ndarray, q: np.ndarray, c: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``s_o² eᵀ G e`` per channel."""
    e = q - c
    return s.astype(f64) ** 2 * np.einsum("ri,rij,rj->r", e, gram_rows, e)


def _optimize(gn: np.ndarray, q, base, free, o: AdaRoundOptions) -> np.ndarray:  # noqa: ANN001
    """Adam on ``v`` for every channel; ``gn`` ``[rows, p, p]`` the normalized Gram of each row's group. The
    error is ``(frac - f0) - (h(v) - h(v0))``: exactly zero where ``v`` has not moved (see adaround.rs)."""
    f0 = np.clip(q - base, 1e-6, 1 - 1e-6)
    v = np.where(free, -np.log((ZETA - GAMMA) / (f0 - GAMMA) - 1.0), 0.0)
    e0 = np.where(free, q - base - f0, q - base)
    h0 = np.where(free, _rectified(v)[0], 0.0)
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    for t in range(o.iterations):
        h, dh = _rectified(v)
        h, dh = np.where(free, h, 0.0), np.where(free, dh, 0.0)
        e = e0 - (h - h0)
        grad_h = -2.0 * np.einsum("rj,rji->ri", e, gn)
        beta = beta_at(t, o)
        if beta is not None:
            a = 2.0 * h - 1.0
            grad_h = grad_h - 2.0 * o.reg_weight * beta * np.abs(a) ** (beta - 1.0) * np.sign(a)
        grad = grad_h * dh
        m1 = B1 * m1 + (1 - B1) * grad
        m2 = B2 * m2 + (1 - B2) * grad * grad
        step = o.lr * (m1 / (1 - B1 ** (t + 1))) / (np.sqrt(m2 / (1 - B2 ** (t + 1))) + EPS)
        v = np.where(free, v - step, v)
    return v


def adaround(w, scale, zero_point, gram, bits: int = 8, options: AdaRoundOptions = AdaRoundOptions()
             ) -> AdaRoundResult:
    """Specifies adaround.rs::adaround for a weight ``[rows, p]``, per-row ``scale`` and ``zero_point``, the
    Gram ``[groups, p, p]`` of the input patches of each group (rows ``o`` read group ``o // (rows / groups)``)
    and signed ``bits`` codes."""
    w, s, z, g, qmin, qmax = _check(w, scale, zero_point, gram, bits, options)
    rows, p = w.shape
    r = w / s[:, None]  # f32
    q = r.astype(f64) + z[:, None]
    lo = np.floor(r).astype(f64) + z[:, None]
    free = (lo >= qmin) & (lo < qmax)
    base = np.where(free, lo, np.clip(lo, qmin, qmax))
    nearest = np.clip(np.rint(r).astype(f64) + z[:, None], qmin, qmax)
    g_rows = np.repeat(g, rows // g.shape[0], axis=0)
    per_nearest = _recon(g_rows, q, nearest, s)
    loss_nearest = float(np.sum(per_nearest))
    trace = np.trace(g_rows, axis1=1, axis2=2)
    live = trace > 0
    if options.iterations == 0 or not live.any():
        return AdaRoundResult(nearest.astype(np.int32), np.zeros((rows, p)), loss_nearest, loss_nearest)
    gn = g_rows * (p / np.where(live, trace, 1.0))[:, None, None]
    v = _optimize(gn, q, base, free & live[:, None], options)
    codes = np.where(live[:, None], base + (free & (v >= 0)), nearest)
    worse = _recon(g_rows, q, codes, s) > per_nearest  # those channels keep round-to-nearest
    codes = np.where(worse[:, None], nearest, codes)
    v = np.where(live[:, None], v, 0.0)
    return AdaRoundResult(codes.astype(np.int32), v, loss_nearest, float(np.sum(_recon(g_rows, q, codes, s))))


__all__ = ["adaround"]
