"""Weight-only group-wise quantization for MatMul/Gemm weights (RTN, GPTQ, AWQ) and the per-channel activation
statistics of outlier balancing (SmoothQuant).

Layout (see ``rust/ferroquant-core/src/groupwise.rs``): a weight is ``[K, N]`` as ONNX MatMul's ``B`` (K inputs,
the reduction dimension; N outputs; a Gemm with ``transB=1`` holds the transpose). Groups run along K, the last
one shorter when ``group_size`` does not divide K. Codes are uint8 ``[K, N]`` in ``0 .. 2**bits - 1`` with a
uint8 zero point per group (``MatMulNBits``' convention; symmetric groups use ``2**(bits-1)``); scales and zero
points are ``[G, N]`` with ``G = ceil(K / group_size)`` -- the shape of an opset-21 blocked ``DequantizeLinear``
on ``B`` with ``axis=0``. ``MatMulNBits`` wants ``[N, G]`` (``GroupQuant.scale.T``) and codes per output row.

Every function has a NumPy twin of the same name and signature (less ``name``) in :mod:`ferroquant.reference`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ferroquant import _native
from ferroquant._arrays import as_f32, named
from ferroquant.errors import EmptyInputError, NonFiniteError, ParameterError, ShapeError

SCALE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class GroupSpec:
    """How a weight is quantized group-wise: ``bits`` in 2..8, ``group_size`` >= 1 inputs per group,
    ``symmetric`` (zero point ``2**(bits-1)``) or asymmetric (an integer zero point per group), and the dtype the
    scales are stored in (``"float16"`` rounds each scale before the codes are computed, so deployment matches).
    """

    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    scale_dtype: str = "float32"

    def __post_init__(self) -> None:
        if not (isinstance(self.bits, int) and 2 <= self.bits <= 8):
            raise ParameterError(f"GroupSpec.bits must be an int in [2, 8], got {self.bits!r}")
        if not (isinstance(self.group_size, int) and self.group_size >= 1):
            raise ParameterError(f"GroupSpec.group_size must be an int >= 1, got {self.group_size!r}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ParameterError(f"GroupSpec.scale_dtype must be one of {SCALE_DTYPES}, got {self.scale_dtype!r}")

    @property
    def scale_f16(self) -> bool:
        return self.scale_dtype == "float16"

    def groups(self, k: int) -> int:
        return -(-k // self.group_size)

    def native(self) -> dict:
        return dict(bits=self.bits, group_size=self.group_size, symmetric=self.symmetric, scale_f16=self.scale_f16)


@dataclass(frozen=True)
class ClipSearch:
    """The per-group clip search: ranges shrunk by ``r = 1 - i/n_grid`` for ``i < floor(max_shrink * n_grid)``
    (llm-awq's ``auto_clip`` grid: 1.0, 0.95, ..., 0.55); the first minimum wins. ``refine`` (asymmetric
    groups): then the upper bound's ratio over the same grid with the lower one kept, then the lower one's with
    the upper kept, each keeping only strict improvements per column (False: llm-awq's search exactly)."""

    n_grid: int = 20
    max_shrink: float = 0.5
    refine: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.refine, bool):
            raise ParameterError(f"ClipSearch.refine must be a bool, got {self.refine!r}")
        if not (isinstance(self.n_grid, int) and self.n_grid >= 1):
            raise ParameterError(f"ClipSearch.n_grid must be an int >= 1, got {self.n_grid!r}")
        if not 0.0 <= self.max_shrink < 1.0:
            raise ParameterError(f"ClipSearch.max_shrink must lie in [0, 1), got {self.max_shrink!r}")


