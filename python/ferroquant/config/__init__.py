"""Configs: one package for post-training (:mod:`~ferroquant.config.ptq`) and quantization-aware training
(:mod:`~ferroquant.config.qat`), with one set of field checks and one JSON loader
(:mod:`~ferroquant.config.fields`), one vocabulary (``bits``, ``symmetric``, ``algorithm``, percentiles as
fractions), and AMCT's key names accepted by the JSON reader (:mod:`~ferroquant.config.amct`)."""

from __future__ import annotations

from ferroquant.config.fields import FieldError, check_bool, check_int, check_num, field_error, load_json
from ferroquant.config.ptq import (
    ACT_ALGORITHMS,
    CONFIG_VERSION,
    WEIGHT_ALGORITHMS,
    ActivationParams,
    LayerConfig,
    QuantConfig,
    WeightParams,
    build_config,
    config_from_json,
    load_config,
    resolve_layer,
)
from ferroquant.config.qat import (
    QAT_WEIGHT_ALGORITHMS,
    RetrainConfig,
    RetrainLayerConfig,
    RetrainWeightParams,
    UlqParams,
    load_retrain_config,
    retrain_config_from_json,
)
from ferroquant.config.weight_only import (
    WEIGHT_ONLY_ALGORITHMS,
    WEIGHT_ONLY_FORMATS,
    WeightOnlyConfig,
    load_weight_only_config,
)
from ferroquant.quant.registry import QUANTIZABLE_TYPES

__all__ = [
    "ACT_ALGORITHMS",
    "CONFIG_VERSION",
    "QAT_WEIGHT_ALGORITHMS",
    "QUANTIZABLE_TYPES",
    "WEIGHT_ALGORITHMS",
    "WEIGHT_ONLY_ALGORITHMS",
    "WEIGHT_ONLY_FORMATS",
    "ActivationParams",
    "FieldError",
    "LayerConfig",
    "QuantConfig",
    "RetrainConfig",
    "RetrainLayerConfig",
    "RetrainWeightParams",
    "UlqParams",
    "WeightOnlyConfig",
    "WeightParams",
    "build_config",
    "check_bool",
    "check_int",
    "check_num",
    "config_from_json",
    "field_error",
    "load_config",
    "load_json",
    "load_retrain_config",
    "load_weight_only_config",
    "resolve_layer",
    "retrain_config_from_json",
]
