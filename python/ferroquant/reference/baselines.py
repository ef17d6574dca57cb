"""Specifies rust/ferroquant-core/src/histogram/baselines.rs: percentile and KL (TensorRT entropy) clips on the
HFMG histogram, and the |x| fold they share. See the Rust module notes for the choices."""

from __future__ import annotations

import numpy as np

from ferroquant.errors import EmptyInputError, ParameterError
from ferroquant.reference._common import qrange
from ferroquant.reference.histogram import Grid, _check_state
from ferroquant.ops.types import Clip, Histogram
from ferroquant.reference.qparams import from_range

KL_EPS = 1e-4


def _clip(lo_c: float, hi_c: float, lo: float, hi: float, bits: int, symmetric: bool, loss=None) -> Clip:
    f32 = np.float32
    cmin = min(max(f32(lo_c), f32(lo)), f32(hi))
    cmax = min(max(f32(hi_c), f32(lo)), f32(hi))
    s, z = from_range(cmin, cmax, bits, symmetric)
    return Clip(float(cmin), float(cmax), float(s), int(z), None if loss is None else float(loss))


def _add_intervals(counts: np.ndarray, width: float, u: np.ndarray, v: np.ndarray, c: np.ndarray) -> None:
    last = float(counts.size - 1)
    i = np.clip(u / width, 0.0, last).astype(np.int64)
    j = np.clip(v / width, 0.0, last).astype(np.int64)
    e = (i + 1).astype(np.float64) * width
    with np.errstate(all="ignore"):
        ci = np.floor(c.astype(np.float64) * ((e - u) / (v - u)))
    ci = np.minimum(np.clip(np.nan_to_num(ci), 0.0, 1.8e19).astype(np.uint64), c)
    ci = np.where((i == j) | (v <= u), c, ci)
    np.add.at(counts, i, ci)
    np.add.at(counts, j, c - ci)


def fold_abs(counts: np.ndarray, lo: float, hi: float) -> tuple[float, float, np.ndarray]:
    """Specifies baselines.rs::fold_abs: ``(start, width, counts)`` of the |x| histogram."""
    counts = np.asarray(counts, np.uint64)
    g = Grid(lo, hi, counts.size)
    if np.float32(lo) >= 0:
        return g.lo, g.width, counts.copy()
    if np.float32(hi) <= 0:
        return -float(np.float32(hi)), g.width, counts[::-1].copy()
    out = np.zeros(counts.size, np.uint64)
    k = np.flatnonzero(counts)
    c = counts[k]
    a = g.edge(k)
    b = a + g.width
    pos, neg = a >= 0.0, b <= 0.0
    mid = ~pos & ~neg
    _add_intervals(out, g.width, a[pos], b[pos], c[pos])
    _add_intervals(out, g.width, -b[neg], -a[neg], c[neg])
    cn = np.minimum(np.floor(c[mid].astype(np.float64) * (-a[mid] / g.width)).astype(np.uint64), c[mid])
    zeros = np.zeros(int(mid.sum()))
    _add_intervals(out, g.width, zeros, -a[mid], cn)
    _add_intervals(out, g.width, zeros, b[mid], c[mid] - cn)
    return 0.0, g.width, out


def _first_reaching(counts: np.ndarray, target: float) -> int:
    cum = np.cumsum(counts, dtype=np.uint64).astype(np.float64)
    hit = np.flatnonzero(cum >= target)
    return int(hit[0]) if hit.size else counts.size - 1


