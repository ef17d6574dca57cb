"""Type stubs of the native module (rust/ferroquant-py). Private: use ferroquant.ops.

Arguments and results are the types of ferroquant/ops/types.py: histograms and IFMR options are read by
attribute, results are built by keyword. Clip searches (hfmg_*, kl_*, ifmr*) can be interrupted with Ctrl-C.
"""

from typing import Optional, Protocol, Sequence, Union

import numpy as np
import numpy.typing as npt

from ferroquant.ops.types import (
    AdaRoundOptions,
    AdaRoundResult,
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

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
Codes = Union[npt.NDArray[np.int8], npt.NDArray[np.int16], npt.NDArray[np.int32]]

__version__: str

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def qparams_from_range(lo: float, hi: float, bits: int = 8, symmetric: bool = True) -> QParams: ...
def min_max(x: F32, axis: Optional[int] = None) -> tuple[F32, F32]: ...
def qparams_from_data(
    x: F32, axis: Optional[int] = None, bits: int = 8, symmetric: bool = True
) -> tuple[F32, I32]: ...
def quantize(x: F32, scale: F32, zero_point: I32, bits: int = 8, axis: Optional[int] = None) -> Codes: ...
def dequantize(q: Codes, scale: F32, zero_point: I32, bits: int = 8, axis: Optional[int] = None) -> F32: ...
def fake_quant(x: F32, scale: F32, zero_point: I32, bits: int = 8, axis: Optional[int] = None) -> F32: ...
def arq(w: F32, axis: Optional[int] = 0, bits: int = 8, symmetric: bool = True) -> ArqResult: ...
def output_clip_errors(x: F32, w: F32, scales: F32, zero_points: I32, bits: int, weights: F64) -> F64: ...
def adaround(w: F32, scale: F32, zero_point: I32, gram: F64, bits: int, options: AdaRoundOptions) -> AdaRoundResult: ...
def nuq(w: F32, axis: Optional[int] = 0, num_steps: int = 32, num_of_iteration: int = 1) -> NuqResult: ...
def histogram_observe(
    hist: Optional[Histogram], x: F32, nbins: Optional[int] = None, drop_nonfinite: bool = False
) -> Histogram: ...
def histogram_observe_many(
    hists: Sequence[Optional[Histogram]], xs: Sequence[F32], nbins: Optional[int] = None, drop_nonfinite: bool = False
) -> list[Histogram]: ...
def histogram_merge(a: Histogram, b: Histogram) -> Histogram: ...
def hfmg_candidates(hist: Histogram) -> tuple[I64, I64]: ...
def hfmg_losses(hist: Histogram, bits: int = 8) -> F64: ...
def hfmg_search(hist: Histogram, bits: int = 8, symmetric: bool = False, refine: bool = True) -> HfmgSearch: ...
def hfmg_search_many(
    hists: Sequence[Histogram], bits: int = 8, symmetric: bool = False, refine: bool = True
) -> list[HfmgSearch]: ...
def percentile_clip(hist: Histogram, percentile: float = 0.99999, bits: int = 8, symmetric: bool = True) -> Clip: ...
def kl_divergences(hist: Histogram, num_quantized_bins: int = 128) -> F64: ...
def kl_search(hist: Histogram, bits: int = 8, symmetric: bool = True, num_quantized_bins: int = 128) -> Clip: ...
def ifmr(x: F32, options: IfmrOptions, zeros: int = 0) -> IfmrResult: ...
def ifmr_store(buf: F32, offset: int, x: F32) -> Tuple[int, int]: ...
def ifmr_histogram(hist: Histogram, x: Optional[F32], options: IfmrOptions) -> IfmrResult: ...
def compare(reference: F32, test: F32) -> Comparison: ...
def ulq_fake_quant(x: F32, clip_min: float, clip_max: float, bits: int = 8, symmetric: bool = False) -> UlqForward: ...
def ulq_backward(
    x: F32, grad: F32, clip_min: float, clip_max: float, bits: int = 8, symmetric: bool = False
) -> UlqBackward: ...
def lsq_backward(w: F32, grad: F32, scale: F32, bits: int = 8, axis: Optional[int] = 0) -> F32: ...

# Weight-only group-wise quantization (rust/ferroquant-py/src/groupwise.rs, gptq.rs, awq.rs). Weights are [K, N]
# (ONNX MatMul B); codes uint8 [K, N]; scales float32 and zero points uint8 [ceil(K / group_size), N].
U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

class GroupQuant:
    codes: U8
    scales: F32
    zero_points: U8

class GptqOutput:
    quant: GroupQuant
    perm: I64
    dead: I64
    damp: float

class ScaleSearch:
    scales: F32
    alpha: float
    alphas: F64
    losses: F64

class AwqOutput:
    search: ScaleSearch
    quant: GroupQuant

class SmoothOutput:
    search: ScaleSearch
    loss_unbalanced: float

class _Spec(Protocol):  # ferroquant.ops.GroupSpec: read once at the boundary
    bits: int
    group_size: int
    symmetric: bool
    scale_f16: bool

class _Clip(Protocol):  # ferroquant.ops.ClipSearch
    n_grid: int
    max_shrink: float

def quantize_groupwise(w: F32, spec: _Spec, clip: Optional[_Clip] = None) -> GroupQuant: ...
def dequantize_groupwise(codes: U8, scales: F32, zero_points: U8, group_size: int) -> F32: ...
def hessian_update(h: F64, x: F32) -> int: ...
def gptq(w: F32, h: F64, spec: _Spec, percdamp: float = 0.01, block_size: int = 128,
         act_order: bool = False) -> GptqOutput: ...
def awq(w: F32, x: F32, spec: _Spec, n_grid: int = 20, clip: Optional[_Clip] = None) -> AwqOutput: ...
def channel_stats_update(stats: Tuple[F32, F32, F64], x: F32) -> int: ...
def channel_stats_merge(stats: Tuple[F32, F32, F64], other: Tuple[F32, F32, F64]) -> None: ...
def smooth_search(act_absmax: F32, w: F32, x: F32, alphas: list[float], bits: int = 8) -> SmoothOutput: ...
# Only in builds with the `debug-panic` cargo feature (the test build): panics inside the native runner.
def _debug_panic(long: bool = False) -> None: ...
