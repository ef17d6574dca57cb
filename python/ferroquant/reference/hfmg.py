"""Specifies rust/ferroquant-core/src/histogram/hfmg.rs (spec §4.2, §4.3).

Losses are summed over the source bins in order (``np.cumsum``, which accumulates sequentially), with the same
float64 operations as the Rust code, so the chosen candidate is the same.
"""

from __future__ import annotations

import numpy as np

from ferroquant.errors import EmptyInputError
from ferroquant.reference._common import qrange
from ferroquant.reference.histogram import EPS, Grid, _check_state
from ferroquant.reference.qparams import qparams_from_range

STEP_DIVISOR = 100_000
MIN_BIN_RATIO = 4
_BLOCK = 64  # candidates per vectorized block


def hfmg_candidates(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Specifies hfmg.rs::candidates: AMCT's trimming walk; (left, right) arrays."""
    c = [int(v) for v in np.asarray(counts, np.uint64)]
    n = len(c)
    step = max(-(-sum(c) // STEP_DIVISOR), 1)
    min_bins = -(-n // MIN_BIN_RATIO)
    left, right, out = 0, n - 1, []
    while right - left > min_bins:
        tl, tr, ls, rs = left, right, 0, 0
        while tl < tr and ls < step:
            ls += c[tl]
            tl += 1
        while tl < tr and rs < step:
            rs += c[tr]
            tr -= 1
        if right - tr >= tl - left:
            right = tr
        else:
            left = tl
        out.append((left, right))
    if not out:
        out.append((0, n - 1))
    a = np.array(out, np.int64)
    return a[:, 0].copy(), a[:, 1].copy()


def _norm(rho: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return rho * (v * v * v - u * u * u) / 3.0


def _block_losses(counts: np.ndarray, w: float, left: np.ndarray, right: np.ndarray, dst: int) -> np.ndarray:
    dw = (w * (right - left + 1) / dst)[:, None]
    last = float(dst - 1)
    k = np.arange(counts.size, dtype=np.int64)[None, :]
    beg = (k - left[:, None]).astype(np.float64) * w
    end = beg + w
    with np.errstate(all="ignore"):  # w == 0 only when dw == 0 too: the loss is then 0
        rho = (counts.astype(np.float64) / w)[None, :]
        d0 = np.clip(beg / dw, 0.0, last).astype(np.int64)
        d1 = np.clip(end / dw, 0.0, last).astype(np.int64)
        c0 = (d0 + 0.5) * dw
        c1 = (d1 + 0.5) * dw
        half = dw / 2.0
        mid_norm = dw * dw * dw / 12.0
        same = _norm(rho, beg - c0, end - c0)
        mid = (d1 - d0 - 1).astype(np.float64)
        diff = _norm(rho, beg - c0, half) + mid * rho * mid_norm + _norm(rho, -half, end - c1)
        terms = np.where(d0 == d1, same, diff)
    total = np.cumsum(terms, axis=1)[:, -1]
    return np.where(dw[:, 0] >= EPS, total, 0.0)


def hfmg_losses(counts: np.ndarray, lo: float, hi: float, bits: int = 8) -> np.ndarray:
    """Specifies hfmg.rs::losses: the L2 loss of every candidate, in candidate order."""
    qrange(bits)
    counts = _check_state(counts, lo, hi)
    w = Grid(lo, hi, counts.size).width
    left, right = hfmg_candidates(counts)
    out = [_block_losses(counts, w, left[s : s + _BLOCK], right[s : s + _BLOCK], 1 << bits) for s in range(0, left.size, _BLOCK)]
    return np.concatenate(out)


def edge_f32(lo: float, hi: float, n: int, k: int) -> np.float32:
    """``lo + k*w`` in float64, as float32 clamped into ``[lo, hi]``."""
    e = np.float32(Grid(lo, hi, n).edge(k))
    return min(max(e, np.float32(lo)), np.float32(hi))


REFINE_STRIDE = 16
REFINE_ROUNDS = 4


def _pair_losses(counts: np.ndarray, w: float, pairs: list, dst: int) -> np.ndarray:
    a = np.array(pairs, np.int64).reshape(-1, 2)
    return np.concatenate([_block_losses(counts, w, a[s : s + _BLOCK, 0], a[s : s + _BLOCK, 1], dst)
                           for s in range(0, len(a), _BLOCK)])


def _scan(counts: np.ndarray, w: float, dst: int, lo: int, hi: int, at, pair) -> tuple[int, float]:
    """Specifies hfmg.rs::scan: wide (``at`` None: every REFINE_STRIDE-th value and hi, then within a stride of
    the winner) or local (within a stride of ``at``)."""

    def pick(vals: list) -> tuple[int, float]:
        ls = _pair_losses(counts, w, [pair(b) for b in vals], dst)
        i = int(np.argmin(ls))
        return vals[i], float(ls[i])

    if at is None:
        coarse = list(range(lo, hi + 1, REFINE_STRIDE))
        if coarse[-1] != hi:
            coarse.append(hi)
        at, _ = pick(coarse)
    return pick(list(range(max(at - REFINE_STRIDE + 1, lo), min(at + REFINE_STRIDE - 1, hi) + 1)))


def hfmg_refine(counts: np.ndarray, w: float, dst: int, l0: int, r0: int, loss0: float) -> tuple[int, int, float, bool]:
    """Specifies hfmg.rs::refine: coordinate scans of the upper then the lower bound, strict improvements only."""
    n = counts.size
    l, r, best = l0, r0, loss0
    for rnd in range(REFINE_ROUNDS):
        moved = False
        rr, lr = _scan(counts, w, dst, l, n - 1, r if rnd else None, lambda b: (l, b))
        if lr < best:
            r, best, moved = rr, lr, True
        ll, lloss = _scan(counts, w, dst, 0, r, l if rnd else None, lambda b: (b, r))
        if lloss < best:
            l, best, moved = ll, lloss, True
        if not moved:
            break
    return l, r, best, (l, r) != (l0, r0)


def hfmg_search(
    counts: np.ndarray, lo: float, hi: float, bits: int = 8, symmetric: bool = False, refine: bool = True
) -> tuple[float, float, float, int, float, int, bool]:
    """Specifies hfmg.rs::search: (clip_min, clip_max, scale, zero_point, loss, candidate index, refined)."""
    qrange(bits)
    counts = _check_state(counts, lo, hi)
    if not counts.any():
        raise EmptyInputError("input is empty: histogram holds no counts")
    losses = hfmg_losses(counts, lo, hi, bits)
    i = int(np.argmin(losses))
    left, right = hfmg_candidates(counts)
    l, r, loss, moved = int(left[i]), int(right[i]), float(losses[i]), False
    if refine:
        w = Grid(lo, hi, counts.size).width
        l, r, loss, moved = hfmg_refine(counts, w, 1 << bits, l, r, loss)
    cmin, cmax = edge_f32(lo, hi, counts.size, l), edge_f32(lo, hi, counts.size, r + 1)
    s, z = qparams_from_range(cmin, cmax, bits, symmetric)
    return float(cmin), float(cmax), float(s), int(z), loss, i, moved
