"""Specifies rust/ferroquant-core/src/hessian.rs and gptq.rs: the streaming Hessian sum and GPTQ, written as
the reference code reads (IST-DASLab/gptq ``fasterquant``), on a ``[K, N]`` weight, in float64. The Cholesky
factor of the inverse is computed the reference's way here (cholesky, inverse, cholesky); the kernel reaches the
same matrix with one factorization and one triangular inverse under ``act_order``, and otherwise skips the
inverse: it spreads ``w_i - q_i`` with the factor ``M`` (``M Mᵀ = H``, ``M = U⁻¹``) itself, which sums to the
same updates (see gptq.rs)."""

from __future__ import annotations

import numpy as np

from ferroquant.errors import NonFiniteError, ParameterError, ShapeError
from ferroquant.ops.groupwise import GptqResult, GroupQuant, GroupSpec
from ferroquant.reference._common import check_finite
from ferroquant.reference.groupwise import group_qparams, weight_of

f32, f64 = np.float32, np.float64


def hessian_update(h: np.ndarray, x: object) -> np.ndarray:
    """Specifies hessian.rs::hessian_update: adds ``xᵀx`` in float64 to ``h`` in place (``x`` ``[..., K]``; the
    caller applies ``2/n``) and returns ``h``; a batch with NaN/Inf raises and leaves ``h`` unchanged."""
    if not (isinstance(h, np.ndarray) and h.dtype == f64 and h.ndim == 2 and h.flags.c_contiguous):
        raise ShapeError("h must be a C-contiguous float64 [K, K] array")
    x = np.asarray(x, f32)
    k = h.shape[1]
    if x.shape[-1] != k or h.shape != (k, k):
        raise ShapeError(f"x rows of {x.shape[-1]} values do not fit a [{k}, {k}] hessian")
    check_finite(x)
    x64 = x.reshape(-1, k).astype(f64)
    h += x64.T @ x64
    return h


def _prepare(w: np.ndarray, h: np.ndarray, percdamp: float, act_order: bool):
    """Dead inputs, the processing order, dampening, and U (upper, UᵀU = H⁻¹) in processing order."""
    k = w.shape[0]
    if h.shape != (k, k):
        raise ShapeError(f"hessian must be [{k}, {k}], got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise NonFiniteError("hessian contains a non-finite value")
    if np.any(np.diag(h) < 0):
        raise ParameterError("hessian: a diagonal entry is negative")
    if not (np.isfinite(percdamp) and percdamp >= 0):
        raise ParameterError(f"percdamp must be >= 0, got {percdamp}")
    H, W = h.astype(f64).copy(), w.astype(f64).copy()
    dead = np.flatnonzero(np.diag(H) == 0)
    H[dead, dead] = 1.0
    W[dead, :] = 0.0
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(k)
    H, W = H[perm][:, perm], W[perm]
    damp = percdamp * np.cumsum(np.diag(H))[-1] / k
    H[np.arange(k), np.arange(k)] += damp
    try:
        L = np.linalg.cholesky(H)
        Linv = np.linalg.inv(L)
        U = np.linalg.cholesky(Linv.T @ Linv).T
    except np.linalg.LinAlgError:
        raise ParameterError("hessian is not positive definite after dampening; raise percdamp") from None
    return W, U, perm, dead, damp


def gptq(w: object, hessian: object, spec: GroupSpec = GroupSpec(), percdamp: float = 0.01,
         act_order: bool = False, block_size: int = 128) -> GptqResult:
    """Specifies gptq.rs::gptq. Groups are contiguous in the original input order; a group's params are fixed
    when its first input (in processing order) is reached, from its members' fully updated weights."""
    if block_size < 1:
        raise ParameterError(f"block_size must be >= 1, got {block_size}")
    W, U, perm, dead, damp = _prepare(weight_of(w), np.asarray(hessian, f64), percdamp, act_order)
    k, n = W.shape
    qmax, gs = (1 << spec.bits) - 1, spec.group_size
    pos = np.argsort(perm)
    start = {int(pos[g * gs:(g + 1) * gs].min()): g for g in range(spec.groups(k))}
    codes = np.zeros((k, n), np.uint8)
    scales, zps = np.zeros((spec.groups(k), n), f32), np.zeros((spec.groups(k), n), np.uint8)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        err = np.zeros((i2 - i1, n))
        for i in range(i1, i2):
            if i in start:
                g = start[i]
                p = pos[g * gs:(g + 1) * gs]
                cur = W[p].copy()
                beyond = p >= i2
                if beyond.any() and i > i1:
                    cur[beyond] -= U[i1:i, p[beyond]].T @ err[:i - i1]
                scales[g], zps[g] = group_qparams(cur.min(axis=0).astype(f32), cur.max(axis=0).astype(f32), spec)
            g = perm[i] // gs
            s, z = scales[g].astype(f64), zps[g].astype(f64)
            q = np.clip(np.rint(W[i] / s) + z, 0, qmax)
            codes[i] = q.astype(np.uint8)
            err[i - i1] = (W[i] - (q - z) * s) / U[i, i]
            W[i + 1:i2] -= np.outer(U[i, i + 1:i2], err[i - i1])
        W[i2:] -= U[i1:i2, i2:].T @ err
    out = np.zeros_like(codes)
    out[perm] = codes
    quant = GroupQuant(out, scales.astype(np.float16) if spec.scale_f16 else scales, zps, spec)
    return GptqResult(quant, perm if act_order else None, dead.astype(np.int64), float(damp))

__all__ = ["gptq", "hessian_update"]
