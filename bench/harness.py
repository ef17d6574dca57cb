"""Timing and reporting shared by the benchmarks: median of repeats, machine and commit, Markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

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


def session(path: Path, optimize: bool = True, threads: int = 1):  # noqa: ANN201
    """An onnxruntime CPU session: ``threads`` intra-op threads, graph optimizations all or none."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def latency_ms(paths: Dict[str, Path], feed: Dict[str, Any], threads: int, runs: int, warm: int = 3
               ) -> Dict[str, float]:
    """Median milliseconds of ``runs`` runs of each model on ``feed`` (each session reads its own inputs from it),
    the models interleaved run by run, after ``warm`` warm-up runs each."""
    sessions = {k: session(p, True, threads) for k, p in paths.items()}
    feeds = {k: {i.name: feed[i.name] for i in s.get_inputs()} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(warm):
            s.run(None, feeds[k])
    times: Dict[str, List[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}
