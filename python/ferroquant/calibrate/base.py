"""What every calibrator shares: the protocol, the result type, input checks that name the tensor."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional, Protocol, Tuple, TypeVar, runtime_checkable

import numpy as np

from ferroquant._arrays import as_f32, named
from ferroquant.errors import EmptyInputError, ParameterError, QuantError
from ferroquant.ops.types import Histogram

NONFINITE_MODES = ("error", "drop")
C = TypeVar("C", bound="Calibrator")


@dataclass(frozen=True)
class CalibResult:
    """Scale and zero point of one activation tensor, with the clip range they stand for and how it was found.

    ``clip_min``/``clip_max`` are the float bounds of the integer grid (what ULQ initialises from).
    ``details`` holds algorithm-specific numbers (chosen candidate, loss, whether the IFMR window grew...).
    """

    scale: float
    zero_point: int
    clip_min: float
    clip_max: float
    bits: int
    symmetric: bool
    algorithm: str
    details: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Calibrator(Protocol):
    """Observe batches, merge with another calibrator of the same kind, produce qparams, save and load; and,
    for reports, the histogram of what was observed, its range and the share of it a clip cuts off."""

    name: str

    def observe(self, x: np.ndarray) -> None: ...

    def merge(self, other: Any) -> None: ...

    def qparams(self) -> CalibResult: ...

    def state_dict(self) -> Dict[str, Any]: ...

    def histogram(self) -> Histogram: ...

    def observed_range(self) -> Tuple[float, float]: ...

    def clipped_fraction(self, clip_min: float, clip_max: float) -> float: ...


def fraction_outside(h: Histogram, clip_min: float, clip_max: float) -> float:
    """Share of a histogram's counts outside ``[clip_min, clip_max]``: a bin counts as outside when its centre
    is."""
    total = float(h.counts.sum())
    if total == 0:
        return 0.0
    centres = h.lo + (np.arange(h.nbins) + 0.5) * (h.hi - h.lo) / h.nbins
    return float(h.counts[(centres < clip_min) | (centres > clip_max)].sum()) / total


def check_bits(bits: int, what: str = "bits") -> int:
    if not isinstance(bits, (int, np.integer)) or not 2 <= int(bits) <= 16:
        raise ParameterError(f"{what} must be an integer in [2, 16], got {bits!r}")
    return int(bits)


def check_nonfinite(mode: str) -> str:
    if mode not in NONFINITE_MODES:
        raise ParameterError(f"nonfinite must be one of {NONFINITE_MODES}, got {mode!r}")
    return mode


def batch(x: Any, name: str) -> np.ndarray:
    """A batch as a flat contiguous float32 view (no copy when it already is one); names the tensor on error."""
    with named(name):
        a = as_f32(x, "batch", allow_empty=True)
        if a.size == 0:
            raise EmptyInputError(f"empty batch (shape {a.shape})")
        return a.reshape(-1)


def state_field(d: Dict[str, Any], key: str, convert: Callable[[Any], Any]) -> Any:
    """``convert(d[key])``, with a :class:`ParameterError` naming the field when the saved value is not what it
    should be (a tampered or damaged state)."""
    try:
        return convert(d[key])
    except QuantError as e:
        raise type(e)(f"state field {key!r}: {e}") from None
    except (TypeError, ValueError, OverflowError, KeyError) as e:
        raise ParameterError(f"state field {key!r}: {e!r}") from None


def require_state(d: Dict[str, Any], kind: str, keys: tuple) -> None:
    if d.get("kind") != kind:
        raise ParameterError(f"state is for a {d.get('kind')!r} calibrator, not {kind!r}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ParameterError(f"{kind} state is missing {missing}")


def plain(v: Optional[float]) -> Optional[float]:
    return None if v is None else float(v)
