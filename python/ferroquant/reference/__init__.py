"""NumPy twins of every native kernel. Each one specifies its Rust counterpart (named in its docstring) and has
the signature and result types of its :mod:`ferroquant.ops` counterpart (less ``name``), so
``ferroquant.ops.backend("reference")`` stands in for the native kernels; the tests check that the two agree.
Slow on purpose: clarity first, vectorized where that stays readable."""

from ferroquant.reference.affine import dequantize, fake_quant, quantize
from ferroquant.reference.arq import arq
from ferroquant.reference.baselines import fold_abs, kl_divergences, kl_search, percentile_clip
from ferroquant.reference.hfmg import hfmg_candidates, hfmg_losses, hfmg_search, hfmg_search_many
from ferroquant.reference.histogram import histogram_build, histogram_merge, histogram_observe, histogram_observe_many
from ferroquant.reference.ifmr import histogram_init, ifmr, ifmr_histogram, percentile_init
from ferroquant.reference.metrics import compare
from ferroquant.reference.nuq import nuq, select_levels
from ferroquant.reference.qparams import min_max, qparams_from_data, qparams_from_range
from ferroquant.reference.ulq import lsq_backward, ulq_backward, ulq_fake_quant
from ferroquant.reference import weight_only as _weight_only
from ferroquant.reference.weight_only import (
    awq,
    channel_stats_merge,
    channel_stats_update,
    dequantize_groupwise,
    gptq,
    hessian_update,
    quantize_groupwise,
    smooth_search,
)

__all__ = sorted([
    "arq",
    "compare",
    "dequantize",
    "fake_quant",
    "fold_abs",
    "hfmg_candidates",
    "hfmg_losses",
    "hfmg_search",
    "hfmg_search_many",
    "histogram_build",
    "histogram_init",
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
    "percentile_init",
    "qparams_from_data",
    "qparams_from_range",
    "quantize",
    "select_levels",
    "ulq_backward",
    "ulq_fake_quant",
] + _weight_only.__all__)
