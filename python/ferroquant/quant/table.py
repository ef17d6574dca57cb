"""The quantization table: what calibration and weight quantization decided, per layer, in plain numbers and
arrays. Front ends fill it (ONNX calibration, torch hooks, QAT), exporters and the record read it; nobody
downstream of the table does quantization arithmetic (bias codes are in it too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ferroquant.quant.registry import LayerType, layer_type


@dataclass(frozen=True)
class LayerInfo:
    """A quantizable layer: its activation input tensor, constant weight and optional bias (tensor names), and the
    weight's output-channel axis in the op's layout (from the registry: Conv 0; ConvTranspose 1, per group;
    Gemm 0 with transB else 1; MatMul the last axis)."""

    name: str
    op_type: str
    activation: str
    weight: str
    bias: Optional[str]
    axis: int
    groups: int = 1

    @property
    def type(self) -> LayerType:
        """The registry entry of the layer's op type."""
        return layer_type(self.op_type)

    def blocked(self, per_channel: bool) -> bool:
        """Per-channel weights of a grouped ConvTranspose: need blocked Q/DQ (see the registry)."""
        return self.type.blocked(self.groups, per_channel)


@dataclass(frozen=True)
class ActivationQuant:
    """Qparams of a layer's input tensor (shared by every layer that reads the same tensor).

    Per-channel activations (a depthwise Conv's input, for runtimes that take them) set ``axis`` (1) and one
    scale and zero point per channel in ``channel_scales`` / ``channel_zero_points``; ``scale`` / ``zero_point``
    / ``clip_*`` then hold the per-tensor qparams of the channels' union (summaries, fallbacks)."""

    tensor: str
    scale: float
    zero_point: int
    bits: int
    algorithm: str
    clip_min: float
    clip_max: float
    details: Dict[str, Any] = field(default_factory=dict)
    axis: Optional[int] = None
    channel_scales: Optional[Tuple[float, ...]] = None
    channel_zero_points: Optional[Tuple[int, ...]] = None

    @property
    def per_channel(self) -> bool:
        return self.axis is not None


@dataclass(frozen=True)
class WeightQuant:
    """Qparams and integer codes of a layer's weight, in the weight's layout. ``axis`` is None for one scale for
    the whole tensor; ``codes`` are int8 (values fit ``bits``)."""

    tensor: str
    scale: np.ndarray
    zero_point: np.ndarray
    axis: Optional[int]
    bits: int
    algorithm: str
    codes: np.ndarray
    levels: Optional[np.ndarray] = None  # NUQ: the int8 levels kept


@dataclass(frozen=True)
class BiasQuant:
    """A bias as int32 codes ``round(b / (s_in * s_w))`` with that scale (one per output channel, or one), zero
    point 0: the QDQ bias pattern onnxruntime fuses into integer kernels."""

    tensor: str
    scale: np.ndarray
    codes: np.ndarray
    axis: Optional[int]


@dataclass(frozen=True)
class LayerQuant:
    layer: LayerInfo
    activation: ActivationQuant
    weight: WeightQuant
    bias: Optional[BiasQuant] = None


@dataclass
class QuantTable:
    """Everything the exporters need: one :class:`LayerQuant` per quantized layer, by layer name, and the qparams
    of the other activation tensors a deploy profile quantizes (layer outputs, residual Adds...), by tensor."""

    layers: Dict[str, LayerQuant] = field(default_factory=dict)
    tensors: Dict[str, ActivationQuant] = field(default_factory=dict)
    #: tensors AMCT's scale guard zeroed (:mod:`ferroquant.quant.guard`): ``[{"layer", "tensor", "kind"}]``
    scale_guard: List[Dict[str, str]] = field(default_factory=list)

    def activations(self) -> Dict[str, ActivationQuant]:
        """One entry per quantized activation tensor."""
        return {lq.activation.tensor: lq.activation for lq in self.layers.values()}

    def without(self, names: Any) -> "QuantTable":
        """The table with the layers ``names`` left out (kept in float)."""
        drop = set(names)
        return QuantTable({n: lq for n, lq in self.layers.items() if n not in drop}, dict(self.tensors),
                          [h for h in self.scale_guard if h["layer"] not in drop])


__all__ = ["ActivationQuant", "BiasQuant", "LayerInfo", "LayerQuant", "QuantTable", "WeightQuant"]