@dataclass(frozen=True)
class GroupQuant:
    """A group-quantized ``[K, N]`` weight: ``w ~ (codes - zero_point[g]) * scale[g]`` for the rows of group g."""

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    spec: GroupSpec

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def signed_codes(self) -> np.ndarray:
        """Codes as signed integers (ONNX ``int4``/``int8`` with zero point ``zero_point - 2**(bits-1)``)."""
        return (self.codes.astype(np.int16) - (1 << (self.spec.bits - 1))).astype(np.int8)

    def dequantize(self) -> np.ndarray:
        """The float32 ``[K, N]`` weight the codes stand for."""
        return dequantize_groupwise(self)


@dataclass(frozen=True)
class GptqResult:
    """GPTQ's quantized weight; ``perm`` is the processing order when ``act_order`` (None otherwise); ``dead``
    lists the inputs whose Hessian diagonal was zero (quantized as zero); ``damp`` the value added to diag(H)."""

    quant: GroupQuant
    perm: Optional[np.ndarray]
    dead: np.ndarray
    damp: float


@dataclass(frozen=True)
class AwqResult:
    """AWQ's per-input-channel scales (``[K]``: divide the input by them, or fold ``1/s`` into the op producing
    it; the weight rows were multiplied), the alpha chosen, the grid and its output errors, and the
    group-quantized ``W * s``."""

    channel_scale: np.ndarray
    alpha: float
    alphas: np.ndarray
    losses: np.ndarray
    quant: GroupQuant


@dataclass(frozen=True)
class SmoothResult:
    """SmoothQuant balancing: ``channel_scale`` ``[K]`` (divide activations, multiply weight rows), the alpha
    chosen, the grid with its output errors after int8 fake-quantization, and the error without balancing."""

    channel_scale: np.ndarray
    alpha: float
    alphas: np.ndarray
    losses: np.ndarray
    loss_unbalanced: float


def _weight(w: object) -> np.ndarray:
    a = as_f32(w, "w")
    if a.ndim != 2:
        raise ShapeError(f"w must be a 2-D [K, N] MatMul weight, got shape {a.shape}")
    return a


def _rows(x: object, k: int, what: str = "x") -> np.ndarray:
    a = as_f32(x, what)
    if a.shape[-1] != k:
        raise ShapeError(f"{what} must have K={k} values in its last axis, got shape {a.shape}")
    return a.reshape(-1, k)


def _located(e: NonFiniteError, x: np.ndarray) -> NonFiniteError:
    """``e`` with the row and channel of the first non-finite value of the ``[rows, K]`` batch ``x``."""
    r, c = np.argwhere(~np.isfinite(x))[0]
    return NonFiniteError(f"{e} (row {r}, channel {c} of a [{x.shape[0]}, {x.shape[1]}] batch)")


def _quant(q: "_native.GroupQuant", spec: GroupSpec) -> GroupQuant:
    scale = q.scales.astype(np.float16) if spec.scale_f16 else q.scales
    return GroupQuant(q.codes, scale, q.zero_points, spec)


def quantize_groupwise(w: object, spec: GroupSpec = GroupSpec(), clip: Optional[ClipSearch] = None,
                       name: Optional[str] = None) -> GroupQuant:
    """Round to nearest per group of ``spec.group_size`` inputs (per-group min/max, or the MSE clip search)."""
    with named(name):
        return _quant(_native.quantize_groupwise(_weight(w), spec, clip), spec)


def dequantize_groupwise(quant: GroupQuant) -> np.ndarray:
    """``(codes - zero_point) * scale`` as float32 ``[K, N]``."""
    return _native.dequantize_groupwise(np.ascontiguousarray(quant.codes, np.uint8),
                                        np.ascontiguousarray(quant.scale, np.float32),
                                        np.ascontiguousarray(quant.zero_point, np.uint8), quant.spec.group_size)


def hessian_update(h: np.ndarray, x: object, name: Optional[str] = None) -> np.ndarray:
    """Add ``xᵀx`` (``x`` ``[..., K]`` calibration rows, float64 accumulation) to ``h`` in place; returns ``h``."""
    if not (isinstance(h, np.ndarray) and h.dtype == np.float64 and h.ndim == 2 and h.flags.c_contiguous):
        raise ShapeError("h must be a C-contiguous float64 [K, K] array")
    with named(name):
        xr = _rows(x, h.shape[1])
        try:
            _native.hessian_update(h, xr)
        except NonFiniteError as e:
            raise _located(e, xr) from None
    return h


