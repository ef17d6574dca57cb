"""Progress bars on stderr: calibration batches, per-layer searches, evaluations.

``ProgressBar`` is also a ``(done, total)`` callable, the form :func:`ferroquant.onnx.quantize_model` takes as
``progress=``. Bars are drawn only while :func:`enabled` is true (the CLI's ``--quiet`` turns them off):

- on a terminal or in a notebook, with tqdm installed: a tqdm bar (rate, ETA; a widget in Jupyter);
- on a terminal without tqdm: a plain counter redrawn in place;
- elsewhere (logs, pipes): one line when the bar ends, so logs are not filled with redraws.

A bar that ends (its block exits without an error) before reaching its total ends at what was done: the total
was a limit, not a count (``--report-batches 2`` with one batch shows ``1/1``).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")
_ENABLED = True
_UNKNOWN = 1 << 29  # totals at or above this are "all batches" sentinels, not counts


def set_enabled(on: bool) -> None:
    """Turn every progress bar on or off (process-wide)."""
    global _ENABLED
    _ENABLED = bool(on)


def enabled() -> bool:
    return _ENABLED


def _tqdm() -> Any:
    """tqdm's class (the notebook widget under Jupyter), or None when tqdm is not installed."""
    try:
        if "ipykernel" in sys.modules:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _interactive(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)()) or (
        "ipykernel" in sys.modules and stream in (sys.stderr, sys.stdout))


class ProgressBar:
    """``with ProgressBar("calibrating", total=8) as bar: ... bar.update()``; ``bar(i, total)`` sets it."""

    def __init__(self, desc: str, total: Optional[int] = None, unit: str = "", width: int = 24,
                 stream: Optional[TextIO] = None) -> None:
        self.desc, self.unit, self.width = desc, unit, width
        self.total = total if total is not None and total < _UNKNOWN else None
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._live = _ENABLED and _interactive(self.stream)
        self._closed = False
        cls = _tqdm() if self._live else None
        self._tq = cls(total=self.total, desc=desc, unit=f" {unit}" if unit else "it", file=self.stream,
                       leave=True, dynamic_ncols=True) if cls is not None else None

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
        if self._tq is not None:
            self._tq.total = self.total
            self._tq.n = self.done
            self._tq.refresh() if force else self._tq.update(0)
            return
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
        if total is not None and total < _UNKNOWN:
            self.total = total
        self._draw()

    def close(self) -> None:
        """End the bar (at what was done, when that is under the total)."""
        if self._closed:
            return
        self._closed = True
        if not _ENABLED:
            return
        if self.total is not None and self.done < self.total:
            self.total = self.done
        if self._tq is not None:
            self._draw(force=True)
            self._tq.close()
        elif self._live:
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
            return
        self._closed = True
        if self._tq is not None:
            self._tq.close()
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
