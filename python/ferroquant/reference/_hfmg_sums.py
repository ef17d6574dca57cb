"""Specifies rust/ferroquant-core/src/histogram/hfmg/moments.rs: the HFMG loss of a candidate from exact prefix
sums of the counts and their first and second moments, O(2^bits) per candidate.

Everything is computed as in the Rust code, operation for operation: the integer moments exactly (wrapping
uint64 where every group's moments fit, Python integers otherwise), each converted to float64 once, the
per-destination-bin terms ``group + (left piece + right piece) / 3`` added to the tails in bin order
(``np.cumsum`` accumulates sequentially). The floats are therefore the same bits as the native ones.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant.reference.histogram import EPS

THIRD = 1.0 / 3.0
TWELFTH = 1.0 / 12.0
_U64 = np.uint64


def _quadratic(m0, m1, m2, e):
    """``M2 + 2e M1 + e^2 M0 + M0/12`` (scalars or arrays)."""
    return ((m2 + (2.0 * e) * m1) + (e * e) * m0) + m0 * TWELFTH


def _piece3(c: np.ndarray, u: np.ndarray, v: np.ndarray, inv: float) -> np.ndarray:
    a, b = u.astype(np.float64) * inv, v.astype(np.float64) * inv
    return np.where(c == 0.0, 0.0, c * (b * b * b - a * a * a))


class FastLoss:
    """Prefix sums of one histogram for the losses of one bit width (``None`` from :func:`fast_loss` when
    ``2^bits >= nbins``: direct summation then costs no more)."""

    def __init__(self, counts: np.ndarray, w: float, bits: int) -> None:
        n = counts.size
        c = counts.astype(object)
        k = np.arange(n, dtype=object)
        zero = np.zeros(1, dtype=object)
        self.exact = [np.concatenate([zero, np.cumsum(c * k**p)]) for p in range(3)]
        span = -(-n // (1 << bits)) + 1
        self.narrow = int(self.exact[0][-1]) * span * span < 1 << 62
        if self.narrow:
            self.lo = [(e % (1 << 64)).astype(_U64) for e in self.exact]
        self.cf = counts.astype(np.float64)
        self.n, self.w, self.bits = n, float(w), bits

    def _tails(self, l: int, r: int, e: float) -> float:
        p0, p1, p2 = self.exact
        left = right = 0.0
        if l > 0:
            s0, s1, s2 = int(p0[l]), int(p1[l]), int(p2[l])
            a = l - 1
            m1 = a * s0 - s1
            m2 = s2 - a * (s1 - m1)
            left = _quadratic(float(s0), float(m1), float(m2), e)
        if r + 1 < self.n:
            n, b = self.n, r + 1
            s0, s1, s2 = int(p0[n]) - int(p0[b]), int(p1[n]) - int(p1[b]), int(p2[n]) - int(p2[b])
            m1 = s1 - b * s0
            m2 = s2 - b * (s1 + m1)
            right = _quadratic(float(s0), float(m1), float(m2), e)
        return left + right

    def _groups(self, ka: np.ndarray, kb1: np.ndarray, a: np.ndarray, off: np.ndarray) -> np.ndarray:
        if self.narrow:
            p0, p1, p2 = self.lo
            r0, r1, r2 = p0[kb1] - p0[ka], p1[kb1] - p1[ka], p2[kb1] - p2[ka]
            au = a.astype(_U64)
            t1 = r1 - au * r0
            t2 = r2 - au * (r1 + t1)
            f0, f1, f2 = (v.view(np.int64).astype(np.float64) for v in (r0, t1, t2))
        else:
            p0, p1, p2 = self.exact
            r0, r1, r2 = p0[kb1] - p0[ka], p1[kb1] - p1[ka], p2[kb1] - p2[ka]
            ao = a.astype(object)
            t1 = r1 - ao * r0
            t2 = r2 - ao * (r1 + t1)
            f0, f1, f2 = (v.astype(np.float64) for v in (r0, t1, t2))
        return np.where(f0 == 0.0, 0.0, _quadratic(f0, f1, f2, off))

    def losses(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Specifies ``FastLoss::loss`` for candidates ``(left[i], right[i])``."""
        bits, w = self.bits, self.w
        dst = 1 << bits
        di = 2 * dst
        inv = 1.0 / di
        left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
        if left.size == 0:
            return np.zeros(0)
        nk = (right - left + 1)[:, None]
        l = left[:, None]
        j = np.arange(dst, dtype=np.int64)[None, :]
        b_lo, b_hi = j * nk, (j + 1) * nk
        q_lo, rem_lo, q_hi, rem_hi = b_lo >> bits, b_lo & (dst - 1), b_hi >> bits, b_hi & (dst - 1)
        ctr = b_lo + b_hi
        u0, u1 = 2 * b_lo - ctr, 2 * b_hi - ctr
        same = q_hi == q_lo
        lp = np.where(same | (rem_lo != 0), _piece3(self.cf[l + q_lo], u0, np.where(same, u1, (q_lo + 1) * di - ctr),
                                                     inv), 0.0)
        rp_on = ~same & (rem_hi != 0)
        rp = np.where(rp_on, _piece3(self.cf[np.where(rp_on, l + q_hi, 0)], q_hi * di - ctr, u1, inv), 0.0)
        ta = q_lo + (rem_lo != 0)
        g_on = ~same & (ta < q_hi)
        a = ctr >> (bits + 1)
        off = (a * di + dst - ctr).astype(np.float64) * inv
        g = np.where(g_on, self._groups(np.where(g_on, l + ta, 0), np.where(g_on, l + q_hi, 0), l + a, off), 0.0)
        terms = g + (lp + rp) * THIRD
        tails = [self._tails(int(a_), int(b_), float(dst + int(n_)) * inv)
                 for a_, b_, n_ in zip(left, right, nk[:, 0])]
        u = np.cumsum(np.concatenate([np.array(tails)[:, None], terms], axis=1), axis=1)[:, -1]
        dw = w * nk[:, 0].astype(np.float64) / float(dst)
        return np.where(np.isnan(dw) | (dw < EPS), 0.0, u * (w * w))


def fast_loss(counts: np.ndarray, w: float, bits: int) -> Optional[FastLoss]:
    return None if (1 << bits) >= counts.size else FastLoss(counts, w, bits)
