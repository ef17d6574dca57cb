"""The framework-neutral middle: the layer registry, the quantization table, the calibrator factory with its
memory budget, the weight and bias quantizers, and the arithmetic of BatchNormalization folding. The ONNX and
torch front ends both use it; it imports neither (no onnx, no torch)."""

from __future__ import annotations

from ferroquant.quant.registry import QUANTIZABLE_TYPES, REGISTRY, LayerType, Placement, layer_type
from ferroquant.quant.table import ActivationQuant, BiasQuant, LayerInfo, LayerQuant, QuantTable, WeightQuant

__all__ = ["QUANTIZABLE_TYPES", "REGISTRY", "ActivationQuant", "BiasQuant", "LayerInfo", "LayerQuant", "LayerType",
           "Placement", "QuantTable", "WeightQuant", "layer_type"]
