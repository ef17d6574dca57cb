"""Specifies rust/ferroquant-core/src/nuq.rs (spec §2, decision 3)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant._arrays import int_param, opt_axis
from ferroquant.errors import ParameterError
from ferroquant.ops.types import NuqResult
from ferroquant.reference._common import FLT_EPSILON, broadcast_shape
from ferroquant.reference.affine import quantize
from ferroquant.reference.qparams import qparams_from_data

GRID = 256
QMIN = -128
FIXED_ONE = 16777216.0  # 2**24
T_LO, T_HI = np.float32(-129.0), np.float32(128.0)


def _codes_and_t(w: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.clip(w / s, T_LO, T_HI)
    k = (np.clip(np.rint(t), -128, 127).astype(np.int64) - QMIN).reshape(-1)
    return k, t


def code_stats(w: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Counts and fixed-point sums (``floor(t * 2^24)``, exact integers) of ``t = x/s`` per grid code."""
    k, t = _codes_and_t(w, s)
    fixed = np.floor(t.reshape(-1).astype(np.float64) * FIXED_ONE).astype(np.int64)
    h = np.bincount(k, minlength=GRID).astype(np.int64)
    order = np.argsort(k, kind="stable")
    sums = np.zeros(GRID, np.int64)
    present = np.flatnonzero(h)
    starts = np.concatenate([[0], np.cumsum(h[present])[:-1]])
    sums[present] = np.add.reduceat(fixed[order], starts)
    return h, sums, bool(np.any(w == 0))


def select_levels(h: np.ndarray, s: np.ndarray, k: int, keep_zero: bool) -> tuple[list, list]:
    """Specifies nuq.rs::select_levels: the exact DP over present codes."""
    present = np.flatnonzero(h)
    p = present.size
    mapping: list = [None] * GRID
    if p <= k:
        for i in present:
            mapping[i] = int(i) + QMIN
        return mapping, [int(i) + QMIN for i in present]
    pw = np.concatenate([[0], np.cumsum(h[present])]).astype(np.int64)
    ps = np.concatenate([[0], np.cumsum(s[present])]).astype(np.int64)
    zero_at = None
    if keep_zero:
        hit = np.flatnonzero(present + QMIN == 0)
        zero_at = int(hit[0]) if hit.size else None

    def seg(a: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
        n = (pw[b + 1] - pw[a]).astype(np.float64)
        sm = (ps[b + 1] - ps[a]).astype(np.float64) / FIXED_ONE
        lvl = np.clip(np.rint(sm / n), -128.0, 127.0)
        if zero_at is not None:
            lvl = np.where((a <= zero_at) & (zero_at <= b), 0.0, lvl)
        return lvl, lvl * lvl * n - 2.0 * lvl * sm

    d = np.full((k, p), np.inf)
    arg = np.zeros((k, p), np.int64)
    for i in range(p):
        d[0, i] = seg(np.array([0]), i)[1][0]
    for j in range(1, k):
        for i in range(j, p):
            m = np.arange(j, i + 1)
            c = d[j - 1, m - 1] + seg(m, i)[1]
            best = int(np.argmin(c))
            d[j, i] = c[best]
            arg[j, i] = m[best]
    levels = []
    end = p - 1
    for j in range(k - 1, -1, -1):
        start = 0 if j == 0 else int(arg[j, end])
        lvl = int(seg(np.array([start]), end)[0][0])
        for i in present[start : end + 1]:
            mapping[i] = lvl
        levels.append(lvl)
        end = start - 1
    levels = sorted(set(levels))
    return mapping, levels


def _full_table(mapping: list, levels: list) -> np.ndarray:
    table = np.zeros(GRID, np.int64)
    for i in range(GRID):
        if mapping[i] is not None:
            table[i] = mapping[i]
        else:
            code = i + QMIN
            table[i] = min(levels, key=lambda v: (abs(v - code), v)) if levels else 0
    return table


def _round(w: np.ndarray, s: np.ndarray, k: int):
    h, sums, zero = code_stats(w, s)
    mapping, levels = select_levels(h, sums, k, zero)
    table = _full_table(mapping, levels)
    codes, _ = _codes_and_t(w, s)
    lv = table[codes].reshape(w.shape).astype(np.float64)
    s64 = s.astype(np.float64)
    err = float(np.sum((w.astype(np.float64) - lv * s64) ** 2)) / w.size
    axes = tuple(i for i in range(w.ndim) if s.shape[i] == 1)
    xl = np.sum(w.astype(np.float64) * lv, axis=axes, keepdims=True)
    ll = np.sum(lv * lv, axis=axes, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        refit = np.where(ll > 0, xl / np.where(ll > 0, ll, 1.0), s64).astype(np.float32)
    refit = np.where(np.isfinite(refit) & (refit >= FLT_EPSILON), refit, s)
    return table, levels, err, refit


def nuq(w, num_steps: int = 32, num_of_iteration: int = 1, channel_wise: bool = True, axis: int = 0) -> NuqResult:
    """Specifies nuq.rs::nuq (per channel of ``axis``, or per tensor when not ``channel_wise``)."""
    num_steps = int_param(num_steps, "num_steps", 0, 1 << 32)
    num_of_iteration = int_param(num_of_iteration, "num_of_iteration", 0, 1 << 32)
    axis = opt_axis(axis) if channel_wise else None
    if not 2 <= num_steps <= GRID:
        raise ParameterError(f"num_steps must be in [2, 256], got {num_steps}")
    if not 0 <= num_of_iteration <= 5:
        raise ParameterError(f"num_of_iteration must be in [0, 5], got {num_of_iteration}")
    w = np.asarray(w, np.float32)
    s0, _ = qparams_from_data(w, axis, 8, True)
    shape = broadcast_shape(w, axis)
    s = s0.reshape(shape)
    best = (*_round(w, s, num_steps), s, 0)
    refit = best[3]
    for it in range(1, num_of_iteration + 1):
        r = _round(w, refit, num_steps)
        if r[2] < best[2]:
            best = (*r, refit, it)
        refit = r[3]
    table, levels, err, _, s, it = best
    q = quantize(w, s.reshape(-1), 0, 8, axis)
    codes = table[q.astype(np.int64) - QMIN].astype(np.int8)
    fake = codes.astype(np.float32) * s
    return NuqResult(np.array(levels, np.int32), s.reshape(-1).astype(np.float32), codes, fake, float(err), int(it),
                     num_steps)

__all__ = ["nuq", "select_levels"]
