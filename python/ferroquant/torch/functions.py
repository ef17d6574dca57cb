"""Autograd functions of QAT (spec §5): ULQ for activations, LSQ ("ULQ for weights") and ARQ-retrain.

On CPU with contiguous float32 tensors they call the native kernels on the tensors' own memory
(``Tensor.numpy()`` shares it; the kernels run with the GIL released) and wrap the native outputs with
``torch.from_numpy`` (no copy). On any other device the same numerics are written with torch ops: ``x / s`` as
a true division by a device tensor, clamp one step outside the grid, ``torch.round`` (halves to even), add the
zero point, clamp, ``(q - zp) * s``; gradient sums in float64. The scalar qparams always come from
``ferroquant.ops.qparams_from_range`` (spec §0), so both paths use the same scale and zero point.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ferroquant import ops
from ferroquant.reference._common import broadcast_shape  # (a torch tensor has ndim and shape too)

FLT_EPSILON = float(np.finfo(np.float32).eps)
#: Tests set this to run the pure-torch path on CPU (it must give the native bits).
FORCE_TORCH = False


def _qrange(bits: int) -> Tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _qparams(lo: float, hi: float, bits: int, symmetric: bool) -> Tuple[float, int]:
    p = ops.qparams_from_range(lo, hi, bits, symmetric)
    return p.scale, p.zero_point


def native_ok(*ts: torch.Tensor) -> bool:
    """Whether the native kernels can take these tensors without a copy."""
    return not FORCE_TORCH and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in ts)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _fake_quant_torch(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, bits: int) -> torch.Tensor:
    """Torch twin of ``affine.rs::fake_quant``; ``scale``/``zp`` broadcast against ``x`` (float32)."""
    qmin, qmax = _qrange(bits)
    s = scale.to(device=x.device, dtype=torch.float32)
    z = zp.to(device=x.device, dtype=torch.float32)
    t = torch.div(x.float(), s.expand_as(x).contiguous())  # elementwise true division, never x * (1/s)
    t = torch.maximum(torch.minimum(t, qmax - z + 1), qmin - z - 1)
    q = torch.clamp(torch.round(t) + z, qmin, qmax)
    return (q - z) * s


class ULQFunction(torch.autograd.Function):
    """``y = fake_quant(x; s, o)`` with ``(s, o)`` from ``[clip_min, clip_max]``; STE backward of spec §5.1."""

    @staticmethod
    def forward(ctx, x, clip_min, clip_max, bits: int = 8, symmetric: bool = False):  # type: ignore[override]
        lo, hi = float(clip_min), float(clip_max)
        ctx.cfg = (lo, hi, int(bits), bool(symmetric), clip_min.shape, clip_max.shape)
        ctx.save_for_backward(x)
        if native_ok(x):
            return torch.from_numpy(ops.ulq_fake_quant(_np(x), lo, hi, int(bits), bool(symmetric)).fake)
        s, z = _qparams(lo, hi, bits, symmetric)
        dev = x.device
        return _fake_quant_torch(x, torch.tensor(s, device=dev), torch.tensor(float(z), device=dev), bits)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        lo, hi, bits, sym, smin, smax = ctx.cfg
        if native_ok(x, grad):
            r = ops.ulq_backward(_np(x), _np(grad), lo, hi, bits, sym)
            gx, gmax, gmin = torch.from_numpy(r.grad_x), r.grad_clip_max, r.grad_clip_min
        else:
            gx, gmax, gmin = ulq_backward_torch(x, grad, lo, hi, bits, sym)
        dmin = torch.full(smin, float(gmin), dtype=torch.float32, device=x.device)
        dmax = torch.full(smax, float(gmax), dtype=torch.float32, device=x.device)
        return gx, dmin, dmax, None, None


def ulq_backward_torch(x: torch.Tensor, g: torch.Tensor, lo: float, hi: float, bits: int,
                       symmetric: bool) -> Tuple[torch.Tensor, float, float]:
    """Torch twin of ``ulq.rs::ulq_backward``."""
    qmin, qmax = _qrange(bits)
    s, z = _qparams(lo, hi, bits, symmetric)
    dev = x.device
    st = torch.tensor(s, dtype=torch.float32, device=dev)
    o = torch.tensor(float(z), dtype=torch.float32, device=dev)
    x, g = x.float(), g.float()
    up = x > st * (qmax - o)
    low = x < st * (qmin - o)
    t_up = torch.tensor(np.float32(hi) / np.float32(s), device=dev)
    t_lo = torch.tensor(np.float32(lo) / np.float32(s), device=dev)
    t = torch.where(up, t_up, torch.where(low, t_lo, torch.div(x, st.expand_as(x).contiguous())))
    e = (torch.round(t) - t) * torch.tensor(np.float32(1.0) / np.float32((1 << bits) - 1), device=dev)
    gx = torch.where(up | low, torch.zeros((), device=dev), g)
    gmax = (g * (e + up.float())).double().sum().item()
    gmin = (g * (low.float() - e)).double().sum().item()
    return gx, gmax, gmin


class LSQFunction(torch.autograd.Function):
    """LSQ weight fake-quant with a learned symmetric scale per channel (spec §5.2): STE for ``w`` (no mask),
    the LSQ gradient for ``scale`` with ``g = 1/sqrt(N_c·qmax)``."""

    @staticmethod
    def forward(ctx, w, scale, bits: int = 8, axis: Optional[int] = 0):  # type: ignore[override]
        ctx.cfg = (int(bits), axis)
        ctx.save_for_backward(w, scale)
        if native_ok(w, scale):
            s = _np(scale).reshape(-1)
            return torch.from_numpy(ops.fake_quant(_np(w), s, np.zeros(s.shape, np.int32), int(bits), axis))
        sv = scale.detach().reshape(broadcast_shape(w, axis))
        return _fake_quant_torch(w, sv, torch.zeros((), device=w.device), bits)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        w, scale = ctx.saved_tensors
        bits, axis = ctx.cfg
        if native_ok(w, grad, scale):
            gs = torch.from_numpy(ops.lsq_backward(_np(w), _np(grad), _np(scale).reshape(-1), bits, axis))
        else:
            gs = lsq_backward_torch(w, grad, scale.detach(), bits, axis)
        return grad, gs.reshape(scale.shape), None, None


def lsq_backward_torch(w: torch.Tensor, g: torch.Tensor, scale: torch.Tensor, bits: int,
                       axis: Optional[int]) -> torch.Tensor:
    """Torch twin of ``ulq.rs::lsq_backward``."""
    qmin, qmax = _qrange(bits)
    s = scale.float().reshape(broadcast_shape(w, axis))
    t = torch.div(w.float(), s.expand_as(w).contiguous())
    d = torch.where(t < qmin, torch.tensor(float(qmin), device=w.device),
                    torch.where(t > qmax, torch.tensor(float(qmax), device=w.device), torch.round(t) - t))
    prod = (g.float() * d).double()
    if axis is None:
        sums, n = prod.sum().reshape(1), w.numel()
    else:
        sums, n = prod.movedim(axis, 0).reshape(w.shape[axis], -1).sum(1), w.numel() // w.shape[axis]
    return (sums / np.sqrt(float(n) * qmax)).float()


def arq_qparams_torch(w: torch.Tensor, bits: int, axis: Optional[int]) -> torch.Tensor:
    """Symmetric ARQ scales (spec §0 127/128 rule with the guard) per channel of ``axis`` (per tensor if None)."""
    qmin, qmax = _qrange(bits)
    wc = w.detach().float().reshape(1, -1) if axis is None else w.detach().float().movedim(axis, 0).reshape(
        w.shape[axis], -1)
    lo, hi = wc.amin(1), wc.amax(1)
    a = torch.where(hi.abs() >= lo.abs(), hi, lo)
    s = torch.where(a > 0, a / qmax, a.abs() / (-qmin))
    return torch.where(s < FLT_EPSILON, torch.ones_like(s), s)


class ARQRetrainFunction(torch.autograd.Function):
    """ARQ-retrain (spec §5.3): per-channel min/max symmetric fake-quant recomputed every step, identity STE."""

    @staticmethod
    def forward(ctx, w, bits: int = 8, axis: Optional[int] = 0, groups: int = 1):  # type: ignore[override]
        if native_ok(w):
            r = ops.arq(_np(w), channel_wise=axis is not None, axis=0 if axis is None else axis, bits=int(bits),
                        groups=int(groups))
            return torch.from_numpy(r.fake)
        if groups > 1 and axis is not None:
            raise NotImplementedError("ARQ-retrain of grouped ConvTranspose weights runs on CPU only")
        s = arq_qparams_torch(w, bits, axis).reshape(broadcast_shape(w, axis))
        return _fake_quant_torch(w, s, torch.zeros((), device=w.device), bits)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None, None, None


def ulq(x: torch.Tensor, clip_min: torch.Tensor, clip_max: torch.Tensor, bits: int = 8,
        symmetric: bool = False) -> torch.Tensor:
    """Functional ULQ fake-quant (differentiable in ``x``, ``clip_min`` and ``clip_max``)."""
    return ULQFunction.apply(x, clip_min, clip_max, bits, symmetric)


def lsq(w: torch.Tensor, scale: torch.Tensor, bits: int = 8, axis: Optional[int] = 0) -> torch.Tensor:
    """Functional LSQ weight fake-quant (differentiable in ``w`` and ``scale``)."""
    return LSQFunction.apply(w, scale, bits, axis)


def arq_retrain(w: torch.Tensor, bits: int = 8, axis: Optional[int] = 0, groups: int = 1) -> torch.Tensor:
    """Functional ARQ-retrain weight fake-quant (identity gradient)."""
    return ARQRetrainFunction.apply(w, bits, axis, groups)
