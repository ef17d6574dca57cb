"""Specifies rust/ferroquant-core/src/arq.rs (and the ConvTranspose group layout of ``ops.arq``)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ferroquant._arrays import check_bits, group_major, group_restore, int_param, opt_axis
from ferroquant.errors import ParameterError
from ferroquant.ops.types import ArqResult
from ferroquant.reference.affine import fake_quant, quantize
from ferroquant.reference.qparams import qparams_from_data


def _arq(w: np.ndarray, axis, bits: int, symmetric: bool) -> ArqResult:
    s, z = qparams_from_data(w, axis, bits, symmetric)
    return ArqResult(s, z, quantize(w, s, z, bits, axis), fake_quant(w, s, z, bits, axis), axis, bits)


def arq(w, channel_wise: bool = True, axis: int = 0, bits: int = 8, symmetric: bool = True,
        groups: int = 1) -> ArqResult:
    """Specifies arq.rs::arq: min/max qparams per channel of ``axis`` (per tensor when not ``channel_wise``)."""
    w = np.asarray(w, np.float32)
    b, g, ax = check_bits(bits), int_param(groups, "groups", 1), opt_axis(axis)
    if g > 1 and channel_wise:
        if ax != 1:
            raise ParameterError("groups > 1 is the ConvTranspose layout: the output-channel axis must be 1")
        r = _arq(group_major(w, g), 0, b, bool(symmetric))
        return dataclasses.replace(r, codes=group_restore(r.codes, w.shape, g),
                                   fake=group_restore(r.fake, w.shape, g), axis=ax)
    return _arq(w, ax if channel_wise else None, b, bool(symmetric))

__all__ = ["arq"]