def percentile_clip(hist: Histogram, percentile: float = 0.99999, bits: int = 8, symmetric: bool = True) -> Clip:
    """Specifies baselines.rs::percentile (``percentile`` a fraction in (0, 1])."""
    qrange(bits)
    if not 0.0 < percentile <= 1.0:
        raise ParameterError(f"invalid parameter percentile: must be a fraction in (0, 1], got {percentile}")
    counts, lo, hi = _check_state(hist.counts, hist.lo, hist.hi), hist.lo, hist.hi
    if not counts.any():
        raise EmptyInputError("input is empty: histogram holds no counts")
    g = Grid(lo, hi, counts.size)
    if g.constant:
        return _clip(lo, hi, lo, hi, bits, symmetric)
    total = float(counts.sum(dtype=np.uint64))
    if symmetric:
        start, width, a = fold_abs(counts, lo, hi)
        j = _first_reaching(a, percentile * total)
        t = np.float32(start + (j + 1) * width)
        return _clip(-t, t, lo, hi, bits, symmetric)
    cut = (1.0 - percentile) / 2.0
    left = _first_reaching(counts, cut * total)
    right = _first_reaching(counts, (1.0 - cut) * total)
    return _clip(np.float32(g.edge(left)), np.float32(g.edge(right + 1)), lo, hi, bits, symmetric)


def _smooth(p: np.ndarray):
    zeros = int((p == 0).sum())
    nonzeros = p.size - zeros
    if nonzeros == 0:
        return None
    eps1 = KL_EPS * zeros / nonzeros
    if eps1 >= 1.0:
        return None
    out = np.where(p == 0, KL_EPS, p - eps1)
    return None if (out <= 0).any() else out


def kl_candidate(counts: np.ndarray, i: int, nq: int, outliers: int) -> float:
    """Specifies baselines.rs::kl_candidate: KL(P||Q) of threshold bin ``i``."""
    sliced = counts[:i]
    p = sliced.astype(np.float64)
    p[i - 1] = float(int(sliced[i - 1]) + outliers)
    merged = i // nq
    q = np.zeros(i)
    for b in range(nq):
        s = b * merged
        e = i if b == nq - 1 else s + merged
        norm = int((p[s:e] != 0).sum())
        if norm:
            v = float(sliced[s:e].sum(dtype=np.uint64)) / norm
            q[s:e] = np.where(p[s:e] != 0, v, 0.0)
    p, q = _smooth(p), _smooth(q)
    if p is None or q is None:
        return float("inf")
    pk, qk = p / np.cumsum(p)[-1], q / np.cumsum(q)[-1]
    return float(np.cumsum(pk * np.log(pk / qk))[-1])


KL_MAX_BINS = 1 << 13


def kl_divergences(hist: Histogram, num_quantized_bins: int = 128) -> np.ndarray:
    """Specifies baselines.rs::kl_divergences (on the folded |x| histogram), candidates ``nq..=n``."""
    counts, lo, hi = _check_state(hist.counts, hist.lo, hist.hi), hist.lo, hist.hi
    _, _, a = fold_abs(counts, lo, hi)
    n, nq = a.size, num_quantized_bins
    if not 2 <= nq <= n:
        raise ParameterError(f"invalid parameter num_quantized_bins: must be in [2, nbins = {n}], got {nq}")
    if n > KL_MAX_BINS:
        raise ParameterError(f"invalid parameter nbins: the KL search takes at most {KL_MAX_BINS} bins (it is "
                             f"quadratic), got {n}")
    suffix = np.concatenate([np.cumsum(a[::-1], dtype=np.uint64)[::-1], [0]]).astype(np.uint64)
    return np.array([kl_candidate(a, i, nq, int(suffix[i])) for i in range(nq, n + 1)])


def kl_search(hist: Histogram, bits: int = 8, symmetric: bool = True, num_quantized_bins: int = 128) -> Clip:
    """Specifies baselines.rs::kl: the clip with the KL divergence as its loss."""
    qrange(bits)
    counts, lo, hi = _check_state(hist.counts, hist.lo, hist.hi), hist.lo, hist.hi
    if not counts.any():
        raise EmptyInputError("input is empty: histogram holds no counts")
    if Grid(lo, hi, counts.size).constant:
        return _clip(lo, hi, lo, hi, bits, symmetric)
    start, width, _ = fold_abs(counts, lo, hi)
    kls = kl_divergences(hist, num_quantized_bins)
    best = int(np.argmin(kls))
    t = np.float32(start + (best + num_quantized_bins) * width)
    return _clip(-t, t, lo, hi, bits, symmetric, kls[best])

__all__ = ["fold_abs", "kl_divergences", "kl_search", "percentile_clip"]
