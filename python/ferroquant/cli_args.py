"""The CLI's argument parser and number types: bad arguments end in one line and exit status 2, before any
work (a count of 0 or less, a NaN or infinite threshold, a word where a number belongs)."""

from __future__ import annotations

import argparse
import math
from typing import Callable, NoReturn, Optional


class Parser(argparse.ArgumentParser):
    """Bad arguments end in one line, ``ferroquant: error: ...``, and exit status 2 (the usage is one
    ``--help`` away)."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"ferroquant: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v

    parse.__name__ = f"integer >= {minimum}"
    return parse


def number(minimum: Optional[float] = None) -> Callable[[str], float]:
    """An argparse type: a finite number (>= ``minimum`` when given)."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or (minimum is not None and v < minimum):
            bound = f" >= {minimum:g}" if minimum is not None else ""
            raise argparse.ArgumentTypeError(f"must be a finite number{bound}, got {text!r}")
        return v

    parse.__name__ = "number"
    return parse


__all__ = ["Parser", "count", "number"]
