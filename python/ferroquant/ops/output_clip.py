"""Output-aware clip search's kernel: the output error of each candidate activation grid through one layer
(rust/ferroquant-core/src/output_clip.rs)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant import _native
from ferroquant._arrays import as_f32, check_bits, named
from ferroquant.errors import ShapeError
from ferroquant.ops._common import ArrayLike


def output_clip_errors(x: ArrayLike, w: ArrayLike, scales: ArrayLike, zero_points: ArrayLike, bits: int = 8,
                       weights: Optional[ArrayLike] = None, name: Optional[str] = None) -> np.ndarray:
    """For each candidate grid ``(scales[k], zero_points[k])`` (per tensor, signed ``bits`` codes) of a layer's
    input, ``Σ_r ω_r Σ_o (w_o · (x_r - FQ_k(x_r)))² / Σ_r ω_r``: the mean squared output error the grid causes,
    from ``n`` input patches ``x`` ``[n, groups, p]`` counted with ``weights`` ``ω`` ``[n]`` (default: 1 each)
    and the float weight ``w`` ``[c_out, p]`` (row ``o`` reads group ``o // (c_out / groups)``). Float64
    ``[k]``. Ctrl-C interrupts it."""
    with named(name):
        a = as_f32(x, "x")
        if a.ndim != 3:
            raise ShapeError(f"x must be patches [n, groups, p], got shape {a.shape}")
        wa = as_f32(w, "w")
        if wa.ndim != 2:
            raise ShapeError(f"w must be [c_out, p], got shape {wa.shape}")
        s = np.ascontiguousarray(np.asarray(scales, np.float32).reshape(-1))
        z = np.asarray(zero_points).reshape(-1)
        if z.size and (z.dtype.kind not in "iu" or np.any(np.abs(z.astype(np.int64)) > (1 << 30))):
            raise ShapeError(f"zero_points must be integers, got {z.dtype}")
        om = np.ones(a.shape[0]) if weights is None else np.asarray(weights, np.float64).reshape(-1)
        return _native.output_clip_errors(np.ascontiguousarray(a), np.ascontiguousarray(wa), s,
                                          np.ascontiguousarray(z, np.int32), check_bits(bits),
                                          np.ascontiguousarray(om))


__all__ = ["output_clip_errors"]
