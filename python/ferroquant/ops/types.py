"""The typed values of the native boundary, defined once: what the kernels take (:class:`Histogram`,
:class:`IfmrOptions`) and what they return. The native module (rust/ferroquant-py) builds these classes by
keyword, the NumPy twins in :mod:`ferroquant.reference` build the same ones, and :mod:`ferroquant.ops` returns
them as they come: no positional tuples of numbers, no string-keyed dicts.

This module imports neither the native module nor the reference, so both can import it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import numpy as np

from ferroquant._arrays import check_bits
from ferroquant.errors import DTypeError, ParameterError, ShapeError


def _plain_bool(v: Any, what: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ParameterError(f"{what} must be a bool, got {v!r}")
    return bool(v)


def _plain_float(v: Any, what: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ParameterError(f"{what} must be a number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of one tensor (plain Python numbers)."""

    scale: float
    zero_point: int


@dataclass(frozen=True, eq=False)
class Histogram:
    """A streaming histogram: ``counts`` (uint64) over ``len(counts)`` equal bins of ``[lo, hi]``.

    Counts are checked and converted once, here: a 1-D array of non-negative integers (a negative count, a
    float or a 2-D array raises), stored as contiguous uint64.
    """

    counts: np.ndarray
    lo: float
    hi: float

    def __post_init__(self) -> None:
        c = np.asarray(self.counts)
        if c.ndim != 1:
            raise ShapeError(f"histogram counts must be 1-D, got shape {c.shape}")
        if c.dtype.kind not in "ui":
            raise DTypeError(f"histogram counts must be integers, got {c.dtype}")
        if c.dtype.kind == "i" and c.size and int(c.min()) < 0:
            i = int(np.argmax(c < 0))
            raise ParameterError(f"histogram counts must be >= 0: counts[{i}] = {int(c[i])}")
        object.__setattr__(self, "counts", np.ascontiguousarray(c, dtype=np.uint64))
        object.__setattr__(self, "lo", _plain_float(self.lo, "histogram lo"))
        object.__setattr__(self, "hi", _plain_float(self.hi, "histogram hi"))

    @property
    def nbins(self) -> int:
        return int(self.counts.size)

    @property
    def total(self) -> int:
        """Number of values counted (exact: a Python integer)."""
        return int(self.counts.sum(dtype=np.uint64))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self.lo, self.hi) == (other.lo, other.hi) and np.array_equal(self.counts, other.counts)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class HfmgSearch:
    """What the HFMG search returns (spec §4): the clip ``[clip_min, clip_max]`` (the edges of bins
    ``left..=right``), its qparams, its L2 ``loss``, the index of AMCT's winning candidate, and whether the
    refinement moved the bounds away from it."""

    clip_min: float
    clip_max: float
    scale: float
    zero_point: int
    loss: float
    index: int
    refined: bool
    left: int
    right: int


@dataclass(frozen=True)
class Clip:
    """A clip range found on a histogram (percentile, KL) with its qparams; ``loss`` is the KL divergence of
    the chosen threshold, None for methods without a loss."""

    clip_min: float
    clip_max: float
    scale: float
    zero_point: int
    loss: Optional[float] = None


@dataclass(frozen=True)
class IfmrOptions:
    """IFMR's options (spec §3.4), one object for both kernels. The defaults are AMCT's (with an offset,
    8 bits) plus the window extension (decision 10; ``search_extend=False`` is AMCT exactly). Types are checked
    here; ranges by the kernels (a bad value raises :class:`ParameterError` naming it)."""

    bits: int = 8
    symmetric: bool = False
    max_percentile: float = 0.999999
    min_percentile: float = 0.999999
    search_start: float = 0.7
    search_end: float = 1.3
    search_step: float = 0.01
    search_extend: bool = True
    search_2d: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_bits(self.bits))
        for f in ("symmetric", "search_extend", "search_2d"):
            object.__setattr__(self, f, _plain_bool(getattr(self, f), f))
        for f in ("max_percentile", "min_percentile", "search_start", "search_end", "search_step"):
            object.__setattr__(self, f, _plain_float(getattr(self, f), f))


@dataclass(frozen=True)
class IfmrResult:
    """What IFMR returns (spec §3): qparams, the clip they cover, the percentile bounds the search started
    from, which bound it moved (``max``, ``min``, ``symmetric`` or ``both``), the best ratio and its index
    (past the window when ``extended``), the number of candidates evaluated, the window size and the loss."""

    scale: float
    zero_point: int
    clip_min: float
    clip_max: float
    max_init: float
    min_init: float
    bound: str
    ratio: float
    index: int
    ratio_min: Optional[float]
    index_min: Optional[int]
    extended: bool
    extension: int
    candidates: int
    window: int
    loss: float
    search_extend: bool
    search_2d: bool

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class UlqForward:
    """ULQ forward (spec §5.1): the fake-quantized tensor and the qparams of its clip range."""

    fake: np.ndarray
    scale: float
    zero_point: int


