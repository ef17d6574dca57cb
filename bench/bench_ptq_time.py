"""Where a post-training quantization spends its time, against onnxruntime's own pass over the same batches:

    python bench/bench_ptq_time.py [--repeats 3] [--only NAME ...]

For each model (MobileNetV2 with 32 photos in 4 batches of 8; PP-OCRv6 det on 3 rendered pages; BERT from
transformers with random weights on 4 token batches, when torch and transformers are installed), in one
process, ``--repeats`` rounds of: onnxruntime's pass over the calibration batches with graph optimizations off
and on (the yardstick: the median of 3 passes after a warm-up pass), then ``ferroquant.onnx.quantize`` with HFMG
and with IFMR (the default). Times are medians over the rounds, ratios the medians of each round's ratio; the
breakdown is the median run's ``timings``: load, check and fuse; plan, calibrators and weights; the tapped
onnxruntime session (built and released) and its runs; histogram observes; clip searches; writing the three
files; and the rest (rule checker, record...). Besides: each algorithm's first run in a new process (median of
3), and the latency check of the onnxruntime profile, timed separately (it runs the deploy model).
Writes bench/results/ptq_time.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from harness import Table, write_report  # noqa: E402

Feeds = List[Dict[str, "object"]]


def _mobilenet(tmp: Path) -> Tuple[Path, Feeds]:
    import onnx

    from ferroquant.examples.models import mobilenet_v2_onnx
    from ferroquant.examples.photos import calibration_and_eval_sets

    path = tmp / "mobilenet_v2.onnx"
    onnx.save(mobilenet_v2_onnx(), str(path))
    images = calibration_and_eval_sets(32, 8, seed=0).calibration
    return path, [{"input": images[i:i + 8]} for i in range(0, 32, 8)]


def _det(tmp: Path) -> Tuple[Path, Feeds]:
    from tests.foreign.corpus import BY_NAME
    from tests.foreign.models import find

    entry = BY_NAME["PP-OCRv6 det"]
    path, why = find(entry.package, entry.file)
    if path is None:
        raise RuntimeError(why)
    return path, entry.calib(path)


def _bert(tmp: Path) -> Tuple[Path, Feeds]:
    from tests.foreign.torch_models import export_transformer, token_feeds

    return export_transformer("bert", tmp / "bert.onnx"), token_feeds(8, seed=0)


MODELS: Dict[str, Callable[[Path], Tuple[Path, Feeds]]] = {
    "MobileNetV2": _mobilenet, "PP-OCRv6 det": _det, "BERT (transformers)": _bert}


def _ort_pass(path: Path, feeds: Feeds, optimized: bool, repeats: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    times = []
    for _ in range(repeats + 1):  # the first pass warms the session up and is not counted
        t0 = time.perf_counter()
        for feed in feeds:
            sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _quantize(path: Path, feeds: Feeds, algorithm: str, out: Path, latency: bool) -> Dict[str, float]:
    import warnings

    import ferroquant.onnx as fo

    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fo.quantize(str(path), feeds, out, latency_check=latency,
                             config_defination={"common_config": {"activation": {"algorithm": algorithm}}})
    timings = dict(result["timings"])
    timings["total_s"] = time.perf_counter() - t0
    timings["cpu_s"] = time.process_time() - c0  # all threads: less sensitive to a shared machine's load
    return timings


FRESH = """
import json, sys, time, warnings
import numpy as np
import ferroquant.onnx as fo
z = np.load(sys.argv[2])
feeds = {}
for key in z.files:
    i, name = key.split(":", 1)
    feeds.setdefault(int(i), {})[name] = z[key]
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fo.quantize(sys.argv[1], [feeds[i] for i in sorted(feeds)], sys.argv[3], latency_check=False,
                config_defination={"common_config": {"activation": {"algorithm": sys.argv[4]}}})
