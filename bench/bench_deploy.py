"""Deploy models on onnxruntime's CPU: latency and accuracy of FP32, each ferroquant profile and onnxruntime's own
``quantize_static`` (QDQ, per-channel, with and without ``reduce_range``), on the same calibration data.

    python bench/bench_deploy.py [--calib 32] [--eval 256] [--runs 30] [--models mobilenet_v2,mobilenet_v2_folded]
                                 [--foreign "PP-OCRv6 rec,PP-OCRv6 det,PP-OCR mobile cls,nudenet 320n (YOLOv8n)"]
                                 [--foreign-runs 10]

Latency: onnxruntime with graph optimizations on, 1 and 2 intra-op threads, median of ``--runs`` runs of one
image, the models interleaved run by run in one process (so a change in the machine's speed hits all alike).
Accuracy: top-1 agreement with FP32 (and FP32's top-1 inside the top-5) on ``--eval`` crops of photos not used
for calibration, run as specified (optimizations off: every Q and DQ executed as written) and with onnxruntime's
integer kernels (optimizations on). Deploy size against the FP32 file. Writes bench/results/deploy.md with the CPU
and its VNNI flag (without VNNI onnxruntime's u8 x s8 kernels can saturate; see quant/profiles.py).

``--foreign``: models of the foreign corpus (``tests/foreign/corpus.py``: their calibration data, and their task
measure on held-out inputs: OCR text, the direction decision, detection boxes), with ferroquant's onnxruntime
profile (IFMR, the default) and ``quantize_static``: latency on the first calibration feed (``--foreign-runs``
runs) and the task measure as specified and with onnxruntime's integer kernels. PP-OCRv6 det is read with the rec
model quantized by the same method.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Table, latency_ms, session, write_report  # noqa: E402

BATCH = 8


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in have) or "-"
    except OSError:
        pass
    return "unknown"


def logits(path: Path, x: np.ndarray, optimize: bool) -> np.ndarray:
    s = session(path, optimize, threads=2)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + BATCH]})[0] for i in range(0, len(x), BATCH)])


def agreement(ref: np.ndarray, got: np.ndarray) -> Tuple[float, float]:
    top1 = ref.argmax(1)
    top5 = np.argsort(-got, axis=1)[:, :5]
    return float(np.mean(top1 == got.argmax(1))), float(np.mean([t in r for t, r in zip(top1, top5)]))


# -- the methods -----------------------------------------------------------------------------------------------
def ferroquant(profile: str, algorithm: str) -> Callable[[Path, List[dict], Path], None]:
    def run(fp32: Path, feeds: List[dict], out: Path) -> None:
        import ferroquant.onnx as fo

        fo.quantize(str(fp32), feeds, out, profile=profile, config_defination={
            "common_config": {"activation": {"algorithm": algorithm}}})
    return run


def ort_static(reduce_range: bool) -> Callable[[Path, List[dict], Path], None]:
    def run(fp32: Path, feeds: List[dict], out: Path) -> None:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(feeds)

            def get_next(self):  # noqa: ANN202
                return next(self.it, None)

        quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return run


METHODS = {
    "ferroquant onnxruntime (HFMG)": ferroquant("onnxruntime", "hfmg"),
    "ferroquant onnxruntime (IFMR)": ferroquant("onnxruntime", "ifmr"),
    "ferroquant tensorrt (HFMG)": ferroquant("tensorrt", "hfmg"),
    "ferroquant amct (HFMG)": ferroquant("amct", "hfmg"),
    "ort quantize_static": ort_static(False),
    "ort quantize_static reduce_range": ort_static(True),
}


def mobilenet_v2(folded: bool, work: Path) -> Path:
    import onnx

    from ferroquant.examples.models import mobilenet_v2_onnx
    from ferroquant.onnx import prepare_model

    m = mobilenet_v2_onnx()
    path = work / ("mobilenet_v2_folded.onnx" if folded else "mobilenet_v2.onnx")
    onnx.save(prepare_model(m).model if folded else m, str(path))
    return path


def bench_model(name: str, fp32: Path, calib: np.ndarray, evaluation: np.ndarray, runs: int, work: Path,
                lat: Table, acc: Table) -> None:

    input_name = session(fp32).get_inputs()[0].name
    feeds = [{input_name: calib[i:i + BATCH]} for i in range(0, len(calib), BATCH)]
    paths = {"FP32": fp32}
    quant_s: Dict[str, float] = {}
    for label, fn in METHODS.items():
        out = work / f"{name}_{len(paths)}.onnx"
        t0 = time.perf_counter()
        fn(fp32, feeds, out)
        quant_s[label] = time.perf_counter() - t0
        paths[label] = out
    x = evaluation[:1]
    ms = {t: latency_ms(paths, {input_name: x}, t, runs) for t in (1, 2)}
    ref = logits(fp32, evaluation, False)
    fp32_mb = fp32.stat().st_size / 1e6
    for label, p in paths.items():
        spec, fused = agreement(ref, logits(p, evaluation, False)), agreement(ref, logits(p, evaluation, True))
        lat.add(name, label, ms[1][label], ms[1]["FP32"] / ms[1][label], ms[2][label], ms[2]["FP32"] / ms[2][label],
                p.stat().st_size / 1e6, p.stat().st_size / 1e6 / fp32_mb)
        acc.add(name, label, spec[0], spec[1], fused[0], fused[1], quant_s.get(label, 0.0))


FOREIGN = ("PP-OCRv6 rec", "PP-OCRv6 det", "PP-OCR mobile cls", "nudenet 320n (YOLOv8n)")
FOREIGN_METHODS = ("ferroquant onnxruntime (IFMR)", "ort quantize_static")


def _task(metrics: Dict[str, object]) -> str:
    """The corpus's one-line task measure, or its first agreement figure."""
    return str(metrics.get("task") or next((f"{k} {v:.3f}" for k, v in metrics.items() if "agreement" in k), "-"))


