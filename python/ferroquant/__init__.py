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
    dequantize,
    fake_quant,
    get_num_threads,
    nuq,
    qparams_from_range,
    quantize,
    set_num_threads,
)

__all__ = [
    "ArqResult",
    "NuqResult",
    "QParams",
    "QuantError",
    "__version__",
    "arq",
    "dequantize",
    "errors",
    "fake_quant",
    "get_num_threads",
    "nuq",
    "ops",
    "qparams_from_range",
    "quantize",
    "reference",
    "set_num_threads",
]
