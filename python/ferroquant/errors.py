"""Exceptions raised by ferroquant.

Every class derives from :class:`QuantError` and also from the built-in exception that fits (``ValueError`` or
``TypeError``), so ``except ValueError`` keeps working for callers that do not know ferroquant. The native
module raises these classes directly (one exhaustive ``match`` in ``rust/ferroquant-py/src/errors.rs``).
"""

from __future__ import annotations


class QuantError(Exception):
    """Base class of every ferroquant error."""


class NonFiniteError(QuantError, ValueError):
    """The data holds NaN or +/-Inf."""


class EmptyInputError(QuantError, ValueError):
    """An array that must hold data is empty."""


class BitsError(QuantError, ValueError):
    """A bit width outside the supported range."""


class AxisError(QuantError, ValueError, IndexError):
    """An axis outside the array's dimensions."""


class ShapeError(QuantError, ValueError):
    """Shapes that do not fit together (for example one scale per channel, but the wrong count)."""


class ScaleError(QuantError, ValueError):
    """A scale that is zero, negative, non-finite, or too large to quantize with."""


class ZeroPointError(QuantError, ValueError):
    """A zero point outside the integer range."""


class ParameterError(QuantError, ValueError):
    """An algorithm parameter outside its allowed range."""


class DTypeError(QuantError, TypeError):
    """An array whose dtype ferroquant does not accept."""


class LayoutError(QuantError, ValueError):
    """An array in a memory layout the native kernels cannot borrow."""


class ConfigError(QuantError, ValueError):
    """A configuration field with a bad value; the message names the layer and the field."""


class ModelError(QuantError, ValueError):
    """A model file or graph ferroquant cannot use: missing, malformed, unsupported or ill-formed.

    ``node`` names the graph node at fault when there is one (it is also in the message).
    """

    def __init__(self, message: str, node: "str | None" = None) -> None:
        super().__init__(f"node {node!r}: {message}" if node else message)
        self.node = node


class DataError(QuantError, ValueError):
    """Sample data that cannot be found or loaded (for example no package that ships photos is installed)."""


class InternalError(QuantError, RuntimeError):
    """A bug in ferroquant: a native kernel failed in a way it should not. Please report it."""


__all__ = [
    "AxisError",
    "BitsError",
    "ConfigError",
    "DTypeError",
    "DataError",
    "EmptyInputError",
    "InternalError",
    "LayoutError",
    "MemoryBudgetError",
    "ModelError",
    "NonFiniteError",
    "ParameterError",
    "QuantError",
    "ScaleError",
    "ShapeError",
    "ZeroPointError",
]


class MemoryBudgetError(QuantError, MemoryError):
    """A calibrator asked to stay exact would store more samples than its memory budget allows."""
