"""Quantization-aware training and PTQ for PyTorch models (needs the ``torch`` extra).

AMCT-style flow: :func:`create_quant_retrain_config` -> :func:`create_quant_retrain_model` (BN folded, layers
swapped for ULQ/ARQ-retrain/LSQ versions) -> train -> :func:`save_quant_retrain_model` (fake-quant model,
deploy model, record, through the same ONNX exporters as the ONNX PTQ flow); :func:`restore_quant_retrain_model`
resumes from a checkpoint. :func:`quantize_torch_model` is PTQ for torch models with forward pre-hooks;
:func:`quantize_torch_weights_only` is group-wise weight-only RTN/GPTQ/AWQ of their ``nn.Linear`` layers.
"""

from __future__ import annotations

from ferroquant._extras import require_extra

require_extra("torch", "torch", "ferroquant.torch")

from ferroquant.torch.export import (
    export_float_onnx,
    restore_quant_retrain_model,
    retrain_table,
    save_quant_retrain_model,
)
from ferroquant.torch.functions import arq_retrain, lsq, ulq
from ferroquant.torch.modules import ActivationULQ, ArqRetrainWeight, LsqWeight, QuantLayer
from ferroquant.torch.prepare import (
    RetrainConfig,
    analyse,
    create_quant_retrain_config,
    create_quant_retrain_model,
    fold_batch_norm_,
    load_retrain_config,
    quant_layers,
)
from ferroquant.torch.ptq import TorchPtqResult, quantize_torch_model
from ferroquant.torch.weight_only import TorchWeightOnlyResult, WeightOnlyLinear, quantize_torch_weights_only

__all__ = [
    "ActivationULQ",
    "ArqRetrainWeight",
    "LsqWeight",
    "QuantLayer",
    "RetrainConfig",
    "TorchPtqResult",
    "TorchWeightOnlyResult",
    "WeightOnlyLinear",
    "analyse",
    "arq_retrain",
    "create_quant_retrain_config",
    "create_quant_retrain_model",
    "export_float_onnx",
    "fold_batch_norm_",
    "load_retrain_config",
    "lsq",
    "quant_layers",
    "quantize_torch_model",
    "quantize_torch_weights_only",
    "restore_quant_retrain_model",
    "retrain_table",
    "save_quant_retrain_model",
    "ulq",
]
