"""Activation calibration vs the peers, on the same stream in the same run.

    python bench/bench_calibration.py [--batches 20] [--quick]

Stream: ``--batches`` batches of (32, 64, 56, 56) float32, Gaussian and ReLU'd Student-t (df=3, heavy tail).
For each method: time to observe every batch, time to compute qparams, peak extra resident memory, and the
int8 quantization MSE its qparams give on the whole stream. Peers: onnxruntime's HistogramCollector
(percentile and entropy with their calibrators' defaults, entropy also with 2048 bins, where its search
is what the literature complains about; distribution with 512 bins, the least its
compute_distribution accepts: its calibrator's default of 128 raises) and torch's HistogramObserver.
Writes bench/results/calibration.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Table, median_time, write_report  # noqa: E402
from memory import peak_since, reset_peak  # noqa: E402

from ferroquant import ops, reference  # noqa: E402
from ferroquant.calibrate import HistogramCalibrator, IFMRCalibrator  # noqa: E402

SHAPE = (32, 64, 56, 56)
Result = Tuple[float, float, int, Optional[Tuple[float, int]], str]  # observe s, qparams s, bytes, (s, zp), note


def make_stream(kind: str, n: int, shape=SHAPE, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if kind == "gaussian":
            b = np.empty(shape, np.float32)
            rng.standard_normal(out=b, dtype=np.float32)
        else:
            b = np.maximum(rng.standard_t(3, shape), 0).astype(np.float32)
        out.append(b)
    return out


def run(observe: Callable[[np.ndarray], None], finish: Callable[[], Optional[Tuple[float, int]]],
        stream: List[np.ndarray], note: str = "") -> Result:
    base = reset_peak()
    t0 = time.perf_counter()
    for b in stream:
        observe(b)
    t1 = time.perf_counter()
    qp = finish()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, peak_since(base), qp, note


def ours(stream, make) -> Result:
    cal = make()

    def finish():
        r = cal.qparams()
        return r.scale, r.zero_point

    return run(cal.observe, finish, stream, "")


def ort(stream, method: str, num_bins: Optional[int] = None) -> Result:
    from onnxruntime.quantization.calibrate import HistogramCollector

    cfg = {"percentile": dict(num_bins=2048, num_quantized_bins=128, percentile=99.999),
           "entropy": dict(num_bins=128, num_quantized_bins=128, percentile=99.999),
           "distribution": dict(num_bins=512, num_quantized_bins=128, percentile=99.999)}[method]
    if num_bins:
        cfg["num_bins"] = num_bins
    col = HistogramCollector(method, False, scenario="same", **cfg)

    def observe(b):
        with contextlib.redirect_stdout(io.StringIO()):
            col.collect({"x": [b]})

    def finish():
        with contextlib.redirect_stdout(io.StringIO()):
            r = col.compute_collection_result()["x"]
        if method == "distribution":
            return None  # mean/std for float8, not a clip range
        lo, hi = float(r[0]), float(r[1])
        p = ops.qparams_from_range(lo, hi, 8, symmetric=False)
        return p.scale, p.zero_point

    return run(observe, finish, stream, "range -> our asymmetric int8 rule")


def torch_hist(stream) -> Result:
    import torch
    from torch.ao.quantization.observer import HistogramObserver

    obs = HistogramObserver()

    def observe(b):
        obs(torch.from_numpy(b))

    def finish():
        s, z = obs.calculate_qparams()
        return float(s), int(z) - 128  # quint8 [0, 255] is our int8 grid shifted by 128

    return run(observe, finish, stream, "its own quint8 qparams")


def mse(stream, qp) -> float:
    if qp is None:
        return float("nan")
    tot = 0.0
    for b in stream:
        d = ops.fake_quant(b, qp[0], qp[1]).astype(np.float64) - b
        tot += float(np.dot(d.reshape(-1), d.reshape(-1)))
    return tot / (len(stream) * stream[0].size)


def methods(have_torch: bool) -> Dict[str, Callable]:
    m: Dict[str, Callable] = {
        "ferroquant HFMG": lambda s: ours(s, lambda: HistogramCalibrator("x", "hfmg")),
        "ferroquant HFMG (NumPy twin)": lambda s: ours(s, lambda: HistogramCalibrator("x", "hfmg", backend="reference")),
        "ferroquant IFMR exact": lambda s: ours(s, lambda: IFMRCalibrator("x", memory_budget=2 << 30)),
        "ferroquant IFMR exact, AMCT window": lambda s: ours(
            s, lambda: IFMRCalibrator("x", memory_budget=2 << 30, search_extend=False)),
        "ferroquant IFMR histogram mode": lambda s: ours(s, lambda: IFMRCalibrator("x", mode="histogram")),
        "ferroquant MinMax": lambda s: ours(s, lambda: HistogramCalibrator("x", "minmax")),
        "ferroquant Percentile 99.999": lambda s: ours(s, lambda: HistogramCalibrator("x", "percentile")),
        "ferroquant KL (TensorRT)": lambda s: ours(s, lambda: HistogramCalibrator("x", "entropy")),
        "onnxruntime percentile": lambda s: ort(s, "percentile"),
        "onnxruntime distribution": lambda s: ort(s, "distribution"),
        "onnxruntime entropy": lambda s: ort(s, "entropy"),
        "onnxruntime entropy, 2048 bins": lambda s: ort(s, "entropy", 2048),
    }
    if have_torch:
        m["torch HistogramObserver"] = torch_hist
    return m


def stream_table(kind: str, n: int, have_torch: bool) -> Tuple[Table, Dict[str, Result], Dict[str, float]]:
    stream = make_stream(kind, n)
    gb = sum(b.nbytes for b in stream) / 1e9
    floor = median_time(lambda: [np.max(np.abs(b)) for b in stream], 3)
    t = Table(f"{kind}: {n} batches of {list(SHAPE)} float32 ({gb:.2f} GB)",
              ["method", "observe s", "qparams s", "total s", "observe GB/s", "peak extra MB", "int8 MSE", "note"])
    res, errs = {}, {}
    for name, fn in methods(have_torch).items():
        r = fn(stream)
        res[name], errs[name] = r, mse(stream, r[3])
        t.add(name, f"{r[0]:.3f}", f"{r[1]:.3f}", f"{r[0] + r[1]:.3f}", f"{gb / r[0]:.2f}", f"{r[2] / 1e6:.1f}",
              f"{errs[name]:.4e}", r[4])
    t.notes.append(f"Streaming floor: one `np.max(np.abs(x))` pass over the stream takes {floor:.3f} s "
                   f"({gb / floor:.2f} GB/s); HFMG observe / floor = {res['ferroquant HFMG'][0] / floor:.2f}x.")
    return t, res, errs | {"_floor": floor}


def ratios(kind: str, res: Dict[str, Result], errs: Dict[str, float]) -> List[str]:
    tot = {k: v[0] + v[1] for k, v in res.items()}
    h = tot["ferroquant HFMG"]
    lines = [f"**{kind}** — HFMG end to end {h:.3f} s:"]
    for peer in [k for k in tot if not k.startswith("ferroquant HFMG")]:
        lines.append(f"- vs {peer}: {tot[peer] / h:.1f}x")
    lines.append(f"- vs its NumPy twin: {tot['ferroquant HFMG (NumPy twin)'] / h:.1f}x")
    lines.append(f"- HFMG observe vs the np.max(np.abs(x)) floor: {res['ferroquant HFMG'][0] / errs['_floor']:.2f}x")
    lines.append(f"- IFMR histogram mode observe / HFMG observe: "
                 f"{res['ferroquant IFMR histogram mode'][0] / res['ferroquant HFMG'][0]:.2f}")
    peers = {k: v for k, v in errs.items() if not k.startswith(("ferroquant", "_")) and v == v}
    best = min(peers, key=peers.get)
    lines.append(f"- MSE: HFMG {errs['ferroquant HFMG']:.4e} vs best peer ({best}) {peers[best]:.4e}; "
                 f"IFMR (extended) / HFMG = {errs['ferroquant IFMR exact'] / errs['ferroquant HFMG']:.3f}; "
                 f"IFMR (AMCT window) / HFMG = {errs['ferroquant IFMR exact, AMCT window'] / errs['ferroquant HFMG']:.3f}")
    return lines


def ifmr_search_table(n: int) -> Table:
    x = make_stream("relu_t", 1, (n,), seed=9)[0]
    t = Table(f"IFMR 61-candidate search on {n / 1e6:.0f}M values (ReLU'd Student-t)",
              ["kernel", "native s", "NumPy twin s", "NumPy/native"])
    amct = ops.IfmrOptions(search_extend=False)
    tn = median_time(lambda: ops.ifmr(x, amct), 3)
    tr = median_time(lambda: reference.ifmr(x, amct), 1, warmup=0, budget_s=120)
    t.add("ifmr (exact, 61 candidates)", f"{tn:.3f}", f"{tr:.2f}", f"{tr / tn:.1f}x")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="4 batches, IFMR search on 6.4M values")
    args = ap.parse_args()
    n = 4 if args.quick else args.batches
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    tables, lines = [], []
    for kind in ("gaussian", "relu_t"):
        t, res, errs = stream_table(kind, n, have_torch)
        tables.append(t)
        lines += ratios(kind, res, errs) + [""]
    tables.append(ifmr_search_table(6_400_000 if args.quick else 50_000_000))
    intro = (f"Threads: ferroquant {ops.get_num_threads()}. Peak extra = resident-set high-water mark above the "
             "stream already in memory. MSE = int8 fake-quant error over the whole stream with each method's "
             "qparams.\n\n" + "\n".join(lines))
    write_report("calibration", tables, intro)


if __name__ == "__main__":
    main()
