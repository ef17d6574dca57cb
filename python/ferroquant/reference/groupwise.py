"""Specifies rust/ferroquant-core/src/groupwise.rs: group-wise round to nearest of a ``[K, N]`` weight (groups of
rows along K), per-group min/max or the MSE clip search, and the dequantization. Arithmetic as the kernel:
grids and codes in float32, losses in float64 summed row by row (``np.cumsum`` is sequential)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant.errors import ParameterError, ScaleError, ShapeError
from ferroquant.ops.groupwise import ClipSearch, GroupQuant, GroupSpec
from ferroquant.reference._common import FLT_EPSILON, check_finite

f32, f64 = np.float32, np.float64


def group_qparams(lo: np.ndarray, hi: np.ndarray, spec: GroupSpec) -> tuple[np.ndarray, np.ndarray]:
    """Specifies groupwise.rs::group_qparams for vectors of ranges: (scale float32, zero point uint8)."""
    lo, hi = np.asarray(lo, f32), np.asarray(hi, f32)
    qmax, mid = (1 << spec.bits) - 1, 1 << (spec.bits - 1)
    small = np.minimum(lo, f32(0))
    with np.errstate(all="ignore"):
        if spec.symmetric:
            a = np.where(np.abs(hi) >= np.abs(lo), hi, lo)
            s = np.where(a > 0, a / f32(mid - 1), np.abs(a) / f32(mid)).astype(f32)
        else:
            s = ((np.maximum(hi, f32(0)) - small) / f32(qmax)).astype(f32)
        if spec.scale_f16:
            s = s.astype(np.float16).astype(f32)
        bad = np.flatnonzero(~np.isfinite(s))
        if bad.size:
            raise ScaleError(f"invalid scale {s.flat[bad[0]]} at index {bad[0]}: not finite")
        tiny = s < FLT_EPSILON
        huge = np.flatnonzero(~tiny & (f32(1) / s < FLT_EPSILON))
        if huge.size:
            raise ScaleError(f"invalid scale {s.flat[huge[0]]} at index {huge[0]}: 1/scale is below FLT_EPSILON")
        s = np.where(tiny, f32(1), s).astype(f32)
        if spec.symmetric:
            z = np.full(s.shape, mid, np.uint8)
        else:
            z = np.where(tiny, f32(0), np.clip(-np.rint(small / s), f32(0), f32(qmax))).astype(np.uint8)
    return s, z


def codes_of(x: np.ndarray, s: np.ndarray, z: np.ndarray, qmax: int) -> np.ndarray:
    """``clamp(rint(x / s) + z, 0, qmax)`` in float32 (integer-valued)."""
    with np.errstate(all="ignore"):
        return np.clip(np.rint(x / s) + z.astype(f32), f32(0), f32(qmax)).astype(f32)


def dequant(q: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    return ((q.astype(f32) - z.astype(f32)) * s).astype(f32)


def clip_ratios(n_grid: int, max_shrink: float) -> list:
    if n_grid < 1 or not 0.0 <= max_shrink < 1.0:
        raise ParameterError(f"clip search: need n_grid >= 1 and 0 <= max_shrink < 1, got {n_grid}, {max_shrink}")
    n = max(int(np.floor(max_shrink * n_grid + 1e-9)), 1)
    return [f32(1.0 - i / n_grid) for i in range(n)]


def best_params(block: np.ndarray, spec: GroupSpec, ratios: Optional[list], loss_fn, refine: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """Specifies groupwise.rs::search_clip. Per column of ``block`` (one group's rows), the params of the clip
    with the least ``loss_fn(d)`` (d the float64 error of the dequantized block): both bounds shrunk by each
    ratio, then with ``refine`` (asymmetric only) the upper bound's ratio with the lower kept, then the lower's
    with the upper kept, strict improvements only; ``ratios`` None: plain min/max."""
    lo, hi = block.min(axis=0), block.max(axis=0)
    if ratios is None:
        return group_qparams(lo, hi, spec)
    qmax = (1 << spec.bits) - 1
    best = None
    rl, rh = np.ones_like(lo), np.ones_like(hi)
    for stage in range(3 if refine and not spec.symmetric else 1):
        for r in ratios:
            same = np.full_like(lo, r)
            # a stage reads the ratio it does not change (stage 1 reads rl, stage 2 rh)
            cl, ch = (same, same) if stage == 0 else (rl, same) if stage == 1 else (same, rh)
            s, z = group_qparams(cl * lo, ch * hi, spec)
            d = block.astype(f64) - dequant(codes_of(block, s, z, qmax), s, z).astype(f64)
            loss = loss_fn(d)
            if best is None:
                best, rl, rh = [s.copy(), z.copy(), loss], same.copy(), same.copy()
                continue
            better = loss < best[2]
            best[0][better], best[1][better], best[2][better] = s[better], z[better], loss[better]
            if stage != 2:
                rh[better] = r
            if stage != 1:
                rl[better] = r
    return best[0], best[1]


def sq_err(d: np.ndarray) -> np.ndarray:
    """Sum of squares per column, row by row."""
    return np.cumsum(d * d, axis=0)[-1]


def quantize_params(w: np.ndarray, spec: GroupSpec, params) -> GroupQuant:
    k, n = w.shape
    g = spec.groups(k)
    codes = np.zeros((k, n), np.uint8)
    scales, zps = np.zeros((g, n), f32), np.zeros((g, n), np.uint8)
    for j in range(g):
        rows = slice(j * spec.group_size, min((j + 1) * spec.group_size, k))
        scales[j], zps[j] = params(j, w[rows])
        codes[rows] = codes_of(w[rows], scales[j], zps[j], (1 << spec.bits) - 1).astype(np.uint8)
    return GroupQuant(codes, scales.astype(np.float16) if spec.scale_f16 else scales, zps, spec)


def ratios_of(clip: Optional[ClipSearch]) -> Optional[list]:
    return None if clip is None else clip_ratios(clip.n_grid, clip.max_shrink)


def weight_of(w: object) -> np.ndarray:
    w = np.asarray(w, f32)
    if w.ndim != 2:
        raise ShapeError(f"w must be a 2-D [K, N] MatMul weight, got shape {w.shape}")
    check_finite(w)
    return w


def rtn(w: np.ndarray, spec: GroupSpec, ratios: Optional[list] = None, refine: bool = False) -> GroupQuant:
    """Group-wise round to nearest of a checked float32 ``[K, N]`` weight."""
    return quantize_params(w, spec, lambda j, block: best_params(block, spec, ratios, sq_err, refine))


def dequant_rows(codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, group_size: int) -> np.ndarray:
    rows = np.arange(codes.shape[0]) // group_size
    return dequant(codes, np.asarray(scales, f32)[rows], zero_points[rows])


def quantize_groupwise(w: object, spec: GroupSpec = GroupSpec(), clip: Optional[ClipSearch] = None) -> GroupQuant:
    """Specifies groupwise.rs::quantize_groupwise."""
    return rtn(weight_of(w), spec, ratios_of(clip), clip is not None and clip.refine)


def dequantize_groupwise(quant: GroupQuant) -> np.ndarray:
    """Specifies groupwise.rs::dequantize_groupwise."""
    return dequant_rows(quant.codes, quant.scale, quant.zero_point, quant.spec.group_size)

__all__ = ["dequantize_groupwise", "quantize_groupwise"]
