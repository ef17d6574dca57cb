"""SmoothQuant balancing of a torch model before static int8 PTQ (issue 12, item 2's torch half): for each
``nn.LayerNorm`` whose output only linear layers read (``nn.Linear``, transformers' Conv1D; q/k/v after ``ln1``,
fc1 after ``ln2``; found on the model's ONNX export by the ONNX flow's rules), per input channel ``j``
``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (``W``: the readers' weights side by side, ``alpha`` fixed or
searched on sampled rows by :func:`ferroquant.ops.smooth_search`, as the ONNX flow does); the normalization's
weight and bias are divided by ``s`` and the linear weights' input channels multiplied by it. ``(y / s) (s W)ᵀ
= y Wᵀ``: the float model computes the same up to rounding, in place."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ferroquant import ops
from ferroquant.config.methods import SmoothQuantParams
from ferroquant.errors import DataError, ModelError
from ferroquant.quant.smooth import Smoothed
from ferroquant.quant.smooth import report as neutral_report
from ferroquant.quant.weight_only import RowSample
from ferroquant.torch.layers import scale_inputs_, weight_kn
from ferroquant.torch.prepare import call_model


def collect_norm_outputs(model: nn.Module, norms: Sequence[str], batches: Iterable[Any], max_batches: Optional[int],
                         max_rows: int) -> Dict[str, Tuple[ops.ChannelStats, RowSample]]:
    """Per normalization module, per-channel statistics of its output over the batches (at most
    ``max_batches``) and a sample of at most ``max_rows`` rows; NaN/Inf raise a NonFiniteError naming it."""
    modules = dict(model.named_modules())
    stats: Dict[str, Tuple[ops.ChannelStats, RowSample]] = {}

    def hook(name: str):  # noqa: ANN202 - a torch hook
        def fn(_mod: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            x = out.detach().float().cpu().contiguous().numpy()
            if name not in stats:
                where = f"output of normalization {name!r}"
                stats[name] = (ops.ChannelStats(x.shape[-1], where), RowSample(x.shape[-1], max_rows, where))
            stats[name][0].observe(x)
            stats[name][1].observe(x)
        return fn

    hooks = [modules[n].register_forward_hook(hook(n)) for n in norms]
    n = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if max_batches is not None and n >= max_batches:
                    break
                call_model(model, batch)
                n += 1
    finally:
        for h in hooks:
            h.remove()
    if n == 0:
        raise DataError("the calibration data yielded no batch")
    return stats


def _vector(p: Optional[torch.Tensor], k: int, what: str) -> Optional[np.ndarray]:
    if p is None:
        return None
    if p.ndim != 1 or p.shape[0] != k:
        raise ModelError(f"{what}: a per-channel vector of {k} values expected, got shape {list(p.shape)}")
    return p.detach().float().cpu().numpy()


def balance_(model: nn.Module, groups: List[Tuple[str, Tuple[str, ...]]], params: SmoothQuantParams,
             batches: Iterable[Any], max_batches: Optional[int] = None) -> List[Smoothed]:
    """Balance ``groups`` (normalization module, the Linear modules reading it) of ``model`` in place on the
    calibration ``batches``; returns what was done per group."""
    if not groups:
        return []
    stats = collect_norm_outputs(model, [g[0] for g in groups], batches, max_batches, params.max_rows)
    modules = dict(model.named_modules())
    done = []
    for norm_name, lins in groups:
        if norm_name not in stats:
            raise DataError(f"normalization {norm_name!r} was never called during calibration")
        norm, linears = modules[norm_name], [modules[n] for n in lins]
        cs, rows = stats[norm_name]
        k = cs.channels
        gamma = _vector(getattr(norm, "weight", None), k, f"normalization {norm_name!r} weight")
        beta = _vector(getattr(norm, "bias", None), k, f"normalization {norm_name!r} bias")
        if gamma is None:
            raise ModelError(f"normalization {norm_name!r} has no weight to absorb the balancing scales")
        w_kn = np.concatenate([weight_kn(m) for m in linears], axis=1)
        alphas = params.alphas if params.alpha is None else (params.alpha,)
        r = ops.smooth_search(cs.absmax, w_kn, rows.rows, alphas, 8, name=f"output of normalization {norm_name!r}")
        s = r.channel_scale.astype(np.float32)
        with torch.no_grad():
            norm.weight.copy_(torch.from_numpy(gamma / s))
            if beta is not None:
                norm.bias.copy_(torch.from_numpy(beta / s))
            for m in linears:
                scale_inputs_(m, s)
        done.append(Smoothed.of(norm_name, lins, r, s))
    return done


def report(done: List[Smoothed], skipped: List[Tuple[str, str]], fp32_change: Optional[float]) -> Dict[str, Any]:
    """The record's ``methods.smooth_quant`` entry (as the ONNX flow's, by torch module names)."""
    out = neutral_report(done, skipped)
    if fp32_change is not None:
        out["fp32_max_relative_difference"] = fp32_change
    return out


__all__ = ["Smoothed", "balance_", "collect_norm_outputs", "report"]
