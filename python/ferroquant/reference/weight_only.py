"""The weight-only and balancing twins in one place (group-wise RTN, Hessian, GPTQ, AWQ, channel statistics,
SmoothQuant search)."""

from ferroquant.reference.awq import awq
from ferroquant.reference.gptq import gptq, hessian_update
from ferroquant.reference.groupwise import dequantize_groupwise, quantize_groupwise
from ferroquant.reference.smooth import channel_stats_merge, channel_stats_update, smooth_search

__all__ = [
    "awq",
    "channel_stats_merge",
    "channel_stats_update",
    "dequantize_groupwise",
    "gptq",
    "hessian_update",
    "quantize_groupwise",
    "smooth_search",
]
