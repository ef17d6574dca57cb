"""QAT modules: :class:`ActivationULQ` (learned clips, spec §5.1), the weight quantizers
:class:`ArqRetrainWeight` (§5.3) and :class:`LsqWeight` (§5.2), and :class:`QuantLayer`, which wraps a Conv /
ConvTranspose / Linear and applies them (``layer.module`` is the original float module, trained in place).

ULQ state. ``clip_max``/``clip_min`` are ``nn.Parameter`` scalars; ``clip_max_pre``/``clip_min_pre`` (the last
valid values) and ``initialized`` are buffers, so a ``state_dict`` checkpoint resumes training exactly. Until
``batch_num`` training batches have been seen, the layer streams its inputs into an IFMR calibrator
(symmetric, class defaults, as AMCT's ``retrain_quant.py``) and quantizes with the batch min/max; then it
initialises the clips from IFMR (``clip_max = s·(qmax−o)``, ``clip_min = −s·(−qmin+o)``). Under
torch.distributed the calibrator states of all ranks are merged (in rank order) before the search, and the
clips are averaged over ranks at every training step, so every rank holds the same clips.

Validity (every training forward, spec §5.1 and decision 6): ``fixed_min`` pins ``clip_min`` at 0; if
``clip_max − clip_min ≤ eps`` both revert to their ``_pre`` values, else a negative ``clip_max`` or a positive
``clip_min`` reverts alone; valid values become the new ``_pre``. The LSQ scales are clamped to ``>= eps``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ferroquant import ops
from ferroquant.calibrate import IFMRCalibrator
from ferroquant.torch import distributed as fqdist
from ferroquant.torch.functions import FLT_EPSILON, arq_retrain, lsq, ulq
from ferroquant.torch.layers import is_transposed, weight_in_out

EPS = FLT_EPSILON


class ActivationULQ(nn.Module):
    """ULQ fake-quant of one activation tensor with learned ``clip_min``/``clip_max``."""

    def __init__(self, name: str = "tensor", bits: int = 8, symmetric: bool = False, fixed_min: bool = False,
                 clip_max: Optional[float] = None, clip_min: Optional[float] = None, batch_num: int = 1,
                 sync: bool = True) -> None:
        super().__init__()
        self.name, self.bits, self.symmetric = name, int(bits), bool(symmetric)
        self.fixed_min, self.batch_num, self.sync = bool(fixed_min), int(batch_num), bool(sync)
        self.clip_max = nn.Parameter(torch.tensor(1.0))
        self.clip_min = nn.Parameter(torch.tensor(0.0 if fixed_min else -1.0))
        self.register_buffer("clip_max_pre", torch.tensor(1.0))
        self.register_buffer("clip_min_pre", torch.tensor(0.0 if fixed_min else -1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self._calibrator: Optional[IFMRCalibrator] = None
        if clip_max is not None or clip_min is not None:
            self.set_clips(0.0 if clip_min is None else clip_min, 1.0 if clip_max is None else clip_max)

    # -- state -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def set_clips(self, clip_min: float, clip_max: float) -> None:
        lo = 0.0 if self.fixed_min else float(clip_min)
        for p, v in ((self.clip_min, lo), (self.clip_max, float(clip_max)), (self.clip_min_pre, lo),
                     (self.clip_max_pre, float(clip_max))):
            p.fill_(v)
        self.initialized.fill_(True)
        self._calibrator = None

    def qparams(self) -> Tuple[float, int]:
        """The (scale, zero_point) the current clips stand for."""
        lo = 0.0 if self.fixed_min else self.clip_min.item()
        p = ops.qparams_from_range(lo, self.clip_max.item(), self.bits, self.symmetric)
        return p.scale, p.zero_point

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, bits={self.bits}, symmetric={self.symmetric}, "
                f"fixed_min={self.fixed_min}, clips=[{self.clip_min.item():.4g}, {self.clip_max.item():.4g}]")

    # -- initialisation ------------------------------------------------------------------------------------
    def _observe(self, x: torch.Tensor) -> None:
        if self._calibrator is None:
            self._calibrator = IFMRCalibrator(self.name, bits=self.bits, symmetric=True)
        self._calibrator.observe(x.detach().float().cpu().contiguous().numpy())
        if self._calibrator.batches >= self.batch_num:
            cal = fqdist.merge_calibrator(self._calibrator)
            r = cal.qparams()
            self.set_clips(r.clip_min, r.clip_max)

    def _batch_range(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        xd = x.detach()
        lo = torch.clamp(xd.min(), max=0.0) if not self.fixed_min else torch.zeros((), device=x.device)
        hi = torch.clamp(xd.max(), min=0.0)
        if float(hi - lo) <= EPS:
            hi = lo + 1.0
        return lo, hi

    # -- validity ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def check_clips(self) -> None:
        """Fixed min, the revert rules of spec §5.1 and the update of the ``_pre`` values."""
        if self.sync:
            fqdist.average_(self.clip_max, self.clip_min)
        if self.fixed_min:
            self.clip_min.zero_()
        hi, lo = self.clip_max.item(), self.clip_min.item()
        if not (np.isfinite(hi) and np.isfinite(lo)) or hi - lo <= EPS:
            self.clip_max.copy_(self.clip_max_pre)
            self.clip_min.copy_(self.clip_min_pre)
        elif hi < 0:
            self.clip_max.copy_(self.clip_max_pre)
        elif lo > 0:
            self.clip_min.copy_(self.clip_min_pre)
        self.clip_max_pre.copy_(self.clip_max)
        self.clip_min_pre.copy_(self.clip_min)

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        """ULQ of ``x``; before the clips are initialized, a training forward also streams ``x`` into the IFMR
        initialization unless ``observe`` is False (a module shared by layers that read one tensor is fed by the
        first of them only)."""
        if not bool(self.initialized):
            if self.training and observe:
                self._observe(x)
            if not bool(self.initialized):
                lo, hi = self._batch_range(x)
                return ulq(x, lo, hi, self.bits, self.symmetric)
        if self.training:
            self.check_clips()
        lo = torch.zeros((), device=x.device) if self.fixed_min else self.clip_min
        return ulq(x, lo, self.clip_max, self.bits, self.symmetric)


class ArqRetrainWeight(nn.Module):
    """ARQ-retrain: symmetric min/max scales recomputed every step (per output channel or per tensor)."""

    def __init__(self, bits: int = 8, channel_wise: bool = True, axis: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.bits, self.channel_wise, self.axis, self.groups = int(bits), bool(channel_wise), axis, groups

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return arq_retrain(w, self.bits, self.axis if self.channel_wise else None, self.groups)

    def quantize(self, w: np.ndarray) -> Dict[str, Any]:
        r = ops.arq(w, channel_wise=self.channel_wise, axis=self.axis, bits=self.bits, groups=self.groups)
        return {"scale": r.scale, "zero_point": r.zero_point, "codes": r.codes, "algorithm": "arq_retrain"}


class LsqWeight(nn.Module):
    """LSQ ("ULQ for weights"): a learned symmetric scale per output channel (or one), offset 0, initialised
    by the ARQ 127/128 rule; clamped to ``>= eps`` before each use."""

    def __init__(self, weight: torch.Tensor, bits: int = 8, channel_wise: bool = True, axis: int = 0) -> None:
        super().__init__()
        self.bits, self.channel_wise, self.axis = int(bits), bool(channel_wise), axis
        w = weight.detach().float().cpu().contiguous().numpy()
        r = ops.arq(w, channel_wise=channel_wise, axis=axis, bits=bits)
        self.scale = nn.Parameter(torch.from_numpy(np.ascontiguousarray(r.scale, np.float32)).to(weight.device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.scale.clamp_(min=EPS)
        return lsq(w, self.scale, self.bits, self.axis if self.channel_wise else None)

    def quantize(self, w: np.ndarray) -> Dict[str, Any]:
        s = self.scale.detach().float().cpu().clamp(min=EPS).numpy()
        axis = self.axis if self.channel_wise else None
        codes = ops.quantize(w, s if axis is not None else float(s[0]), 0, self.bits, axis)
        return {"scale": s, "zero_point": np.zeros(s.shape, np.int32), "codes": codes, "algorithm": "lsq"}


class QuantLayer(nn.Module):
    """A quantizable layer with ULQ on its input and a fake-quantized weight; ``module`` is the float layer."""

    def __init__(self, module: nn.Module, act_quant: ActivationULQ, weight_quant: nn.Module) -> None:
        super().__init__()
        self.module, self.act_quant, self.weight_quant = module, act_quant, weight_quant
        #: whether this layer feeds its ULQ's initialization (False for the other readers of a shared tensor)
        self.observes = True
        #: the module is a linear layer with its weight stored [in, out] (transformers' Conv1D)
        self.weight_in_out = weight_in_out(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        x = self.act_quant(x, self.observes)
        w = self.weight_quant(m.weight)
        if isinstance(m, nn.Linear):
            return F.linear(x, w, m.bias)
        if self.weight_in_out:
            return F.linear(x, w.t(), m.bias)
        if is_transposed(m):
            fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[w.ndim - 2]
            return fn(x, w, m.bias, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
        return m._conv_forward(x, w, m.bias)  # Conv1d/2d/3d, padding modes included

    def quantized_weight(self) -> Dict[str, Any]:
        """Scale, zero point and int codes of the current weight (for export)."""
        return self.weight_quant.quantize(self.module.weight.detach().float().cpu().contiguous().numpy())
