"""The kernels of quantization-aware training (spec §5): the ULQ forward and backward, and the LSQ backward of
learned per-channel weight scales. Contiguous float32 arrays (``Tensor.numpy()`` of CPU tensors) are taken
without a copy, and the arrays returned are new native arrays (``torch.from_numpy`` wraps them without one)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ferroquant import _native
from ferroquant._arrays import as_f32, check_bits, opt_axis, per_channel
from ferroquant.ops._common import ArrayLike
from ferroquant.ops.types import UlqBackward, UlqForward


def ulq_fake_quant(x: ArrayLike, clip_min: float, clip_max: float, bits: int = 8,
                   symmetric: bool = False) -> UlqForward:
    """ULQ forward: fake-quant of ``x`` with the §0 qparams of ``[clip_min, clip_max]``."""
    return _native.ulq_fake_quant(as_f32(x), float(clip_min), float(clip_max), check_bits(bits), bool(symmetric))


def ulq_backward(x: ArrayLike, grad: ArrayLike, clip_min: float, clip_max: float, bits: int = 8,
                 symmetric: bool = False) -> UlqBackward:
    """ULQ backward (spec §5.1): the STE gradient of ``x`` and the gradients of both clips."""
    return _native.ulq_backward(as_f32(x), as_f32(grad, "grad"), float(clip_min), float(clip_max),
                                check_bits(bits), bool(symmetric))


def lsq_backward(w: ArrayLike, grad: ArrayLike, scale: ArrayLike, bits: int = 8,
                 axis: Optional[int] = 0) -> np.ndarray:
    """LSQ gradient of per-channel weight scales along ``axis`` (per tensor if None), gradient scale
    ``1/sqrt(N_c qmax)`` included (spec §5.2)."""
    return _native.lsq_backward(as_f32(w, "w"), as_f32(grad, "grad"), per_channel(scale, np.float32, "scale"),
                                check_bits(bits), opt_axis(axis))

__all__ = ["lsq_backward", "ulq_backward", "ulq_fake_quant"]
