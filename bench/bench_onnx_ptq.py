"""MobileNetV2 (ImageNet weights) int8 PTQ: ferroquant vs onnxruntime ``quantize_static`` and OpenVINO NNCF
``nncf.quantize`` (default and MIXED presets; `pip install nncf`) on the same real photos.

    python bench/bench_onnx_ptq.py [--calib 32] [--eval 96] [--memory-sizes 16,64]

Every method runs in its own process (so peak memory is its own): the whole quantization from the float
model to a saved deploy model, timed; then the deploy model's top-1 agreement with FP32 on photos that were
not used for calibration, run in onnxruntime with graph optimizations disabled (each Q/DQ executed as written,
so the calibration is measured, not the runtime's fused kernels) and enabled. ``--memory-sizes`` reruns the
quantization with other calibration-set sizes to show how peak memory grows with the number of images.
Writes bench/results/onnx_ptq.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Table, write_report  # noqa: E402

METHODS = ["ferroquant HFMG", "ferroquant IFMR", "ort MinMax", "ort Entropy", "ort Percentile", "nncf default",
           "nncf MIXED"]
BATCH = 8


def _data(n_calib: int, n_eval: int):
    from ferroquant.examples.photos import calibration_and_eval_sets

    return calibration_and_eval_sets(n_calib, n_eval, seed=0)


def _float_model(path: Path) -> None:
    import onnx

    from ferroquant.examples.models import mobilenet_v2_onnx

    onnx.save(mobilenet_v2_onnx(), str(path))


def _quantize(method: str, fp32: Path, out: Path, calib: np.ndarray) -> None:
    feeds = [{"input": calib[i : i + BATCH]} for i in range(0, len(calib), BATCH)]
    if method.startswith("ferroquant"):
        import ferroquant.onnx as fo

        algo = "hfmg" if "HFMG" in method else "ifmr"
        fo.quantize(str(fp32), feeds, out, config_defination={
            "common_config": {"activation": {"algorithm": algo}}})
        return
    if method.startswith("nncf"):  # OpenVINO NNCF's ONNX backend (pip install nncf), one crop per item
        import nncf
        import onnx

        kw = {"preset": nncf.QuantizationPreset.MIXED} if "MIXED" in method else {}
        items = [{"input": calib[i : i + 1]} for i in range(len(calib))]
        q = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(items), subset_size=len(items), **kw)
        onnx.save(q, str(out))
        return
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):  # noqa: ANN202
            return next(self.it, None)

    cm = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy,
          "Percentile": CalibrationMethod.Percentile}[method.split()[-1]]
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=cm)


def _run(model: Path, x: np.ndarray, optimize: bool) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    s = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + BATCH]})[0] for i in range(0, len(x), BATCH)])


def _agreement(ref: np.ndarray, got: np.ndarray) -> Dict[str, float]:
    top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
    top5 = float(np.mean([r in np.argsort(-g)[:5] for r, g in zip(ref.argmax(1), got)]))
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    sqnr = 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / max(noise, 1e-30))
    return {"top1": top1, "top5": top5, "sqnr_db": sqnr}


def worker(method: str, n_calib: int, n_eval: int, workdir: Path) -> Dict[str, float]:
    fp32 = workdir / "mobilenet_v2.onnx"
    sets = _data(n_calib, n_eval)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = workdir / f"{method.replace(' ', '_')}_{n_calib}.onnx"
    t0 = time.perf_counter()
    _quantize(method, fp32, out, sets.calibration)
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res = {"time_s": took, "peak_mb": peak / 1e6, "base_mb": base / 1e6, "size_mb": out.stat().st_size / 1e6}
    if n_eval:
        ref = _run(fp32, sets.evaluation, True)
        for opt in (False, True):
            a = _agreement(ref, _run(out, sets.evaluation, opt))
            res.update({f"{k}_{'opt' if opt else 'noopt'}": v for k, v in a.items()})
    return res


def _spawn(method: str, n_calib: int, n_eval: int, workdir: Path) -> Dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", method, "--calib", str(n_calib), "--eval", str(n_eval),
           "--workdir", str(workdir)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=96)
    ap.add_argument("--memory-sizes", default="16,64")
    ap.add_argument("--worker")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.calib, args.eval, Path(args.workdir))))
        return
    with tempfile.TemporaryDirectory() as d:
        wd = Path(d)
        _float_model(wd / "mobilenet_v2.onnx")
        sets = _data(args.calib, args.eval)
        t = Table(f"MobileNetV2 int8, {args.calib} calibration crops, {args.eval} evaluation crops from other photos",
                  ["method", "quantize s", "peak RSS MB", "deploy MB", "top-1 agree (no opt)", "top-5 (no opt)",
                   "SQNR dB (no opt)", "top-1 agree (ORT opt)"])
        results = {}
        for m in METHODS:
            r = _spawn(m, args.calib, args.eval, wd)
            results[m] = r
            t.add(m, f"{r['time_s']:.2f}", f"{r['peak_mb']:.0f}", f"{r['size_mb']:.2f}", f"{r['top1_noopt']:.3f}",
                  f"{r['top5_noopt']:.3f}", f"{r['sqnr_db_noopt']:.2f}", f"{r['top1_opt']:.3f}")
        sizes = [int(s) for s in args.memory_sizes.split(",") if s]
        mt = Table("Peak memory against the number of calibration images",
                   ["method"] + [f"{s} images: s / peak MB" for s in sizes])
        for m in METHODS:
            cells = []
            for s in sizes:
                r = _spawn(m, s, 0, wd)
                cells.append(f"{r['time_s']:.2f} / {r['peak_mb']:.0f} (base {r['base_mb']:.0f})")
            mt.add(m, *cells)
        t.notes.append(f"Calibration photos: {', '.join(sets.calibration_photos)}; evaluation photos: "
                       f"{', '.join(sets.evaluation_photos)}. Agreement = FP32 top-1 class reproduced.")
        write_report("onnx_ptq", [t, mt], "Each row is a separate process; 'quantize s' covers loading the float "
                     "model, calibration, weight quantization and saving the deploy model.")


if __name__ == "__main__":
    main()
