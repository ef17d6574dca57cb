"""Type stubs of the native module (rust/ferroquant-py). Private: use ferroquant.ops."""

from typing import Any, Optional, Union

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
Codes = Union[npt.NDArray[np.int8], npt.NDArray[np.int16], npt.NDArray[np.int32]]

__version__: str

def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def qparams_from_range(lo: float, hi: float, bits: int = 8, symmetric: bool = True) -> tuple[float, int]: ...
def min_max(x: F32, axis: Optional[int] = None) -> tuple[F32, F32]: ...
def qparams_from_data(
    x: F32, axis: Optional[int] = None, bits: int = 8, symmetric: bool = True
) -> tuple[F32, I32]: ...
def quantize(x: F32, scale: F32, zero_point: I32, bits: int = 8, axis: Optional[int] = None) -> Codes: ...
def dequantize(q: Codes, scale: F32, zero_point: I32, bits: int = 8, axis: Optional[int] = None) -> F32: ...
def fake_quant(x: F32, scale: F32, zero_point: I32, bits: int = 8, axis: Optional[int] = None) -> F32: ...
def arq(
    w: F32, axis: Optional[int] = 0, bits: int = 8, symmetric: bool = True
) -> tuple[F32, I32, Codes, F32]: ...
def nuq(
    w: F32, axis: Optional[int] = 0, num_steps: int = 32, num_of_iteration: int = 1
) -> tuple[I32, F32, npt.NDArray[np.int8], F32, float, int]: ...

U64 = npt.NDArray[np.uint64]

def histogram_observe(
    counts: Optional[U64], lo: float, hi: float, x: F32, nbins: Optional[int] = None, drop_nonfinite: bool = False
) -> tuple[U64, float, float]: ...
def histogram_merge(
    counts1: U64, lo1: float, hi1: float, counts2: U64, lo2: float, hi2: float
) -> tuple[U64, float, float]: ...
def hfmg_candidates(counts: U64) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
def hfmg_losses(counts: U64, lo: float, hi: float, bits: int = 8) -> npt.NDArray[np.float64]: ...
def hfmg_search(
    counts: U64, lo: float, hi: float, bits: int = 8, symmetric: bool = False, refine: bool = True
) -> tuple[float, float, float, int, float, int, bool]: ...
def percentile_clip(
    counts: U64, lo: float, hi: float, percentile: float = 99.999, bits: int = 8, symmetric: bool = True
) -> tuple[float, float, float, int]: ...
def kl_divergences(counts: U64, lo: float, hi: float, num_quantized_bins: int = 128) -> npt.NDArray[np.float64]: ...
def kl_search(
    counts: U64, lo: float, hi: float, bits: int = 8, symmetric: bool = True, num_quantized_bins: int = 128
) -> tuple[float, float, float, int, float]: ...
def ifmr(
    x: F32,
    bits: int = 8,
    symmetric: bool = False,
    max_percentile: float = 0.999999,
    min_percentile: float = 0.999999,
    search_start: float = 0.7,
    search_end: float = 1.3,
    search_step: float = 0.01,
    search_extend: bool = True,
    search_2d: bool = False,
) -> dict[str, Any]: ...
def ifmr_histogram(
    counts: Union[npt.NDArray[np.int64], npt.NDArray[np.uint64]],
    lo: float,
    hi: float,
    x: Optional[F32] = None,
    bits: int = 8,
    symmetric: bool = False,
    max_percentile: float = 0.999999,
    min_percentile: float = 0.999999,
    search_start: float = 0.7,
    search_end: float = 1.3,
    search_step: float = 0.01,
    search_extend: bool = True,
    search_2d: bool = False,
) -> dict[str, Any]: ...
def compare(reference: F32, test: F32) -> tuple[float, float, float, float, float]: ...
def ulq_fake_quant(
    x: F32, clip_min: float, clip_max: float, bits: int = 8, symmetric: bool = False
) -> tuple[F32, float, int]: ...
def ulq_backward(
    x: F32, grad: F32, clip_min: float, clip_max: float, bits: int = 8, symmetric: bool = False
) -> tuple[F32, float, float]: ...
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

class AwqOutput:
    scales: F32
    alpha: float
    alphas: F64
    losses: F64
    quant: GroupQuant

class SmoothOutput:
    scales: F32
    alpha: float
    alphas: F64
    losses: F64
    loss_unbalanced: float

def quantize_groupwise(
    w: F32,
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = True,
    scale_f16: bool = False,
    clip_grid: Optional[int] = None,
    clip_max_shrink: float = 0.5,
) -> GroupQuant: ...
def dequantize_groupwise(codes: U8, scales: F32, zero_points: U8, group_size: int) -> F32: ...
def hessian_update(h: F64, x: F32) -> int: ...
def gptq(
    w: F32,
    h: F64,
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = True,
    scale_f16: bool = False,
    percdamp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> GptqOutput: ...
def awq(
    w: F32,
    x: F32,
    bits: int = 4,
    group_size: int = 128,
    symmetric: bool = True,
    scale_f16: bool = False,
    n_grid: int = 20,
    clip_grid: Optional[int] = 20,
    clip_max_shrink: float = 0.5,
) -> AwqOutput: ...
def channel_stats_update(min: F32, max: F32, abs_sum: F64, x: F32) -> int: ...
def channel_stats_merge(min: F32, max: F32, abs_sum: F64, min2: F32, max2: F32, abs_sum2: F64) -> None: ...
def smooth_search(act_absmax: F32, w: F32, x: F32, alphas: list[float], bits: int = 8) -> SmoothOutput: ...