def bench_foreign(names: List[str], runs: int, work: Path, lat: Table, acc: Table) -> None:
    """Latency and task measure of foreign-corpus models (see the module docstring)."""
    import contextlib

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.foreign import corpus
    from tests.foreign.models import find

    @contextlib.contextmanager
    def fused():  # the corpus runs quantized models as specified; this runs them with the integer kernels
        plain = corpus.session
        corpus.session = lambda path, optimize=False: plain(path, True)
        try:
            yield
        finally:
            corpus.session = plain

    quantized: Dict[Tuple[str, str], Path] = {}
    for name in names:
        entry = corpus.BY_NAME[name]
        fp32, why = find(entry.package, entry.file)
        if fp32 is None:
            print(f"   {name}: skipped ({why})", flush=True)
            continue
        feeds = entry.calib(fp32)
        paths: Dict[str, Path] = {"FP32": fp32}
        quant_s: Dict[str, float] = {}
        for label in FOREIGN_METHODS:
            out = work / f"{entry.file}_{len(paths)}.onnx"
            t0 = time.perf_counter()
            try:
                METHODS[label](fp32, feeds, out)
                session(out).get_inputs()  # a model onnxruntime cannot load is that method's failure
            except Exception as e:  # noqa: BLE001 - a peer's failure is a result of the bench
                why = " ".join(str(e).split())[:160]
                lat.add(name, label, f"fails: {why}", "-", "-", "-", "-", "-")
                acc.add(name, label, f"fails: {why}", "-", round(time.perf_counter() - t0, 1))
                continue
            quant_s[label] = time.perf_counter() - t0
            paths[label] = quantized[(name, label)] = out
        ms = {t: latency_ms(paths, feeds[0], t, runs, warm=1) for t in (1, 2)}
        for label, p in paths.items():
            lat.add(name, label, ms[1][label], ms[1]["FP32"] / ms[1][label], ms[2][label],
                    ms[2]["FP32"] / ms[2][label], p.stat().st_size / 1e6, p.stat().st_size / fp32.stat().st_size)
            if label == "FP32":
                continue
            ctx = {f"{n}:{k}": v for n in entry.needs
                   for k, v in (("fp32", find(corpus.BY_NAME[n].package, corpus.BY_NAME[n].file)[0]),
                                ("quant", quantized.get((n, label))))}
            missing = [n for n in entry.needs if ctx[f"{n}:quant"] is None]
            if missing:
                acc.add(name, label, f"not measured: needs {', '.join(missing)} from the same method", "-",
                        quant_s[label])
                continue
            spec = entry.evaluate(fp32, p, ctx)
            with fused():
                fast = entry.evaluate(fp32, p, ctx)
            acc.add(name, label, _task(spec), _task(fast), quant_s[label])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--eval", type=int, default=256)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--models", default="mobilenet_v2,mobilenet_v2_folded")
    ap.add_argument("--foreign", default=",".join(FOREIGN), help="foreign-corpus models ('' for none)")
    ap.add_argument("--foreign-runs", type=int, default=10)
    ap.add_argument("--report-name", default="deploy", help="bench/results/<name>.md (default deploy)")
    args = ap.parse_args()
    from ferroquant.examples.photos import calibration_and_eval_sets
    from ferroquant.quant.profiles import detect_cpu_types

    sets = calibration_and_eval_sets(args.calib, args.eval, seed=0)
    lat = Table("Latency (onnxruntime CPU, optimizations on, batch 1)",
                ["model", "method", "1 thread ms", "speed-up", "2 threads ms", "speed-up", "size MB", "size / FP32"])
    acc = Table(f"Top-1 agreement with FP32 ({args.eval} crops; as specified = optimizations off, every Q/DQ "
                "executed; fused = onnxruntime's integer kernels)",
                ["model", "method", "as specified", "top-5", "fused", "top-5 fused", "quantize s"])
    flat = Table("Foreign models: latency (onnxruntime CPU, optimizations on, the first calibration feed)",
                 ["model", "method", "1 thread ms", "speed-up", "2 threads ms", "speed-up", "size MB", "size / FP32"])
    facc = Table("Foreign models: the task measure against FP32 on held-out inputs (tests/foreign/corpus.py)",
                 ["model", "method", "as specified", "fused (integer kernels)", "quantize s"])
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for name in filter(None, args.models.split(",")):
            print(f"== {name}", flush=True)
            bench_model(name, mobilenet_v2(name.endswith("folded"), work), sets.calibration, sets.evaluation,
                        args.runs, work, lat, acc)
        foreign = [n for n in args.foreign.split(",") if n]
        if foreign:
            print(f"== {', '.join(foreign)}", flush=True)
            bench_foreign(foreign, args.foreign_runs, work, flat, facc)
    cpu = detect_cpu_types()
    intro = f"CPU flags: {cpu_flags()}; ferroquant's onnxruntime profile chose {cpu.name} ({cpu.reason})."
    if args.models:
        intro += (f" {args.calib} calibration crops, {args.eval} evaluation crops of other photos; latency median of "
                  f"{args.runs} runs per model, interleaved.")
    if args.foreign:
        intro += (f" Foreign models: the corpus's calibration feeds and held-out inputs; latency median of "
                  f"{args.foreign_runs} runs per model, interleaved; ferroquant with its default latency check (a "
                  "model whose size is the FP32 size was kept float by it on this machine).")
    tables = ([lat, acc] if args.models else []) + ([flat, facc] if args.foreign else [])
    write_report(args.report_name, tables, intro)


if __name__ == "__main__":
    main()
