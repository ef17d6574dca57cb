"""The torch side of the layer registry: which ``torch.nn`` modules are quantizable layers, and their weight
axis and groups, read from :mod:`ferroquant.quant.registry` (no op list of its own)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from ferroquant.quant.registry import QAT_MODULES, TORCH_MODULES, Attr, LayerType


def class_name(m: nn.Module) -> str:
    """The registry's name for ``m``'s class: the bare name of a ``torch.nn`` class (``Linear``), else its dotted
    path (``transformers.pytorch_utils.Conv1D``). Exact classes, as the export maps them: a subclass is not its
    parent."""
    cls = type(m)
    if getattr(nn, cls.__name__, None) is cls:
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


def layer_type_of(m: nn.Module) -> Optional[LayerType]:
    """The registry entry of module ``m`` (None when it is not a quantizable layer)."""
    return TORCH_MODULES.get(class_name(m))


def is_qat_module(m: nn.Module) -> bool:
    """Whether QAT swaps ``m`` for a :class:`~ferroquant.torch.modules.QuantLayer`."""
    return class_name(m) in QAT_MODULES


def attrs(m: nn.Module) -> Attr:
    """The ONNX attributes the module exports with (``group``; the registry's ``torch_attrs``: ``transB=1`` for a
    Linear, whose weight is ``[out, in]``; none for transformers' Conv1D, ``[in, out]``)."""
    t = layer_type_of(m)
    values = {"group": int(getattr(m, "groups", 1)), **(t.torch_attrs.get(class_name(m), {}) if t else {})}
    return lambda name, default: values.get(name, default)


def is_linear(m: nn.Module) -> bool:
    """Whether ``m`` is a linear layer that exports to ``Gemm``: ``nn.Linear`` or transformers' Conv1D."""
    t = layer_type_of(m)
    return t is not None and t.op_type == "Gemm"


def weight_in_out(m: nn.Module) -> bool:
    """Whether ``m`` is a linear layer whose weight is stored ``[in, out]`` (transformers' Conv1D; ``nn.Linear``
    stores ``[out, in]`` and exports with ``transB``)."""
    return is_linear(m) and not attrs(m)("transB", 0)


def weight_kn(m: nn.Module) -> np.ndarray:
    """A linear layer's weight as float32 ``[K, N]`` (inputs, outputs): ``nn.Linear`` stores ``[N, K]``
    (``transB``), transformers' Conv1D ``[K, N]``."""
    w = m.weight.detach().float().cpu().numpy()
    return w if weight_in_out(m) else w.T


@torch.no_grad()
def scale_inputs_(m: nn.Module, s: np.ndarray) -> None:
    """Multiply a linear layer's weight by ``s`` per input channel, in place (``(x / s) (s W) = x W``)."""
    w = m.weight.detach().float().cpu().numpy()
    w = w * s[:, None] if weight_in_out(m) else w * s[None, :]
    m.weight.copy_(torch.from_numpy(w))


def weight_axis(m: nn.Module) -> int:
    t = layer_type_of(m)
    assert t is not None, type(m)
    return t.axis(attrs(m), m.weight.ndim)


def weight_groups(m: nn.Module) -> int:
    t = layer_type_of(m)
    assert t is not None, type(m)
    return t.groups(attrs(m))


def is_transposed(m: nn.Module) -> bool:
    t = layer_type_of(m)
    return t is not None and t.transposed


__all__ = ["attrs", "class_name", "is_linear", "is_qat_module", "is_transposed", "layer_type_of", "scale_inputs_",
           "weight_axis", "weight_groups", "weight_in_out", "weight_kn"]