class HessianAccumulator:
    """GPTQ's Hessian ``H = 2/n · Σ XᵀX`` over calibration rows, batch after batch, in O(K²) memory. ``name``
    (the layer) is named in errors; NaN/Inf in a batch raise and leave the sum unchanged."""

    def __init__(self, k: int, name: Optional[str] = None) -> None:
        if k < 1:
            raise ParameterError(f"HessianAccumulator needs K >= 1, got {k}")
        self.name = name
        self.sum = np.zeros((k, k), np.float64)
        self.rows = 0

    def observe(self, x: object) -> None:
        label = f"{self.name} (calibration activations)" if self.name else "calibration activations"
        hessian_update(self.sum, x, label)
        self.rows += int(np.asarray(x).size // self.sum.shape[0])

    def merge(self, other: "HessianAccumulator") -> None:
        if other.sum.shape != self.sum.shape:
            raise ShapeError(f"cannot merge Hessians of shapes {self.sum.shape} and {other.sum.shape}")
        self.sum += other.sum
        self.rows += other.rows

    def hessian(self) -> np.ndarray:
        if self.rows == 0:
            raise EmptyInputError(f"no calibration rows observed{' for ' + repr(self.name) if self.name else ''}")
        return self.sum * (2.0 / self.rows)

    def state_dict(self) -> dict:
        return {"sum": self.sum.copy(), "rows": self.rows, "name": self.name}

    @classmethod
    def from_state_dict(cls, state: dict) -> "HessianAccumulator":
        acc = cls(state["sum"].shape[0], state.get("name"))
        acc.sum[...] = state["sum"]
        acc.rows = int(state["rows"])
        return acc


def gptq(w: object, hessian: object, spec: GroupSpec = GroupSpec(), percdamp: float = 0.01,
         act_order: bool = False, block_size: int = 128, name: Optional[str] = None) -> GptqResult:
    """GPTQ of a ``[K, N]`` weight given its ``[K, K]`` Hessian (``HessianAccumulator.hessian()``)."""
    with named(name):
        a = _weight(w)
        h = np.ascontiguousarray(hessian, np.float64)
        r = _native.gptq(a, h, spec, percdamp=float(percdamp), block_size=int(block_size),
                         act_order=bool(act_order))
        return GptqResult(_quant(r.quant, spec), r.perm if act_order else None, r.dead, float(r.damp))


def _check_acts(x: np.ndarray, name: Optional[str]) -> None:
    with named(f"{name} (calibration activations)" if name else "calibration activations"):
        try:
            _native.min_max(x, None)
        except NonFiniteError as e:
            raise _located(e, x) from None


def awq(w: object, x: object, spec: GroupSpec = GroupSpec(), n_grid: int = 20,
        clip: Optional[ClipSearch] = ClipSearch(), name: Optional[str] = None) -> AwqResult:
    """AWQ of a ``[K, N]`` weight with calibration rows ``x`` ``[..., K]`` of its input: the scale search over
    ``alpha = i / n_grid`` then (unless ``clip`` is None) the per-group clip search, both by output error."""
    a = _weight(w)
    xr = _rows(x, a.shape[0])
    _check_acts(xr, name)
    with named(name):
        r = _native.awq(a, xr, spec, int(n_grid), clip)
        f = r.search
        return AwqResult(f.scales, float(f.alpha), f.alphas, f.losses, _quant(r.quant, spec))


def channel_stats_update(min: np.ndarray, max: np.ndarray, abs_sum: np.ndarray, x: object,
                         name: Optional[str] = None) -> int:
    """Fold the batch ``x`` ``[..., C]`` into running per-channel (min, max, abs_sum) in place; returns rows."""
    with named(name):
        xr = _rows(x, min.shape[0])
        try:
            return int(_native.channel_stats_update((min, max, abs_sum), xr))
        except NonFiniteError as e:
            raise _located(e, xr) from None


def channel_stats_merge(min: np.ndarray, max: np.ndarray, abs_sum: np.ndarray, min2: np.ndarray, max2: np.ndarray,
                        abs_sum2: np.ndarray, name: Optional[str] = None) -> None:
    """Fold the statistics ``(min2, max2, abs_sum2)`` into ``(min, max, abs_sum)`` in place."""
    with named(name):
        if min2.shape != min.shape:
            raise ShapeError(f"cannot merge statistics of {min2.shape[0]} channels into {min.shape[0]}")
        _native.channel_stats_merge((min, max, abs_sum), (min2, max2, abs_sum2))


@dataclass
class ChannelStats:
    """Streaming per-channel statistics over the last axis (min, max, abs-max, mean |x|), mergeable."""

    channels: int
    name: Optional[str] = None
    min: np.ndarray = field(init=False)
    max: np.ndarray = field(init=False)
    abs_sum: np.ndarray = field(init=False)
    count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ParameterError(f"ChannelStats needs channels >= 1, got {self.channels}")
        self.min = np.full(self.channels, np.inf, np.float32)
        self.max = np.full(self.channels, -np.inf, np.float32)
        self.abs_sum = np.zeros(self.channels, np.float64)

    def observe(self, x: object) -> None:
        self.count += channel_stats_update(self.min, self.max, self.abs_sum, x, self.name)

    def merge(self, other: "ChannelStats") -> None:
        channel_stats_merge(self.min, self.max, self.abs_sum, other.min, other.max, other.abs_sum, self.name)
        self.count += other.count

    @property
    def absmax(self) -> np.ndarray:
        return np.maximum(np.abs(self.min), np.abs(self.max))

    @property
    def mean_abs(self) -> np.ndarray:
        if self.count == 0:
            raise EmptyInputError("no activations observed")
        return self.abs_sum / self.count

    def state_dict(self) -> dict:
        return {"min": self.min.copy(), "max": self.max.copy(), "abs_sum": self.abs_sum.copy(), "count": self.count}


DEFAULT_ALPHAS: Sequence[float] = tuple(i / 20 for i in range(21))


def smooth_search(act_absmax: object, w: object, x: object, alphas: Sequence[float] = DEFAULT_ALPHAS,
                  bits: int = 8, w_bits: Optional[int] = None, name: Optional[str] = None) -> SmoothResult:
    """SmoothQuant balancing for a ``[K, N]`` weight: ``s_j = max|X_j|^a / max|W_j|^(1-a)``, ``a`` from
    ``alphas`` by the output error on rows ``x`` after fake-quantization of the activations to int``bits`` per
    tensor and of the weights to int``w_bits`` (``bits`` when None; 7 where the CPU's kernels take 7-bit weights)
    per output column. ``act_absmax`` is ``ChannelStats.absmax`` from the calibration run."""
    a = _weight(w)
    act = np.ascontiguousarray(as_f32(act_absmax, "act_absmax").reshape(-1))
    xr = _rows(x, a.shape[0])
    _check_acts(xr, name)
    with named(name):
        r = _native.smooth_search(act, a, xr, [float(v) for v in alphas], int(bits),
                                  None if w_bits is None else int(w_bits))
        f = r.search
        return SmoothResult(f.scales, float(f.alpha), f.alphas, f.losses, float(r.loss_unbalanced))


__all__ = [
    "AwqResult",
    "ChannelStats",
    "DEFAULT_ALPHAS",
    "ClipSearch",
    "GptqResult",
    "GroupQuant",
    "GroupSpec",
    "HessianAccumulator",
    "SmoothResult",
    "awq",
    "channel_stats_merge",
    "channel_stats_update",
    "dequantize_groupwise",
    "gptq",
    "hessian_update",
    "quantize_groupwise",
    "smooth_search",
]
