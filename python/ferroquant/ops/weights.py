"""Weight quantization: ARQ (spec §1), NUQ (spec §2), and learned rounding on ARQ's grid (AdaRound)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from ferroquant import _native
from ferroquant._arrays import as_f32, check_bits, group_major, group_restore, int_param, named, opt_axis
from ferroquant.errors import DTypeError, ParameterError, ShapeError
from ferroquant.ops._common import ArrayLike
from ferroquant.ops.types import AdaRoundOptions, AdaRoundResult, ArqResult, NuqResult

_BIG = 1 << 32


def arq(
    w: ArrayLike,
    channel_wise: bool = True,
    axis: int = 0,
    bits: int = 8,
    symmetric: bool = True,
    groups: int = 1,
    name: Optional[str] = None,
) -> ArqResult:
    """ARQ weight quantization (spec §1): min/max per output channel (or per tensor), 127/128 rule.

    ``axis`` is the output-channel axis: 0 for Conv/Gemm weights, 1 for ConvTranspose ``[C_in, C_out/g, ...]``
    weights, where ``groups`` maps each (input group, column) pair to its output channel.
    """
    with named(name):
        a = as_f32(w, "w")
        b = check_bits(bits)
        g = int_param(groups, "groups", 1, _BIG)
        ax = opt_axis(axis)
        if g > 1 and channel_wise:
            if ax != 1:
                raise ParameterError("groups > 1 is the ConvTranspose layout: the output-channel axis must be 1")
            r = _native.arq(group_major(a, g), 0, b, bool(symmetric))
            return dataclasses.replace(r, codes=group_restore(r.codes, a.shape, g),
                                       fake=group_restore(r.fake, a.shape, g), axis=ax)
        return _native.arq(a, ax if channel_wise else None, b, bool(symmetric))


def nuq(
    w: ArrayLike,
    num_steps: int = 32,
    num_of_iteration: int = 1,
    channel_wise: bool = True,
    axis: int = 0,
    name: Optional[str] = None,
) -> NuqResult:
    """NUQ (spec §2): keep ``num_steps`` of the 256 int8 levels, chosen by an exact DP, with
    ``num_of_iteration`` least-squares scale re-fits (the best round is returned)."""
    with named(name):
        a = as_f32(w, "w")
        steps = int_param(num_steps, "num_steps", 0, _BIG)  # the kernel checks the ranges themselves
        iters = int_param(num_of_iteration, "num_of_iteration", 0, _BIG)
        return _native.nuq(a, opt_axis(axis) if channel_wise else None, steps, iters)

def _per_row(v: object, rows: int, dtype: type, what: str) -> np.ndarray:
    a = np.asarray(v)
    if a.size == 1:
        a = np.full(rows, a.reshape(()), dtype)
    if a.ndim > 1 or a.size != rows:
        raise ShapeError(f"{what} needs one value per row ({rows}) or one in all, got shape {a.shape}")
    return np.ascontiguousarray(a.reshape(-1), dtype)


def adaround(w: ArrayLike, scale: ArrayLike, zero_point: ArrayLike, gram: ArrayLike, bits: int = 8,
             options: AdaRoundOptions = AdaRoundOptions(), name: Optional[str] = None) -> AdaRoundResult:
    """Learned rounding (AdaRound) of a weight ``[rows, p]`` (one row per output channel) on the grid of
    ``scale`` / ``zero_point`` (per row, or one in all) with signed ``bits`` codes: each code is rounded down
    or up so as to reconstruct the layer's output, given the Gram ``[groups, p, p]`` (float64) of its input
    patches per group (rows ``o`` read group ``o // (rows / groups)``). Ctrl-C interrupts it."""
    if not isinstance(options, AdaRoundOptions):
        raise DTypeError(f"options must be a ferroquant.ops.AdaRoundOptions, got {type(options).__name__}")
    with named(name):
        a = as_f32(w, "w")
        if a.ndim != 2:
            raise ShapeError(f"w must be [rows, p], got shape {a.shape}")
        g = np.asarray(gram)
        if g.ndim != 3:
            raise ShapeError(f"gram must be [groups, p, p], got shape {g.shape}")
        return _native.adaround(a, _per_row(scale, a.shape[0], np.float32, "scale"),
                                _per_row(zero_point, a.shape[0], np.int32, "zero_point"),
                                np.ascontiguousarray(g, np.float64), check_bits(bits), options)


__all__ = ["adaround", "arq", "nuq"]