print(json.dumps(time.perf_counter() - t0))
"""


def _fresh_run(path: Path, feeds: Feeds, algorithm: str, tmp: Path) -> float:
    """The quantization's time in a new process (its first run there: what a command-line user waits for, new
    memory and a cold onnxruntime session included; the import is not counted)."""
    import subprocess

    import numpy as np

    data = tmp / "feeds.npz"
    if not data.exists():
        np.savez(data, **{f"{i}:{k}": v for i, f in enumerate(feeds) for k, v in f.items()})
    out = subprocess.run([sys.executable, "-c", FRESH, str(path), str(data), str(tmp / f"fresh_{algorithm}.onnx"),
                          algorithm], capture_output=True, text=True, check=True, cwd=str(ROOT))
    return float(out.stdout.strip().splitlines()[-1])


def _rounds(path: Path, feeds: Feeds, tmp: Path, repeats: int) -> List[Dict[str, Dict[str, float]]]:
    """``repeats`` rounds, each an onnxruntime pass (graph optimizations off, then on) right before an HFMG and an
    IFMR quantization: a ratio taken within a round is not moved by how fast the shared machine is that minute
    (its speed drifted by a third between runs of this bench)."""
    out = []
    for _ in range(repeats):
        r: Dict[str, Dict[str, float]] = {"ort": {"off": _ort_pass(path, feeds, False, 3),
                                                   "on": _ort_pass(path, feeds, True, 3)}}
        for algo in ("hfmg", "ifmr"):
            r[algo] = _quantize(path, feeds, algo, tmp / f"q_{algo}.onnx", False)
        out.append(r)
    return out


def _median_of(rounds: List[Dict[str, Dict[str, float]]], f: Callable[[Dict[str, Dict[str, float]]], float]) -> float:
    return statistics.median(f(r) for r in rounds)


STEPS = [("load, check and fuse", "load_s"), ("plan, calibrators, weights", "prepare_s"),
         ("onnxruntime session with taps: build and release", "session_s"),
         ("onnxruntime with taps: runs", "taps_run_s"), ("histogram observes", "observe_s"),
         ("clip searches", "search_s"), ("write 3 files", "write_s")]


def _inside(t: Dict[str, float]) -> float:
    """Time in onnxruntime: the tapped runs and building (and releasing) their session."""
    return t["taps_run_s"] + t.get("session_s", 0.0)


def bench_model(name: str, repeats: int, breakdown: Table, summary: Table) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path, feeds = MODELS[name](tmp)
        rounds = _rounds(path, feeds, tmp, repeats)
        checked = _quantize(path, feeds, "hfmg", tmp / "q_checked.onnx", True)
        fresh = {algo: statistics.median(_fresh_run(path, feeds, algo, tmp) for _ in range(3)) for algo in ("hfmg", "ifmr")}
    for algo in ("hfmg", "ifmr"):
        t = sorted((r[algo] for r in rounds), key=lambda x: x["total_s"])[len(rounds) // 2]  # the median run
        known = sum(t.get(k, 0.0) for _, k in STEPS)
        for step, key in STEPS:
            breakdown.add(name, algo.upper(), step, t.get(key, 0.0), t.get(key, 0.0) / t["total_s"])
        breakdown.add(name, algo.upper(), "rest (rule checker, record...)", t["total_s"] - known,
                      (t["total_s"] - known) / t["total_s"])
        breakdown.add(name, algo.upper(), "**total**", t["total_s"], 1.0)

    def med(f: Callable[[Dict[str, Dict[str, float]]], float]) -> float:
        return _median_of(rounds, f)

    summary.add(name, f"{len(feeds)}", med(lambda r: r["ort"]["off"]), med(lambda r: r["ort"]["on"]),
                med(lambda r: r["hfmg"]["total_s"]), f"{med(lambda r: r['hfmg']['total_s'] / r['ort']['off']):.2f}x",
                f"{med(lambda r: (r['hfmg']['total_s'] - _inside(r['hfmg'])) / _inside(r['hfmg'])):.2f}",
                f"{med(lambda r: (r['hfmg']['total_s'] - r['hfmg']['taps_run_s']) / r['hfmg']['taps_run_s']):.2f}",
                f"{med(lambda r: r['hfmg']['taps_run_s'] / r['ort']['off']):.2f}x",
                f"{med(lambda r: r['hfmg']['taps_run_s'] / r['ort']['on']):.2f}x",
                med(lambda r: r["ifmr"]["total_s"]), f"{med(lambda r: r['ifmr']['total_s'] / r['hfmg']['total_s']):.2f}x",
                f"{med(lambda r: r['ifmr']['cpu_s'] / r['hfmg']['cpu_s']):.2f}x",
                fresh["hfmg"], fresh["ifmr"], f"{fresh['ifmr'] / fresh['hfmg']:.2f}x", checked.get("latency_check_s", 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    summary = Table("Quantization time against onnxruntime's pass over the same batches (seconds; medians; each "
                    "ratio the median of the ratios within a round)",
                    ["model", "batches", "ort pass, opt. off", "ort pass, opt. on", "HFMG quantize",
                     "HFMG / ort pass (off)", "outside ort / inside (HFMG)", "outside / inside, runs only (HFMG)",
                     "tapped run / ort pass (off)",
                     "tapped run / ort pass (on)", "IFMR quantize", "IFMR / HFMG", "IFMR / HFMG (CPU time)",
                     "HFMG, new process", "IFMR, new process", "IFMR / HFMG, new process",
                     "latency check (extra, HFMG)"])
    breakdown = Table("Breakdown (median run of each algorithm)", ["model", "algorithm", "step", "seconds", "share"])
    for name in args.only or list(MODELS):
        print(f"{name}:", flush=True)
        try:
            bench_model(name, args.repeats, breakdown, summary)
        except (ImportError, RuntimeError) as e:  # torch/transformers missing, or a model not fetched
            summary.notes.append(f"{name}: skipped ({e})")
    summary.notes.append("`ferroquant.onnx.quantize` with the onnxruntime profile, latency check off (its cost is "
                         "the last column: it times the deploy model against FP32 and profiles its layers). "
                         "'outside ort / inside' is the quantization's time outside onnxruntime over its time in "
                         "it: the tapped runs (the first, cold run of the new session included) and building and "
                         "releasing their session (the model handed over, parsed, optimized, its kernels made); "
                         "'runs only' counts the runs alone as inside. The "
                         "tapped run pays onnxruntime for each tapped tensor: a reorder out of its blocked (NCHWc) "
                         "layout, and a Conv+Add fusion lost where a Conv output is tapped. CPU time counts every "
                         "thread of the process. 'new process': the median of 3 quantizations, each the first run "
                         "of a new Python process (import not counted), what a command-line user waits for: new "
                         "memory is faulted in (on this VM about 1 ms per MB in 4 KB pages, and IFMR stores its "
                         "samples: 630 MB on MobileNetV2) and the onnxruntime session starts cold.")
    write_report("ptq_time", [summary, breakdown])


if __name__ == "__main__":
    main()
