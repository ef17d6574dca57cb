"""NumPy twins of every native kernel. Each one specifies its Rust counterpart (named in its docstring); the
tests check that the two agree. Slow on purpose: clarity first, vectorized where that stays readable."""

from ferroquant.reference.affine import dequantize, fake_quant, quantize
from ferroquant.reference.arq import arq
from ferroquant.reference.ifmr import histogram_init, ifmr, ifmr_histogram, percentile_init
from ferroquant.reference.nuq import nuq, select_levels
from ferroquant.reference.qparams import min_max, qparams_from_data, qparams_from_range

__all__ = [
    "arq",
    "dequantize",
    "fake_quant",
    "histogram_init",
    "ifmr",
    "ifmr_histogram",
    "min_max",
    "nuq",
    "percentile_init",
    "qparams_from_data",
    "qparams_from_range",
    "quantize",
    "select_levels",
]
