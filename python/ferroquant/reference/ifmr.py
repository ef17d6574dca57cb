"""Specifies rust/ferroquant-core/src/ifmr/ (spec §3, decisions 2 and 10): IFMR clip search.

The loss of a candidate ``(lo, hi, s)`` is the mean of ``(f32(rint(clip(x, lo, hi) / s) * s) - x) ** 2``, the
level ``rint(clip(x, lo, hi) / s)`` in float32 and the error in float64. It is summed as the Rust kernel does, from
per-interval sums between the candidates' level thresholds (see ``run_losses``), so both give the same bits.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ferroquant.errors import EmptyInputError, NonFiniteError, ParameterError, ShapeError
from ferroquant.ops.types import Histogram, IfmrOptions, IfmrResult
from ferroquant.reference._common import FLT_EPSILON, check_finite, qrange
from ferroquant.reference.qparams import from_range, guard

f32 = np.float32
MAX_CANDIDATES = 100_000
EXTEND_MIN_RATIO, EXTEND_MAX_RATIO = 0.01, 2.0
EXTEND_BATCH = 64
RATIO_TOL = 1e-9


def count(start: float, end: float, step: float) -> int:
    """Specifies ifmr/mod.rs::IfmrOptions::count: ``floor((end - start) / step + 1e-6) + 1``."""
    return int(math.floor((end - start) / step + 1e-6)) + 1


def _validate(bits, symmetric, max_percentile, min_percentile, start, end, step, search_2d) -> None:
    """Specifies ifmr/mod.rs::IfmrOptions::validate."""
    qrange(bits)
    for name, p in (("max_percentile", max_percentile), ("min_percentile", min_percentile)):
        if not (p > 0.5 and p <= 1.0):
            raise ParameterError(f"invalid parameter {name}: must be in (0.5, 1], got {p}")
    if not (math.isfinite(start) and start > 0):
        raise ParameterError(f"invalid parameter search_start: must be finite and > 0, got {start}")
    if not (math.isfinite(end) and end > start):
        raise ParameterError(f"invalid parameter search_end: must be finite and > search_start, got {end}")
    if not (step > 0 and step <= (end - start) * (1.0 + 1e-9)):
        raise ParameterError(f"invalid parameter search_step: must be in (0, search_end - search_start], got {step}")
    n = count(start, end, step)
    if (n * n if search_2d else n) > MAX_CANDIDATES:
        raise ParameterError(f"invalid parameter search_step: more than {MAX_CANDIDATES} candidates")
    if search_2d and symmetric:
        raise ParameterError("invalid parameter search_2d: the 2-D search needs an offset (symmetric=False)")


def rank(p: float, n: int) -> int:
    """Specifies ifmr/init.rs::rank: 1 when ``|p - 1| < FLT_EPSILON``, else ``n - floor(p * n)``."""
    k = 1 if abs(p - 1.0) < float(FLT_EPSILON) else n - min(int(math.floor(p * n)), n)
    return min(max(k, 1), max(n, 1))


def percentile_init(x, max_percentile: float, min_percentile: float, zeros: int = 0
                    ) -> tuple[np.float32, np.float32]:
    """Specifies ifmr/init.rs::percentile_init: k-th largest, k-th smallest (from the bottom), clamped to 0, of
    ``x`` and ``zeros`` more values of 0."""
    x = np.asarray(x, np.float32).reshape(-1)
    if zeros and x.size == 0:
        return f32(0), f32(0)
    check_finite(x)
    n = x.size + zeros
    k_max, k_min = rank(max_percentile, n), rank(min_percentile, n)
    pos, neg = int((x > 0).sum()), int((x < 0).sum())
    max0 = np.partition(x, x.size - k_max)[x.size - k_max] if k_max <= pos or zeros == 0 else f32(0)
    min0 = np.partition(x, k_min - 1)[k_min - 1] if k_min <= neg or zeros == 0 else f32(0)
    return max(max0, f32(0)), min(min0, f32(0))


def ifmr_store(buf, offset: int, x) -> tuple[int, int]:
    """Specifies ifmr/init.rs::store_nonzero (at ``buf[offset:]``)."""
    x = np.asarray(x, np.float32).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise NonFiniteError(f"input contains a non-finite value ({x[bad[0]]}) at flat index {bad[0]}")
    if offset > buf.size:
        raise ParameterError(f"offset {offset} is past the buffer's end")
    nz = x[x != 0]
    if nz.size > buf.size - offset:
        raise ShapeError(f"sample buffer (room for the non-zero values): expected {nz.size}, got {buf.size - offset}")
    buf[offset:offset + nz.size] = nz
    return nz.size, x.size - nz.size


def _check_histogram(counts, lo, hi) -> np.ndarray:
    c = np.asarray(counts).reshape(-1)
    if c.size == 0:
        raise EmptyInputError("input is empty: histogram has no bins")
    if not (np.isfinite(f32(lo)) and np.isfinite(f32(hi))):
        raise NonFiniteError(f"histogram range [{lo}, {hi}] is not finite")
    if f32(hi) < f32(lo):
        raise ParameterError(f"invalid parameter hi: histogram range [{lo}, {hi}] has hi < lo")
    if np.any(c < 0):
        raise ParameterError("invalid parameter counts: a histogram count is negative")
    if int(c.sum()) == 0:
        raise EmptyInputError("input is empty: histogram counts sum to zero")
    return c.astype(np.int64)


def histogram_init(counts, lo, hi, max_percentile: float, min_percentile: float) -> tuple[np.float32, np.float32]:
    """Specifies ifmr/init.rs::histogram_init: ``lo + (#bins with cdf < p) / nbins * (hi - lo)``."""
    c = _check_histogram(counts, lo, hi)
    cdf = np.cumsum(c) / float(c.sum())
    l, h, nb = float(f32(lo)), float(f32(hi)), float(c.size)

    def at(p: float) -> np.float32:
        return f32(l + int(np.count_nonzero(cdf < p)) / nb * (h - l))

    return max(at(max_percentile), f32(0)), min(at(1.0 - min_percentile), f32(0))


PASS_CHUNK = 1 << 20
MAX_THRESHOLDS = 1 << 14
_U32 = np.uint32


def _key(v) -> np.ndarray:
    """Specifies ifmr/runs.rs::key: order-preserving map of finite float32 values to uint32."""
    b = np.asarray(v, np.float32).view(_U32)
    return np.where(b >> 31 == 1, ~b, b | _U32(0x80000000)).astype(_U32)


def _unkey(k) -> np.ndarray:
    k = np.asarray(k).astype(_U32)
    return np.where(k >> 31 == 1, k & _U32(0x7FFFFFFF), ~k).astype(_U32).view(np.float32)


def _level(v, lo, hi, s) -> np.ndarray:
    """Specifies ifmr/loss.rs::level: ``rint(clip(v, lo, hi) / s)`` in float32."""
    return np.rint(np.clip(np.asarray(v, np.float32), f32(lo), f32(hi)) / f32(s))


def thresholds(lo, hi, s) -> np.ndarray:
    """Specifies ifmr/runs.rs::thresholds: for each level ``r`` in ``q(lo)+1 ..= q(hi)``, the key of the smallest
    finite float32 whose level is at least ``r`` (halving the keys)."""
    r0, r1 = _level(lo, lo, hi, s), _level(hi, lo, hi, s)
    r = np.arange(int(r0) + 1, int(r1) + 1).astype(np.float32)
    a = np.full(r.size, int(_key(np.finfo(np.float32).min)), np.uint64)
    b = np.full(r.size, int(_key(np.finfo(np.float32).max)), np.uint64)
    while np.any(a < b):
        mid = a + (b - a) // 2
        up = _level(_unkey(mid), lo, hi, s) >= r
        a, b = np.where(up | (a >= b), a, mid + 1), np.where(up & (a < b), mid, b)
    return a.astype(_U32)


def _pass(y: np.ndarray, t: np.ndarray, refs: np.ndarray):
    """Specifies ifmr/runs.rs::pass: per-interval count, sum of ``v - ref`` and of its square, per chunk of
    ``PASS_CHUNK`` values in order, the chunks added in order."""
    m = refs.size
    total = None
    for c in range(0, y.size, PASS_CHUNK):
        yc = y[c:c + PASS_CHUNK]
        j = np.searchsorted(t, _key(yc), side="right")
        w = yc.astype(np.float64) - refs[j]
        part = (np.bincount(j, minlength=m).astype(np.float64), np.bincount(j, w, m), np.bincount(j, w * w, m))
        total = part if total is None else tuple(a + b for a, b in zip(total, part))
    return total if total is not None else tuple(np.zeros(m) for _ in range(3))


def _run_batch(y: np.ndarray, count: int, cands: list, ths: list) -> list:
    """Specifies ifmr/runs.rs::RunLoss::batch."""
    t = np.unique(np.concatenate(ths)) if ths else np.zeros(0, _U32)
    t = t.astype(_U32)
    refs = np.concatenate([_unkey(t[:1]), _unkey(t)]).astype(np.float64) if t.size else np.zeros(1)
    refs[np.searchsorted(_unkey(t), np.float32(0), side="right")] = 0.0  # the interval that holds 0
    n, d1, d2 = _pass(y, t, refs)
    out = []
    for (lo, hi, s), th in zip(cands, ths):
        bounds = np.searchsorted(t, th, side="left") + 1
        i = np.searchsorted(bounds, np.arange(refs.size), side="right")
        cj = ((_level(lo, lo, hi, s) + i.astype(np.float32)) * f32(s)).astype(np.float64) - refs
        terms = np.maximum(n * cj * cj - 2.0 * cj * d1 + d2, 0.0)
        # four sums by interval index (``j % 4``, each in order), then (s0 + s1) + (s2 + s3)
        lanes = [float(np.cumsum(terms[k::4])[-1]) if terms[k::4].size else 0.0 for k in range(4)]
        out.append(((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) / max(count, 1))
    return out


def run_losses(x: np.ndarray, cands: list, zeros: int = 0) -> list:
    """Specifies ifmr/runs.rs::RunLoss::losses: candidates in batches of at most ``MAX_THRESHOLDS`` thresholds
    (one candidate may exceed it alone), one pass over the data per batch."""
    y = np.asarray(x, np.float32).reshape(-1)
    ths = [thresholds(*c) for c in cands]
    out, start = [], 0
    while start < len(cands):
        end, held = start + 1, ths[start].size
        while end < len(cands) and held + ths[end].size <= MAX_THRESHOLDS:
            held += ths[end].size
            end += 1
        out += _run_batch(y, y.size + zeros, cands[start:end], ths[start:end])
        start = end
    return out


def hist_losses(counts: np.ndarray, lo, hi, cands: list) -> list:
    """Specifies ifmr/loss.rs::HistLoss: bin centres weighted by counts, bins added in order."""
    nb = counts.size
    l, h = float(f32(lo)), float(f32(hi))
    centres = (l + (np.arange(nb, dtype=np.float64) + 0.5) * (h - l) / nb).astype(np.float32)
    w = counts.astype(np.float64)
    total = max(float(w.sum()), 1.0)
    out = []
    for clo, chi, s in cands:
        e = (np.rint(np.clip(centres, clo, chi) / s) * s - centres).astype(np.float64)
        out.append(float(np.cumsum(w * (e * e))[-1]) / total)
    return out


def _cand(bound: str, r: float, max0, min0, bits: int, symmetric: bool, r_min: Optional[float] = None):
    """Specifies ifmr/search.rs::Space::cand and cand_2d: ``(lo, hi, guarded scale)``."""
    qmin, qmax = qrange(bits)
    levels = f32((1 << bits) - 1)

    def g(s):
        return guard(f32(s), 0, bits, symmetric)[0]

    with np.errstate(over="ignore", invalid="ignore"):
        if bound == "both":
            lo, hi = f32(r_min * float(min0)), f32(r * float(max0))
            return lo, hi, g((hi - lo) / levels)
        if bound == "max":
            hi = f32(r * float(max0))
            return f32(min0), hi, g((hi - f32(min0)) / levels)
        if bound == "min":
            lo = f32(r * float(min0))
            return lo, f32(0), g((f32(0) - lo) / levels)
        a = max0 if abs(max0) >= abs(min0) else min0
        big_l = f32(qmax if a > 0 else -qmin)
        c = f32(r * float(abs(a)))
        return -c, c, g(c / big_l)


def _walk(losses, make, pick: dict, start, step, direction: int) -> bool:
    """Specifies ifmr/search.rs::walk."""
    moved = False
    while True:
        idx, cands = [], []
        i = pick["index"] + direction
        while len(cands) < EXTEND_BATCH:
            r = start + i * step
            if not (EXTEND_MIN_RATIO - RATIO_TOL <= r <= EXTEND_MAX_RATIO + RATIO_TOL):
                break
            try:
                cands.append(make(r))
            except ValueError:
                break
            idx.append(i)
            i += direction
        if not cands:
            return moved
        ls = losses(cands)
        pick["candidates"] += len(cands)
        for loss, c, k in zip(ls, cands, idx):
            if loss < pick["loss"]:
                pick.update(loss=loss, cand=c, index=k)
                moved = True
            else:
                return moved


def _search(losses, max0, min0, bits, symmetric, start, end, step, search_extend, search_2d) -> IfmrResult:
    """Specifies ifmr/mod.rs::search_from."""
    qmin, qmax = qrange(bits)
    if symmetric:
        bound = "symmetric"
    elif search_2d:
        bound = "both"
    elif max0 == 0 and min0 < 0:
        bound = "min"
    else:
        bound = "max"
    n = count(start, end, step)
    index_min = None
    if bound == "both":
        cands = [_cand(bound, start + i * step, max0, min0, bits, False, start + j * step)
                 for j in range(n) for i in range(n)]
        ls = losses(cands)
        best = int(np.argmin(ls))
        index_min, i = divmod(best, n)
        pick = dict(cand=cands[best], index=i, loss=ls[best], candidates=len(cands))
    else:
        def make(r):
            return _cand(bound, r, max0, min0, bits, symmetric)

        cands = [make(start + i * step) for i in range(n)]
        ls = losses(cands)
        best = int(np.argmin(ls))
        pick = dict(cand=cands[best], index=best, loss=ls[best], candidates=n)
        if search_extend:
            moved = pick["index"] == 0 and _walk(losses, make, pick, start, step, -1)
            if not moved and pick["index"] == n - 1:
                _walk(losses, make, pick, start, step, 1)
    lo, hi, s = pick["cand"]
    if symmetric:
        scale, zp = f32(s), 0
    else:
        scale, zp = from_range(lo, hi, bits, False)
    index = pick["index"]
    extension = index if index < 0 else max(index - (n - 1), 0)
    return IfmrResult(
        scale=float(scale), zero_point=int(zp),
        clip_min=float(f32(scale) * f32(qmin - zp)), clip_max=float(f32(scale) * f32(qmax - zp)),
        max_init=float(max0), min_init=float(min0), bound=bound,
        ratio=float(start + index * step), index=int(index),
        ratio_min=None if index_min is None else float(start + index_min * step),
        index_min=None if index_min is None else int(index_min),
        extended=extension != 0, extension=int(extension), candidates=int(pick["candidates"]), window=n,
        loss=float(pick["loss"]), search_extend=search_extend, search_2d=search_2d,
    )


def ifmr(x, options: IfmrOptions = IfmrOptions(), zeros: int = 0) -> IfmrResult:
    """Specifies rust/ferroquant-core/src/ifmr/mod.rs::ifmr."""
    o = options
    _validate(o.bits, o.symmetric, o.max_percentile, o.min_percentile, o.search_start, o.search_end,
              o.search_step, o.search_2d)
    x = np.asarray(x, np.float32).reshape(-1)
    if x.size == 0 and zeros == 0:
        raise EmptyInputError("IFMR needs at least one value")
    max0, min0 = percentile_init(x, o.max_percentile, o.min_percentile, zeros)
    return _search(lambda c: run_losses(x, c, zeros), max0, min0, o.bits, o.symmetric, o.search_start,
                   o.search_end, o.search_step, o.search_extend, o.search_2d)


def ifmr_histogram(hist: Histogram, x=None, options: IfmrOptions = IfmrOptions()) -> IfmrResult:
    """Specifies rust/ferroquant-core/src/ifmr/mod.rs::ifmr_histogram (losses on ``x`` when given)."""
    o = options
    _validate(o.bits, o.symmetric, o.max_percentile, o.min_percentile, o.search_start, o.search_end,
              o.search_step, o.search_2d)
    lo, hi = hist.lo, hist.hi
    c = _check_histogram(hist.counts, lo, hi)
    max0, min0 = histogram_init(c, lo, hi, o.max_percentile, o.min_percentile)
    if x is not None:
        x = np.asarray(x, np.float32).reshape(-1)
        check_finite(x)
        losses = lambda cs: run_losses(x, cs)  # noqa: E731
    else:
        losses = lambda cs: hist_losses(c, lo, hi, cs)  # noqa: E731
    return _search(losses, max0, min0, o.bits, o.symmetric, o.search_start, o.search_end, o.search_step,
                   o.search_extend, o.search_2d)

def ifmr_many(xs, options, zeros) -> list:
    """Specifies ifmr/mod.rs::ifmr_many: one ``ifmr`` per tensor, in order."""
    if not len(xs) == len(options) == len(zeros):
        raise ShapeError(f"ifmr_many: {len(xs)} arrays, {len(options)} options and {len(zeros)} zero counts")
    return [ifmr(x, o, z) for x, o, z in zip(xs, options, zeros)]


__all__ = ["histogram_init", "ifmr", "ifmr_histogram", "ifmr_many", "ifmr_store", "percentile_init"]
