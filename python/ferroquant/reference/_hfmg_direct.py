"""Specifies rust/ferroquant-core/src/histogram/hfmg/mod.rs::loss and direct.rs: the HFMG loss of a candidate by
direct summation over the source bins (O(nbins) per candidate), and the direct search built on it alone.

Losses are summed over the source bins in order (``np.cumsum``, which accumulates sequentially), with the same
float64 operations as the Rust code, so the values are the same bits. The direct search is the definition the
prefix-sum search (:func:`ferroquant.reference.hfmg_search`) reproduces; it is kept as the tests' oracle.
"""

from __future__ import annotations

import numpy as np

from ferroquant.reference.histogram import EPS

REFINE_STRIDE = 16
REFINE_ROUNDS = 4
_BLOCK = 64  # candidates per vectorized block


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


def direct_losses(counts: np.ndarray, w: float, left, right, dst: int) -> np.ndarray:
    """Specifies hfmg.rs::loss for candidates ``(left[i], right[i])``."""
    a, b = np.asarray(left, np.int64).reshape(-1), np.asarray(right, np.int64).reshape(-1)
    if a.size == 0:
        return np.zeros(0)
    return np.concatenate([_block_losses(counts, w, a[s : s + _BLOCK], b[s : s + _BLOCK], dst)
                           for s in range(0, a.size, _BLOCK)])


def _pick(counts: np.ndarray, w: float, dst: int, pairs: list) -> tuple[int, float]:
    a = np.array(pairs, np.int64).reshape(-1, 2)
    ls = direct_losses(counts, w, a[:, 0], a[:, 1], dst)
    i = int(np.argmin(ls))
    return i, float(ls[i])


def degenerate(w: float, left: int, right: int, dst: int) -> bool:
    """Specifies hfmg/mod.rs::degenerate: destination bins narrower than FLT_EPSILON (or NaN), where the loss
    is 0 by definition; the refinement never moves to such a candidate."""
    dw = w * (right - left + 1) / dst
    return bool(np.isnan(dw) or dw < EPS)


def coarse_then_fine(lo: int, hi: int, at, pick, valid):  # noqa: ANN001,ANN201 - pick(values) -> (value, score)
    """One refinement scan of a bound over ``[lo, hi]``: every ``REFINE_STRIDE``-th value (and ``hi``) when
    ``at`` is None, then every value within a stride of the best (or of ``at``); ``pick`` ranks a list of the
    values that are ``valid``. None when no valid value is left."""
    def ranked(vals: list):  # noqa: ANN202
        vals = [b for b in vals if valid(b)]
        return pick(vals) if vals else None

    if at is None:
        coarse = list(range(lo, hi + 1, REFINE_STRIDE))
        if coarse[-1] != hi:
            coarse.append(hi)
        found = ranked(coarse)
        if found is None:
            return None
        at = found[0]
    return ranked(list(range(max(at - REFINE_STRIDE + 1, lo), min(at + REFINE_STRIDE - 1, hi) + 1)))


def _scan(counts: np.ndarray, w: float, dst: int, lo: int, hi: int, at, pair):  # noqa: ANN001,ANN202
    def pick(vals: list) -> tuple[int, float]:
        i, v = _pick(counts, w, dst, [pair(b) for b in vals])
        return vals[i], v

    return coarse_then_fine(lo, hi, at, pick, lambda b: not degenerate(w, *pair(b), dst))


def search_direct(counts: np.ndarray, w: float, bits: int, refine: bool,
                  left: np.ndarray, right: np.ndarray) -> tuple[int, int, int, float, bool]:
    """Specifies direct.rs::search_direct: ``(candidate index, left, right, loss, moved)`` with every loss
    summed directly (the search before the prefix sums; the oracle of the tests)."""
    dst = 1 << bits
    i, loss0 = _pick(counts, w, dst, list(zip(left.tolist(), right.tolist())))
    l0, r0 = int(left[i]), int(right[i])
    l, r, best = l0, r0, loss0
    if refine:
        n = counts.size
        for rnd in range(REFINE_ROUNDS):
            moved = False
            found = _scan(counts, w, dst, l, n - 1, r if rnd else None, lambda b: (l, b))
            if found is not None and found[1] < best:
                r, best, moved = found[0], found[1], True
            found = _scan(counts, w, dst, 0, r, l if rnd else None, lambda b: (b, r))
            if found is not None and found[1] < best:
                l, best, moved = found[0], found[1], True
            if not moved:
                break
    return i, l, r, best, (l, r) != (l0, r0)
