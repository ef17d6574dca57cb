"""Timing and reporting shared by the benchmarks: median of repeats, machine and commit, Markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

ROOT = Path(__file__).resolve().parent


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, budget_s: float = 60.0) -> float:
    """Median wall time of ``fn`` in seconds; fewer repeats when one call is slow (bounded by ``budget_s``)."""
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        if first * repeats > budget_s:
            repeats = max(1, int(budget_s / max(first, 1e-9)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy as np

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}"


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        return out.stdout.strip() + ("+dirty" if dirty.strip() else "")
    except OSError:
        return "unknown"


@dataclass
class Table:
    title: str
    columns: List[str]
    rows: List[List[str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([_fmt(c) for c in cells])
        print("  " + " | ".join(self.rows[-1]), flush=True)

    def markdown(self) -> str:
        head = f"### {self.title}\n\n| " + " | ".join(self.columns) + " |\n|" + "---|" * len(self.columns) + "\n"
        body = "".join("| " + " | ".join(r) + " |\n" for r in self.rows)
        notes = "".join(f"\n{n}\n" for n in self.notes)
        return head + body + notes


def _fmt(c: object) -> str:
    if isinstance(c, float):
        if c == 0 or 1e-3 <= abs(c) < 1e5:
            return f"{c:.3g}" if abs(c) < 100 else f"{c:.0f}"
        return f"{c:.3e}"
    return str(c)


def write_report(name: str, tables: List[Table], intro: Optional[str] = None) -> Path:
    """Write ``bench/results/<name>.md`` with the machine and commit, and return its path."""
    path = ROOT / "results" / f"{name}.md"
    path.parent.mkdir(exist_ok=True)
    text = f"## {name}\n\nMachine: {machine()}  \nCommit: `{commit()}`  \nDate: {time.strftime('%Y-%m-%d')}\n\n"
    if intro:
        text += intro + "\n\n"
    text += "\n".join(t.markdown() for t in tables)
    path.write_text(text)
    print(f"wrote {path}")
    return path
