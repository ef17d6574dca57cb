"""Clip searches, before and after, in the same run.

    python bench/bench_search.py [--calib 32] [--repeats 5] [--no-rust]

1. One 4096-bin HFMG search: the prefix-sum ranking (now) against the direct summation it replaced (before),
   on the same histograms, interleaved: the Rust benchmark ``rust/ferroquant-core/examples/bench_hfmg.rs`` (run
   with cargo; both return the same candidate, bounds and loss, which it checks).
2. MobileNetV2's 53 activation tensors on real photos (``--calib`` images in batches of 8): HFMG's search
   (one call per tensor, and all tensors in one ``search_all`` call) against exact IFMR's 61-candidate search
   over the stored samples, on the same tensors; and observing the batches one call per tensor against one
   ``observe_all`` call per batch.

Writes bench/results/search.md (machine and commit included). Read the ratios: absolute times on shared
machines are noise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, Table, write_report  # noqa: E402

from ferroquant import ops  # noqa: E402
from ferroquant.calibrate import HistogramCalibrator, IFMRCalibrator, observe_all, search_all  # noqa: E402

BATCH = 8


def rust_table(repeats: int) -> List[str]:
    """The Rust benchmark's Markdown table (its own lines), or a note when cargo is not there."""
    cmd = ["cargo", "run", "-q", "--release", "-p", "ferroquant-core", "--example", "bench_hfmg", "--", str(repeats)]
    try:
        out = subprocess.run(cmd, cwd=ROOT.parent, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return [f"(the Rust benchmark did not run: {e})"]
    print(out)
    return out.strip().splitlines()


def activations(n_calib: int) -> Dict[str, List[np.ndarray]]:
    """The activation tensors the ONNX flow taps on MobileNetV2, for ``n_calib`` photos in batches of 8."""
    from ferroquant.examples.photos import calibration_and_eval_sets
    from ferroquant.examples.models import mobilenet_v2_onnx
    from ferroquant.onnx import create_quant_config, quantize_model
    from ferroquant.onnx.calibration import tapped_session

    calib = calibration_and_eval_sets(n_calib, 1, seed=0).calibration
    feeds = [{"input": calib[i : i + BATCH]} for i in range(0, len(calib), BATCH)]
    model = mobilenet_v2_onnx()
    cm = quantize_model(create_quant_config(None, model, batch_num=1), model, feeds[:1])
    taps = list(cm.calibrators)
    sess = tapped_session(cm.model, taps)
    acts: Dict[str, List[np.ndarray]] = {t: [] for t in taps}
    for f in feeds:
        for t, a in zip(taps, sess.run(taps, f)):
            acts[t].append(np.ascontiguousarray(a, np.float32))
    return acts


def best(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` runs (on shared machines the minimum is the stable statistic)."""
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def model_table(acts: Dict[str, List[np.ndarray]], repeats: int) -> Table:
    n = sum(a.size for v in acts.values() for a in v)
    t = Table(f"MobileNetV2, {len(acts)} activation tensors, {len(next(iter(acts.values())))} batches of {BATCH} "
              f"photos ({n / 1e6:.1f}M values in all)", ["step", "s", "vs HFMG search (one call per tensor)"])

    def hfmg() -> Dict[str, HistogramCalibrator]:
        return {k: HistogramCalibrator(k, "hfmg") for k in acts}

    def ifmr() -> Dict[str, IFMRCalibrator]:
        return {k: IFMRCalibrator(k, mode="exact", memory_budget=1 << 30) for k in acts}

    def observe_each(cals):
        for i in range(len(next(iter(acts.values())))):
            for k, v in acts.items():
                cals[k].observe(v[i])

    def observe_batched(cals):
        for i in range(len(next(iter(acts.values())))):
            observe_all(cals, {k: v[i] for k, v in acts.items()})

    h, q = hfmg(), ifmr()
    observe_each(h)
    observe_each(q)
    rows = {
        "HFMG search, one call per tensor": lambda: [c.qparams() for c in h.values()],
        "HFMG search, search_all (one native call)": lambda: search_all(h),
        "IFMR exact search (61 candidates over the stored samples), one call per tensor":
            lambda: [c.qparams() for c in q.values()],
        "HFMG observe, one call per tensor per batch": lambda: observe_each(hfmg()),
        "HFMG observe, observe_all (one native call per batch)": lambda: observe_batched(hfmg()),
        "IFMR exact observe (store the samples)": lambda: observe_each(ifmr()),
    }
    times = {}
    for _ in range(repeats):  # interleaved: every row once per round, best of the rounds
        for name, fn in rows.items():
            times[name] = min(times.get(name, np.inf), best(fn, 1))
    base = times["HFMG search, one call per tensor"]
    for name, s in times.items():
        t.add(name, f"{s:.4f}", f"{s / base:.2f}x")
    assert search_all(h) == {k: c.qparams() for k, c in h.items()}
    ends = {"HFMG": times["HFMG observe, one call per tensor per batch"] + base,
            "IFMR": times["IFMR exact observe (store the samples)"] +
            times["IFMR exact search (61 candidates over the stored samples), one call per tensor"]}
    t.notes.append(f"End to end (observe + search, one call per tensor): HFMG {ends['HFMG']:.3f} s, exact IFMR "
                   f"{ends['IFMR']:.3f} s ({ends['IFMR'] / ends['HFMG']:.2f}x HFMG). Best of {repeats} interleaved "
                   f"rounds; search_all gives the same results as one call per tensor (checked).")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-rust", action="store_true", help="skip the Rust before/after benchmark")
    args = ap.parse_args()
    lines = [] if args.no_rust else rust_table(args.repeats)
    tables = [model_table(activations(args.calib), args.repeats)]
    intro = (f"Threads: ferroquant {ops.get_num_threads()}.\n\n"
             "### One 4096-bin HFMG search: direct summation (before) vs prefix sums (now), same run\n\n"
             + "\n".join(lines))
    write_report("search", tables, intro)


if __name__ == "__main__":
    main()