@dataclass(frozen=True, eq=False)
class UlqBackward:
    """ULQ backward: the gradient of ``x`` and the two clip gradients (float64 sums)."""

    grad_x: np.ndarray
    grad_clip_max: float
    grad_clip_min: float


@dataclass(frozen=True, eq=False)
class ArqResult:
    """What ARQ returns: one scale and zero point per channel (one in all when per tensor)."""

    scale: np.ndarray
    zero_point: np.ndarray
    codes: np.ndarray
    fake: np.ndarray
    axis: Optional[int]
    bits: int


@dataclass(frozen=True, eq=False)
class NuqResult:
    """What NUQ returns: the int8 levels kept, a scale per channel, codes restricted to the levels."""

    levels: np.ndarray
    scale: np.ndarray
    codes: np.ndarray
    fake: np.ndarray
    mse: float
    iteration: int
    num_steps: int

    @property
    def zero_point(self) -> np.ndarray:
        return np.zeros_like(self.scale, dtype=np.int32)

    @property
    def complete(self) -> bool:
        """False when the weights had fewer distinct codes than ``num_steps`` (they are then kept as is)."""
        return len(self.levels) == self.num_steps


@dataclass(frozen=True)
class Comparison:
    """How closely ``test`` follows ``reference``: the f64 sums, and SQNR / cosine / MSE derived from them."""

    ref_sq: float
    test_sq: float
    dot: float
    diff_sq: float
    max_abs_diff: float
    size: int

    @property
    def sqnr_db(self) -> float:
        """``10 log10(sum r^2 / sum (r-t)^2)``; +inf when identical."""
        return float("inf") if self.diff_sq == 0 else 10.0 * math.log10(self.ref_sq / self.diff_sq)

    @property
    def cosine(self) -> float:
        """Cosine similarity; NaN when either side is all zeros."""
        den = math.sqrt(self.ref_sq * self.test_sq)
        return float("nan") if den == 0 else max(-1.0, min(1.0, self.dot / den))

    @property
    def mse(self) -> float:
        return self.diff_sq / self.size

    def __add__(self, other: "Comparison") -> "Comparison":
        """Sums over two batches (SQNR and cosine of the union)."""
        return Comparison(self.ref_sq + other.ref_sq, self.test_sq + other.test_sq, self.dot + other.dot,
                          self.diff_sq + other.diff_sq, max(self.max_abs_diff, other.max_abs_diff),
                          self.size + other.size)


@dataclass(frozen=True)
class AdaRoundOptions:
    """Learned rounding's options (rust/ferroquant-core/src/adaround.rs), one object for the kernel and its
    twin: Adam ``iterations`` with learning rate ``lr`` on the rounding variables, the regularizer weight
    ``reg_weight`` (per weight, against the reconstruction loss in code units), off for the first ``warm_start``
    share of the iterations, then with ``beta`` annealed from ``beta_start`` to ``beta_end`` (AIMET's cosine).
    Types are checked here; ranges by the kernels."""

    iterations: int = 500
    reg_weight: float = 1.0
    beta_start: float = 20.0
    beta_end: float = 2.0
    warm_start: float = 0.2
    lr: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.iterations, (bool, np.bool_)) or not isinstance(self.iterations, (int, np.integer)) \
                or self.iterations < 0:
            raise ParameterError(f"iterations must be an integer >= 0, got {self.iterations!r}")
        object.__setattr__(self, "iterations", int(self.iterations))
        for f in ("reg_weight", "beta_start", "beta_end", "warm_start", "lr"):
            object.__setattr__(self, f, _plain_float(getattr(self, f), f))


@dataclass(frozen=True, eq=False)
class AdaRoundResult:
    """What learned rounding returns: the codes ``[rows, p]`` (int32, on the given grid), the final rounding
    variables ``v`` (float64; rounded up where ``v >= 0``, 0 where a weight had no choice; a channel whose
    learned codes reconstruct worse than round-to-nearest keeps round-to-nearest), and the reconstruction errors
    ``sum_o s_o^2 e_o^T G e_o`` of round-to-nearest and of the codes returned."""

    codes: np.ndarray
    v: np.ndarray
    loss_nearest: float
    loss: float


__all__ = [
    "AdaRoundOptions",
    "AdaRoundResult",
    "ArqResult",
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
]
