"""The torch side of the layer registry: which ``torch.nn`` modules are quantizable layers, and their weight
axis and groups, read from :mod:`ferroquant.quant.registry` (no op list of its own)."""

from __future__ import annotations

from typing import Dict, Optional

from torch import nn

from ferroquant.quant.registry import QAT_MODULES, TORCH_MODULES, Attr, LayerType

#: torch.nn class -> registry entry (exact types, as the export maps them)
CLASSES: Dict[type, LayerType] = {getattr(nn, name): t for name, t in TORCH_MODULES.items()}
QAT_CLASSES = tuple(getattr(nn, name) for name in QAT_MODULES)


def layer_type_of(m: nn.Module) -> Optional[LayerType]:
    """The registry entry of module ``m`` (None when it is not a quantizable layer)."""
    return CLASSES.get(type(m))


def attrs(m: nn.Module) -> Attr:
    """The ONNX attributes the module exports with (``group``; ``transB=1``: a Linear weight is ``[out, in]``)."""
    values = {"group": int(getattr(m, "groups", 1)), "transB": 1}
    return lambda name, default: values.get(name, default)


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


__all__ = ["CLASSES", "QAT_CLASSES", "attrs", "is_transposed", "layer_type_of", "weight_axis", "weight_groups"]
