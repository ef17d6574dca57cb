"""ONNX front end: load/check/upgrade/save models, a small graph view, BatchNormalization fusion, QDQ export
(:mod:`~ferroquant.onnx.qdq`) and the quantization record (:mod:`~ferroquant.onnx.record`).

Needs the ``onnx`` extra (``pip install ferroquant[onnx]``); the core package does not import this module.
"""

from __future__ import annotations

from ferroquant._extras import require_extra

require_extra("onnx", "onnx", "ferroquant.onnx")

from ferroquant.onnx.fusion import (
    Folded,
    FusionReport,
    Skipped,
    fold_batch_norm_add,
    fold_batch_norm_mul,
    fold_conv_batch_norm,
    fuse,
)
from ferroquant.onnx.graph import GraphView, ensure_node_names, node_label
from ferroquant.onnx.api import (
    PreparedModel,
    create_quant_config,
    prepare_model,
    quantize,
    quantize_model,
    quantize_weight_only,
    save_model,
    write_outputs,
)
from ferroquant.onnx.calibration import CalibratedModel
from ferroquant.onnx.dynamic import quantize_dynamic
from ferroquant.onnx.io import ConstantsReport, constants_to_initializers, load_model, save_onnx
from ferroquant.onnx.layers import quantizable_layers
from ferroquant.onnx.qdq import export_deploy, export_fake_quant
from ferroquant.onnx.record import RecordError, read_record, record_dict, write_record
from ferroquant.onnx.weight_only import WeightOnlyModel, export_weight_only, save_weight_only
from ferroquant.quant.table import LayerInfo, QuantTable

__all__ = [
    "ConstantsReport",
    "Folded",
    "FusionReport",
    "GraphView",
    "RecordError",
    "Skipped",
    "constants_to_initializers",
    "ensure_node_names",
    "export_deploy",
    "export_fake_quant",
    "fold_batch_norm_add",
    "fold_batch_norm_mul",
    "fold_conv_batch_norm",
    "fuse",
    "load_model",
    "node_label",
    "read_record",
    "record_dict",
    "save_model",
    "write_outputs",
    "PreparedModel",
    "prepare_model",
    "save_onnx",
    "CalibratedModel",
    "LayerInfo",
    "QuantTable",
    "create_quant_config",
    "quantize",
    "quantize_dynamic",
    "quantize_model",
    "quantize_weight_only",
    "quantizable_layers",
    "WeightOnlyModel",
    "export_weight_only",
    "save_weight_only",
    "write_record",
]
