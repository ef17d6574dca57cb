"""The arithmetic of BatchNormalization folding (spec section 6), in float64, independent of any graph.

Each function takes NumPy arrays and returns new arrays in float64 (the caller casts back), or a string that
says why the fold is not possible. ``k = gamma / sqrt(var + eps)`` per channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np

Folded = Union[Tuple[np.ndarray, np.ndarray], str]


@dataclass(frozen=True)
class BatchNormParams:
    """A BN's constants as float64 vectors, plus ``k`` and the original dtype of gamma."""

    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float
    k: np.ndarray
    dtype: np.dtype

    @property
    def channels(self) -> int:
        return int(self.gamma.shape[0])

    @staticmethod
    def make(gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
             eps: float) -> Union["BatchNormParams", str]:
        """Check shapes and ``var + eps > 0`` and compute ``k``; a string says what is wrong."""
        dtype = gamma.dtype
        vecs = [np.asarray(a, np.float64).reshape(-1) for a in (gamma, beta, mean, var)]
        if len({v.shape[0] for v in vecs}) != 1 or any(np.ndim(a) > 1 for a in (gamma, beta, mean, var)):
            return "scale, bias, mean and var are not vectors of one length"
        denom = vecs[3] + eps
        if not np.all(denom > 0):  # also catches NaN
            bad = int(np.flatnonzero(~(denom > 0))[0])
            return f"var + eps <= 0 (or NaN) at channel {bad}"
        if not np.issubdtype(dtype, np.floating):
            return f"BN parameters of dtype {dtype}"
        k = vecs[0] / np.sqrt(denom)
        return BatchNormParams(*vecs, eps=eps, k=k, dtype=dtype)


def _bias(b: Optional[np.ndarray], params: BatchNormParams) -> np.ndarray:
    b64 = np.zeros(params.channels) if b is None else np.asarray(b, np.float64).reshape(-1)
    return (b64 - params.mean) * params.k + params.beta


def fold_conv(w: np.ndarray, b: Optional[np.ndarray], params: BatchNormParams, group: int,
              transpose: bool) -> Folded:
    """Conv (``w`` is ``[C_out, C_in/g, ...]``) or ConvTranspose (``w`` is ``[C_in, C_out/g, ...]``) + BN."""
    w64 = np.asarray(w, np.float64)
    if w64.ndim < 3:
        return f"weight of rank {w64.ndim}"
    c_out = w64.shape[1] * group if transpose else w64.shape[0]
    if c_out != params.channels:
        return f"the conv makes {c_out} channels, the BN has {params.channels}"
    if b is not None and b.size != c_out:
        return f"bias of {b.size} values for {c_out} channels"
    if not transpose:
        new_w = w64 * params.k.reshape((-1,) + (1,) * (w64.ndim - 1))
    else:
        c_in, per_group = w64.shape[0], w64.shape[1]
        if c_in % group:
            return f"{c_in} input channels do not split into {group} groups"
        grouped = w64.reshape((group, c_in // group, per_group) + w64.shape[2:])
        k = params.k.reshape((group, 1, per_group) + (1,) * (w64.ndim - 2))
        new_w = (grouped * k).reshape(w64.shape)
    return new_w, _bias(b, params)


def fold_gemm(w: np.ndarray, c: Optional[np.ndarray], params: BatchNormParams, trans_b: bool,
              beta: float) -> Folded:
    """Gemm (``Y = alpha * A @ B' + beta * C``) + BN over Y's feature axis 1; the new C goes with beta=1."""
    w64 = np.asarray(w, np.float64)
    if w64.ndim != 2:
        return f"Gemm weight of rank {w64.ndim}"
    axis = 0 if trans_b else 1
    if w64.shape[axis] != params.channels:
        return f"Gemm makes {w64.shape[axis]} features, the BN has {params.channels}"
    new_w = w64 * (params.k[:, None] if trans_b else params.k[None, :])
    c_eff = np.zeros(params.channels) if c is None else beta * np.asarray(c, np.float64)
    try:
        new_c = (c_eff - params.mean) * params.k + params.beta
    except ValueError:
        return f"Gemm C of shape {c.shape} does not broadcast to {params.channels} features"  # type: ignore[union-attr]
    return new_w, new_c


def per_channel_reason(shape: Tuple[int, ...], channels: int, rank: Optional[int]) -> str:
    """Why a Mul/Add constant of ``shape`` is not per channel on axis 1 of a rank-``rank`` input ("" if it is).

    Allowed: one value (``[]``, ``[1]``, ``[1,1,..]`` no longer than the input's rank), ``[C,1,..]`` with
    rank-1 dims, ``[1,C,1,..]`` with rank dims (so ``[C]`` only for rank-2 inputs). With the rank unknown
    only ``[]`` and ``[1]`` are accepted.
    """
    shape = tuple(int(d) for d in shape)
    if int(np.prod(shape)) == 1 and len(shape) <= (rank if rank is not None else 1):
        return ""
    if rank is not None and rank >= 2:
        tail = (1,) * (rank - 2)
        if shape in ((channels,) + tail, (1, channels) + tail):
            return ""
    return (f"constant of shape {list(shape)} is not per channel on axis 1 of a rank-{rank} input "
            f"with {channels} channels")


def fold_elementwise(params: BatchNormParams, const: np.ndarray, op: str) -> Tuple[np.ndarray, np.ndarray]:
    """New (gamma, beta) in the BN's dtype after BN -> Mul(m) (``gamma*m, beta*m``) or Add(c) (``beta+c``)."""
    v = np.broadcast_to(np.asarray(const, np.float64).reshape(-1), (params.channels,))
    if op == "Mul":
        gamma, beta = params.gamma * v, params.beta * v
    else:
        gamma, beta = params.gamma, params.beta + v
    return gamma.astype(params.dtype), beta.astype(params.dtype)
