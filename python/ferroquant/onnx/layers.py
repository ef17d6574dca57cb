"""Which nodes of a graph are quantizable layers, and the table of qparams that calibration fills in and the
exporters consume (graph passes never compute qparams themselves)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import onnx

from ferroquant.onnx.graph import GraphView, get_attr, node_label

QUANTIZABLE_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class LayerInfo:
    """A quantizable node: its activation input, constant weight and optional bias, and the weight's
    output-channel axis in ONNX layout (Conv 0; ConvTranspose 1, per group; Gemm 0 with transB else 1;
    MatMul the last axis)."""

    name: str
    op_type: str
    activation: str
    weight: str
    bias: Optional[str]
    axis: int
    groups: int = 1


def _weight_axis(node: onnx.NodeProto, w: np.ndarray) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if get_attr(node, "transB", 0) else 1
    return w.ndim - 1  # MatMul [.., K, N]: one scale per output feature


def quantizable_layers(model: onnx.ModelProto) -> List[LayerInfo]:
    """Conv, ConvTranspose, Gemm and MatMul nodes whose weight (input 1) is a constant initializer, in graph
    order. Gemm with transA or a weight that is not 2-D, and MatMul with a 1-D weight, are left out."""
    view = GraphView(model)
    out: List[LayerInfo] = []
    for node in view.nodes():
        if node.op_type not in QUANTIZABLE_TYPES or len(node.input) < 2:
            continue
        w = view.array(node.input[1])
        if w is None or w.dtype.kind != "f" or view.array(node.input[0]) is not None:
            continue
        if node.op_type == "Gemm" and (get_attr(node, "transA", 0) or w.ndim != 2):
            continue
        if node.op_type == "MatMul" and w.ndim < 2:
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] and node.op_type != "MatMul" else None
        if bias is not None and view.array(bias) is None:
            bias = None
        groups = int(get_attr(node, "group", 1)) if node.op_type == "ConvTranspose" else 1
        out.append(LayerInfo(node_label(node), node.op_type, node.input[0], node.input[1], bias,
                             _weight_axis(node, w), groups))
    return out


@dataclass(frozen=True)
class ActivationQuant:
    """Qparams of a layer's input tensor (shared by every layer that reads the same tensor)."""

    tensor: str
    scale: float
    zero_point: int
    bits: int
    algorithm: str
    clip_min: float
    clip_max: float
    details: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightQuant:
    """Qparams and integer codes of a layer's weight, in the weight's ONNX layout. ``axis`` is None for one
    scale for the whole tensor; ``codes`` are int8 (values fit ``bits``)."""

    tensor: str
    scale: np.ndarray
    zero_point: np.ndarray
    axis: Optional[int]
    bits: int
    algorithm: str
    codes: np.ndarray
    levels: Optional[np.ndarray] = None  # NUQ: the int8 levels kept


@dataclass(frozen=True)
class LayerQuant:
    layer: LayerInfo
    activation: ActivationQuant
    weight: WeightQuant


@dataclass
class QuantTable:
    """Everything the exporters need: one :class:`LayerQuant` per quantized layer, by node name."""

    layers: Dict[str, LayerQuant] = field(default_factory=dict)

    def activations(self) -> Dict[str, ActivationQuant]:
        """One entry per quantized activation tensor."""
        return {lq.activation.tensor: lq.activation for lq in self.layers.values()}
