"""Specifies rust/ferroquant-core/src/output_clip.rs: the output error of each candidate activation grid
through one layer, written as the formula reads (float64 products; the kernel sums in another order)."""

from __future__ import annotations

import numpy as np

from ferroquant._arrays import as_f32, check_bits
from ferroquant.errors import EmptyInputError, ParameterError, ScaleError, ShapeError, ZeroPointError
from ferroquant.reference._common import check_finite, qrange
from ferroquant.reference.affine import fake_quant


def output_clip_errors(x, w, scales, zero_points, bits: int = 8, weights=None) -> np.ndarray:
    """Specifies output_clip.rs::output_clip_errors."""
    x, w = as_f32(x, "x", allow_empty=True), as_f32(w, "w", allow_empty=True)
    if x.ndim != 3 or w.ndim != 2:
        raise ShapeError(f"x must be [n, groups, p] and w [c_out, p], got {x.shape} and {w.shape}")
    bits = check_bits(bits)
    s = np.asarray(scales, np.float32).reshape(-1)
    z = np.asarray(zero_points).reshape(-1)
    n, groups, p = x.shape
    c_out = w.shape[0]
    if n == 0 or p == 0 or c_out == 0 or groups == 0 or s.size == 0:
        raise EmptyInputError("input is empty: output clip search needs patches, inputs, outputs and candidates")
    if w.shape[1] != p or c_out % groups or z.size != s.size:
        raise ShapeError(f"patches {x.shape}, weight {w.shape} and {s.size}/{z.size} candidates do not fit")
    check_finite(x)
    check_finite(w)
    qmin, qmax = qrange(bits)
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ScaleError(f"invalid scale {s}: must be finite and > 0")
    if np.any((z < qmin) | (z > qmax)):
        raise ZeroPointError(f"zero point {z} outside [{qmin}, {qmax}]")
    om = np.ones(n) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if om.size != n:
        raise ShapeError(f"expected {n} row weights, got {om.size}")
    if not np.all(np.isfinite(om) & (om >= 0)) or om.sum() <= 0:
        raise ParameterError("invalid parameter weights: each must be finite and >= 0, not all 0")
    wg = w.astype(np.float64).reshape(groups, c_out // groups, p)
    out = np.empty(s.size, np.float64)
    for k in range(s.size):
        e = (x - fake_quant(x, s[k], int(z[k]), bits)).astype(np.float64)  # [n, groups, p]
        y = np.einsum("ngp,gop->ngo", e, wg)
        out[k] = float(np.sum(om[:, None, None] * y * y)) / om.sum()
    return out


__all__ = ["output_clip_errors"]
