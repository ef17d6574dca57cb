"""ferroquant: model quantization (ARQ, NUQ, IFMR, HFMG, ULQ) with a Rust core."""

from __future__ import annotations

from ferroquant import errors, ops, reference
from ferroquant._native import __version__
from ferroquant.errors import QuantError
from ferroquant.ops import (
    ArqResult,
    NuqResult,
    QParams,
    arq,
    get_num_threads,
    nuq,
    qparams_from_range,
    set_num_threads,
)


def quantize(model, calibration_data, output_path, config=None, **options):  # noqa: ANN001, ANN201
    """Post-training quantization of an ONNX model in one call (see :func:`ferroquant.onnx.quantize`):
    calibrate on ``calibration_data`` (iterable of ``{input: array}``, a callable, or an onnxruntime
    ``CalibrationDataReader``) and write the int8 deploy model to ``output_path``, with the fake-quant model
    and the record beside it. Array quantization lives in :mod:`ferroquant.ops`."""
    from ferroquant.onnx.api import quantize as onnx_quantize

    return onnx_quantize(model, calibration_data, output_path, config, **options)


__all__ = [
    "ArqResult",
    "NuqResult",
    "QParams",
    "QuantError",
    "__version__",
    "arq",
    "errors",
    "get_num_threads",
    "nuq",
    "ops",
    "qparams_from_range",
    "quantize",
    "reference",
    "set_num_threads",
]
