"""Typed array API over the native kernels: the one door to :mod:`ferroquant._native`.

Every function here has a NumPy twin of the same name and signature in :mod:`ferroquant.reference` that
specifies it (and returns the same types, :mod:`ferroquant.ops.types`); the tests check that the two agree
(integer codes bit for bit). :func:`backend` picks either by name, so code that can run on both (the
calibrators) switches in one place. Float arrays are taken without a copy when they are C-contiguous float32;
float16 and float64 are converted once; any other dtype raises :class:`DTypeError`. Integer parameters are
checked, not truncated or wrapped. The native work runs with the GIL released; clip searches can be
interrupted with Ctrl-C.

- :mod:`.affine`: qparams, quantize, dequantize, fake-quant;
- :mod:`.weights`: ARQ, NUQ;
- :mod:`.histogram`: the streaming histogram, HFMG, percentile, KL;
- :mod:`.ifmr`: IFMR on data or on a histogram;
- :mod:`.qat`: ULQ and LSQ kernels of quantization-aware training;
- :mod:`.metrics`: compare (SQNR, cosine);
- :mod:`.groupwise`: weight-only group-wise RTN, GPTQ (streaming Hessian), AWQ, and SmoothQuant's per-channel
  statistics and balancing search.
"""

from __future__ import annotations

import sys
from types import ModuleType

from ferroquant import _native
from ferroquant._arrays import int_param
from ferroquant.errors import ParameterError
from ferroquant.ops import groupwise as _groupwise
from ferroquant.ops.affine import dequantize, fake_quant, min_max, qparams_from_data, qparams_from_range, quantize
from ferroquant.ops.groupwise import (
    DEFAULT_ALPHAS,
    AwqResult,
    ChannelStats,
    ClipSearch,
    GptqResult,
    GroupQuant,
    GroupSpec,
    HessianAccumulator,
    SmoothResult,
    awq,
    channel_stats_merge,
    channel_stats_update,
    dequantize_groupwise,
    gptq,
    hessian_update,
    quantize_groupwise,
    smooth_search,
)
from ferroquant.ops.histogram import (
    hfmg_candidates,
    hfmg_losses,
    hfmg_search,
    hfmg_search_many,
    histogram_merge,
    histogram_observe,
    histogram_observe_many,
    kl_divergences,
    kl_search,
    percentile_clip,
)
from ferroquant.ops.ifmr import ifmr, ifmr_histogram
from ferroquant.ops.metrics import compare
from ferroquant.ops.qat import lsq_backward, ulq_backward, ulq_fake_quant
from ferroquant.ops.types import (
    ArqResult,
    Clip,
    Comparison,
    HfmgSearch,
    Histogram,
    IfmrOptions,
    IfmrResult,
    NuqResult,
    QParams,
    UlqBackward,
    UlqForward,
)
from ferroquant.ops.weights import arq, nuq

BACKENDS = ("native", "reference")


def backend(name: str = "native") -> ModuleType:
    """The kernels by name: ``native`` (this module) or ``reference`` (the NumPy twins: same signatures, same
    result types, slow on purpose)."""
    if name == "native":
        return sys.modules[__name__]
    if name == "reference":
        from ferroquant import reference

        return reference
    raise ParameterError(f"backend must be one of {BACKENDS}, got {name!r}")


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in native kernels (0: one per core). Results do not depend on it."""
    _native.set_num_threads(int_param(n, "n", 0, 1 << 16))


def get_num_threads() -> int:
    return int(_native.get_num_threads())


__all__ = sorted([
    "ArqResult",
    "BACKENDS",
    "Clip",
    "Comparison",
    "HfmgSearch",
    "Histogram",
    "IfmrOptions",
    "IfmrResult",
    "NuqResult",
    "QParams",
    "UlqBackward",
    "UlqForward",
    "arq",
    "backend",
    "compare",
    "dequantize",
    "fake_quant",
    "get_num_threads",
    "hfmg_candidates",
    "hfmg_losses",
    "hfmg_search",
    "hfmg_search_many",
    "histogram_merge",
    "histogram_observe",
    "histogram_observe_many",
    "ifmr",
    "ifmr_histogram",
    "kl_divergences",
    "kl_search",
    "lsq_backward",
    "min_max",
    "nuq",
    "percentile_clip",
    "qparams_from_data",
    "qparams_from_range",
    "quantize",
    "set_num_threads",
    "ulq_backward",
    "ulq_fake_quant",
] + _groupwise.__all__)
