"""What every calibrator shares: the protocol, the result type, input checks that name the tensor."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Protocol, TypeVar, runtime_checkable

import numpy as np

from ferroquant._arrays import as_f32, named
from ferroquant.errors import EmptyInputError, ParameterError

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
    """Observe batches, merge with another calibrator of the same kind, produce qparams, save and load."""

    name: str

    def observe(self, x: np.ndarray) -> None: ...

    def merge(self, other: Any) -> None: ...

    def qparams(self) -> CalibResult: ...

    def state_dict(self) -> Dict[str, Any]: ...


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


def require_state(d: Dict[str, Any], kind: str, keys: tuple) -> None:
    if d.get("kind") != kind:
        raise ParameterError(f"state is for a {d.get('kind')!r} calibrator, not {kind!r}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ParameterError(f"{kind} state is missing {missing}")


def plain(v: Optional[float]) -> Optional[float]:
    return None if v is None else float(v)
