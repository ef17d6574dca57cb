"""Reference networks built as ONNX graphs from weights that install offline (no torch)."""

from __future__ import annotations

from ferroquant.models.mobilenet_v2 import INVERTED_RESIDUAL_SETTING, mobilenet_v2_onnx

__all__ = ["INVERTED_RESIDUAL_SETTING", "mobilenet_v2_onnx"]
