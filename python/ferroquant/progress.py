"""A tiny progress bar on stderr (no dependency): calibration batches, per-layer searches, evaluations.

``ProgressBar`` is also a ``(done, total)`` callable, the form :func:`ferroquant.onnx.quantize_model` takes as
``progress=``. Bars are drawn only while :func:`enabled` is true (the CLI's ``--quiet`` turns them off); on a
terminal a bar redraws in place, elsewhere (logs, pipes) it writes one line when it ends.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")
_ENABLED = True


def set_enabled(on: bool) -> None:
    """Turn every progress bar on or off (process-wide)."""
    global _ENABLED
    _ENABLED = bool(on)


def enabled() -> bool:
    return _ENABLED


class ProgressBar:
    """``with ProgressBar("calibrating", total=8) as bar: ... bar.update()``; ``bar(i, total)`` sets it."""

    def __init__(self, desc: str, total: Optional[int] = None, unit: str = "", width: int = 24,
                 stream: Optional[TextIO] = None) -> None:
        self.desc, self.total, self.unit, self.width = desc, total, unit, width
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._live = _ENABLED and getattr(self.stream, "isatty", lambda: False)()
        self._closed = False

    def _line(self) -> str:
        dt = time.perf_counter() - self.t0
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            frac = min(1.0, self.done / self.total)
            fill = int(round(frac * self.width))
            bar = "#" * fill + "-" * (self.width - fill)
            return f"{self.desc} [{bar}] {self.done}/{self.total}{unit} {dt:.1f}s"
        return f"{self.desc} {self.done}{unit} {dt:.1f}s"

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self._live and (force or now - self._last > 0.1):
            self._last = now
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def __call__(self, done: int, total: Optional[int] = None) -> None:
        self.done = done
        if total is not None and total < (1 << 29):
            self.total = total
        self._draw()

    def close(self) -> None:
        if self._closed or not _ENABLED:
            self._closed = True
            return
        self._closed = True
        if self._live:
            self._draw(force=True)
            self.stream.write("\n")
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self._live and _ENABLED:
            self.stream.write("\n")


def track(items: Iterable[T], desc: str, total: Optional[int] = None, unit: str = "") -> Iterator[T]:
    """Yield ``items`` while a bar counts them."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with ProgressBar(desc, total, unit) as bar:
        for it in items:
            yield it
            bar.update()
