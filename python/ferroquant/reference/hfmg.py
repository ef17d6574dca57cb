"""Specifies rust/ferroquant-core/src/histogram/hfmg/ (spec §4.2, §4.3).

Candidates are ranked by their loss from prefix sums (:mod:`._hfmg_sums`, the same bits as the native ones);
two candidates within ``tie_tol`` of each other are ranked by their direct losses (:mod:`._hfmg_direct`), so
every choice and the reported loss are those of the direct search. The comparisons are made in the same order
as in the Rust code (rank.rs), so the choices are the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ferroquant.errors import EmptyInputError
from ferroquant.ops.types import HfmgSearch, Histogram
from ferroquant.reference._common import qrange
from ferroquant.reference._hfmg_direct import (REFINE_ROUNDS, coarse_then_fine, degenerate, direct_losses,
                                                 search_direct)
from ferroquant.reference._hfmg_sums import fast_loss
from ferroquant.reference.histogram import Grid, _check_state
from ferroquant.reference.qparams import from_range

STEP_DIVISOR = 100_000
MIN_BIN_RATIO = 4


def hfmg_candidates(hist: Histogram) -> tuple[np.ndarray, np.ndarray]:
    """Specifies hfmg.rs::candidates: AMCT's trimming walk; (left, right) arrays."""
    return _candidates(hist.counts)


def _candidates(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def tie_tol(nbins: int) -> float:
    """Specifies rank.rs::tie_tol."""
    return float(8 * nbins + 1024) * float(np.finfo(np.float64).eps)


@dataclass
class _Score:
    pair: tuple
    fast: float
    exact: Optional[float] = None


class _Ranker:
    """Specifies rank.rs::Ranker."""

    def __init__(self, counts: np.ndarray, w: float, bits: int) -> None:
        self.counts, self.w, self.dst = counts, w, 1 << bits
        self.fast = fast_loss(counts, w, bits)
        self.tol = tie_tol(counts.size)

    def exact(self, s: _Score) -> float:
        if s.exact is None:
            s.exact = float(direct_losses(self.counts, self.w, [s.pair[0]], [s.pair[1]], self.dst)[0])
        return s.exact

    def score(self, pairs: list) -> list:
        a = np.array(pairs, np.int64).reshape(-1, 2)
        if self.fast is None:
            v = direct_losses(self.counts, self.w, a[:, 0], a[:, 1], self.dst)
            return [_Score(p, float(x), float(x)) for p, x in zip(pairs, v)]
        with np.errstate(all="ignore"):
            v = np.concatenate([self.fast.losses(a[s : s + 64, 0], a[s : s + 64, 1]) for s in range(0, len(a), 64)])
        return [_Score(p, float(x)) for p, x in zip(pairs, v)]

    def less(self, a: _Score, b: _Score) -> bool:
        if a.pair == b.pair:
            return False  # the same candidate: the same loss
        if a.exact is not None and b.exact is not None:
            return a.exact < b.exact
        x, y = a.fast, b.fast
        if math.isfinite(x) and math.isfinite(y) and abs(x - y) > self.tol * max(abs(x), abs(y)):
            return x < y
        return self.exact(a) < self.exact(b)

    def argmin(self, scores: list) -> Optional[tuple]:
        best = None
        for i, x in enumerate(scores):
            better = best is None or self.less(x, best[1])
            if better and not (math.isnan(x.fast) and math.isnan(self.exact(x))):
                best = (i, x)
        return best

    def scan(self, lo: int, hi: int, at, pair) -> Optional[_Score]:
        def pick(vals: list) -> tuple:
            scores = self.score([pair(b) for b in vals])
            i, s = self.argmin(scores) or (0, scores[0])
            return vals[i], s

        found = coarse_then_fine(lo, hi, at, pick, lambda b: not degenerate(self.w, *pair(b), self.dst))
        return None if found is None else found[1]

    def refine(self, start: _Score) -> tuple:
        n = self.counts.size
        best = start
        for rnd in range(REFINE_ROUNDS):
            moved = False
            l, r = best.pair
            up = self.scan(l, n - 1, r if rnd else None, lambda b: (l, b))
            if up is not None and self.less(up, best):
                best, moved = up, True
            l, r = best.pair
            down = self.scan(0, r, l if rnd else None, lambda b: (b, r))
            if down is not None and self.less(down, best):
                best, moved = down, True
            if not moved:
                break
        return best, best.pair != start.pair


def hfmg_losses(hist: Histogram, bits: int = 8) -> np.ndarray:
    """Specifies hfmg.rs::losses: the loss of every candidate, in candidate order (from prefix sums)."""
    qrange(bits)
    counts, lo, hi = _check_state(hist.counts, hist.lo, hist.hi), hist.lo, hist.hi
    left, right = _candidates(counts)
    r = _Ranker(counts, Grid(lo, hi, counts.size).width, bits)
    return np.array([s.fast for s in r.score(list(zip(left.tolist(), right.tolist())))], np.float64)


def edge_f32(lo: float, hi: float, n: int, k: int) -> np.float32:
    """``lo + k*w`` in float64, as float32 clamped into ``[lo, hi]``."""
    e = np.float32(Grid(lo, hi, n).edge(k))
    return min(max(e, np.float32(lo)), np.float32(hi))


def hfmg_search(hist: Histogram, bits: int = 8, symmetric: bool = False, refine: bool = True) -> HfmgSearch:
    """Specifies hfmg.rs::search."""
    qrange(bits)
    counts, lo, hi = _check_state(hist.counts, hist.lo, hist.hi), hist.lo, hist.hi
    if not counts.any():
        raise EmptyInputError("input is empty: histogram holds no counts")
    left, right = _candidates(counts)
    rk = _Ranker(counts, Grid(lo, hi, counts.size).width, bits)
    i, best = rk.argmin(rk.score(list(zip(left.tolist(), right.tolist()))))
    moved = False
    if refine:
        best, moved = rk.refine(best)
    loss = rk.exact(best)
    l, r = best.pair
    cmin, cmax = edge_f32(lo, hi, counts.size, l), edge_f32(lo, hi, counts.size, r + 1)
    s, z = from_range(cmin, cmax, bits, symmetric)
    return HfmgSearch(float(cmin), float(cmax), float(s), int(z), loss, i, moved, l, r)


def hfmg_search_many(hists: Sequence[Histogram], bits: int = 8, symmetric: bool = False,
                     refine: bool = True) -> List[HfmgSearch]:
    """Specifies hfmg.rs::search_many: one ``hfmg_search`` per histogram, in order."""
    return [hfmg_search(h, bits, symmetric, refine) for h in hists]


def _hfmg_search_direct(hist: Histogram, bits: int = 8, refine: bool = True):
    """The tests' oracle: ``(candidate index, left, right, loss, moved)`` of the direct search."""
    counts, lo, hi = _check_state(hist.counts, hist.lo, hist.hi), hist.lo, hist.hi
    left, right = _candidates(counts)
    return search_direct(counts, Grid(lo, hi, counts.size).width, bits, refine, left, right)

__all__ = ["hfmg_candidates", "hfmg_losses", "hfmg_search", "hfmg_search_many"]
