"""Models nobody here wrote, quantized as a new user would (``fq.quantize`` with the default config):

    python bench/bench_foreign.py [--scale 2] [--only NAME ...] [--no-conformance]

For each model of the foreign corpus (``tests/foreign/corpus.py``: RapidOCR, ddddocr, nudenet, silero-vad)
and the torch exports (MobileNetV2 with ImageNet weights, TorchScript and dynamo exporters; transformers
BERT / GPT-2 / Llama with random weights), in its own process: load time, BN folds, layers quantized,
calibration and total quantization time, peak RSS of the quantization, deploy size against FP32, and the
deploy model's output cosine / SQNR against FP32 and the task metric on inputs not used for calibration
(onnxruntime with graph optimizations off for the int8 model). Then the ONNX conformance corpus of the onnx
wheel: counts by outcome and the refusal reasons. Writes bench/results/foreign.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from harness import Table, write_report  # noqa: E402

TORCH = ["MobileNetV2 (TorchScript, opset 13, BN kept)", "MobileNetV2 (dynamo, opset 18)", "BERT (transformers)",
         "GPT-2 (transformers)", "Llama (transformers)"]


def _torch_entry(name: str, out: Path):  # noqa: ANN202 - (Foreign, fp32 path)
    import numpy as np

    from tests.foreign.corpus import Agreement, Foreign, session
    from tests.foreign.torch_models import export_mobilenet, export_transformer, feeds_of, token_feeds, top1_agreement

    if name.startswith("MobileNetV2"):
        from ferroquant.examples.photos import calibration_and_eval_sets

        sets = calibration_and_eval_sets(32, 96, seed=0)
        dynamo = "dynamo" in name
        path = export_mobilenet(out / "mnv2.onnx", 18 if dynamo else 13, keep_bn=not dynamo, dynamo=dynamo)

        def evaluate(fp32: Path, quant: Path, ctx: Any) -> Dict[str, Any]:
            ref = session(fp32, True).run(None, {"input": sets.evaluation})[0]
            got = session(quant).run(None, {"input": sets.evaluation})[0]
            agree = Agreement()
            agree.add(ref, got)
            top5 = float(np.mean([r in np.argsort(g)[-5:] for r, g in zip(ref.argmax(1), got)]))
            t1 = top1_agreement(ref, got)
            return {**agree.metrics(), "task": f"top-1 = FP32 on {t1:.3f}, FP32 top-1 in int8 top-5 {top5:.3f} "
                                               f"({len(ref)} photo crops)"}

        return Foreign(name, "torch", path.name, lambda _: feeds_of(sets.calibration, 8), evaluate), path
    kind = name.split()[0].lower().replace("-", "")
    path = export_transformer(kind, out / f"{kind}.onnx")

    def evaluate_t(fp32: Path, quant: Path, ctx: Any) -> Dict[str, Any]:
        a, b, agree = session(fp32, True), session(quant), Agreement()
        for feed in token_feeds(8, seed=1, batch=3, seq=(5, 30)):
            agree.add(a.run(None, feed)[0], b.run(None, feed)[0])
        return {**agree.metrics(), "task": "last hidden state, random weights (structure only)"}

    return Foreign(name, "torch", path.name, lambda _: token_feeds(8, seed=0), evaluate_t), path


def child(name: str, out: Path, ctx: Dict[str, str], scale: float) -> Dict[str, Any]:
    """Quantize and evaluate one model in this process; peak RSS covers the quantization only."""
    from memory import _status, reset_peak

    from tests.foreign import corpus
    from tests.foreign.models import find

    corpus.SCALE = scale
    if name in corpus.BY_NAME:
        entry = corpus.BY_NAME[name]
        path, why = find(entry.package, entry.file)
        if path is None:
            return {"name": name, "skipped": why}
        source = f"{entry.package} wheel: {entry.file}"
    else:
        entry, path = _torch_entry(name, out)
        source = "torch.onnx.export"
    base = reset_peak()
    r = corpus.quantize_one(entry, path, out)
    peak = _status("VmHWM")
    t0 = time.perf_counter()
    metrics = entry.evaluate(path, r.deploy, {k: Path(v) for k, v in ctx.items()})
    return {"name": name, "source": source, "opset": r.opset, "load_s": r.load_s, "folded": r.folded,
            "layers": r.layers, "calib_s": r.calib_s, "total_s": r.total_s, "peak_mb": peak / 2**20,
            "base_mb": base / 2**20, "size_ratio": r.deploy_bytes / r.fp32_bytes, "fp32": str(path),
            "deploy": str(r.deploy), "eval_s": time.perf_counter() - t0, "metrics": metrics,
            "target": list(entry.target) if entry.target else None}


def _run_child(name: str, out: Path, ctx: Dict[str, str], scale: float) -> Dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", name, "--out", str(out), "--ctx", json.dumps(ctx), "--scale", str(scale)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"name": name, "failed": p.stderr.strip().splitlines()[-1:] or ["?"]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def models_table(rows: List[Dict[str, Any]]) -> Table:
    t = Table("Foreign models: int8 deploy model (default config) against FP32 on held-out inputs",
              ["model", "source", "opset", "load s", "BN folded", "layers quantized", "calibration s", "total s",
               "peak RSS MB (before it)", "deploy / FP32 size", "output cosine", "SQNR dB", "task"])
    for r in rows:
        if "metrics" not in r:
            t.rows.append([r["name"]] + ["-"] * 11 + [r.get("skipped") or f"FAILED: {r.get('failed')}"])
            continue
        m = r["metrics"]
        t.rows.append([r["name"], r["source"], str(r["opset"]), _fmt(r["load_s"], 2), str(r["folded"]),
                       str(r["layers"]), _fmt(r["calib_s"], 1), _fmt(r["total_s"], 1),
                       f"{r['peak_mb']:.0f} (base {r['base_mb']:.0f})",
                       _fmt(r["size_ratio"], 2), _fmt(m["cosine"], 4), _fmt(m["sqnr_db"], 1), m["task"]])
    return t


def conformance_tables() -> List[Table]:
    from tests.foreign.conformance import run_all, summary

    t0 = time.perf_counter()
    s = summary(run_all())
    secs = time.perf_counter() - t0
    counts = Table(f"ONNX conformance corpus of the onnx wheel ({s['total']} models, {secs:.0f} s)",
                   ["outcome", "models", "example"])
    counts.rows.append(["tried (a float input)", str(s["tried"]), ""])
    for kind, n in sorted(s["kinds"].items(), key=lambda kv: -kv[1]):
        counts.rows.append([kind, str(n), s["examples"].get(kind, "")])
    reasons = Table("Refusals by reason", ["models", "reason (names and numbers folded)"])
    for reason, n in s["reasons"]:
        reasons.rows.append([str(n), reason.replace("|", "/")])
    return [counts, reasons]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=2.0, help="held-out inputs, times the tests' number")
    ap.add_argument("--only", action="append", default=[], help="only these models (by name)")
    ap.add_argument("--no-conformance", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--ctx", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.out), json.loads(args.ctx), args.scale), default=str))
        return
    from tests.foreign.corpus import CORPUS

    names = [e.name for e in CORPUS] + TORCH
    if args.only:
        names = [n for n in names if n in args.only]
    rows, ctx = [], {}
    with tempfile.TemporaryDirectory(prefix="ferroquant-foreign-") as tmp:
        for name in names:
            out = Path(tmp) / str(len(rows))
            out.mkdir()
            r = _run_child(name, out, ctx, args.scale)
            if "deploy" in r:
                ctx[name + ":fp32"], ctx[name + ":quant"] = r["fp32"], r["deploy"]
            rows.append(r)
            print(f"{name}: {r.get('metrics', {}).get('task', r.get('skipped') or r.get('failed'))}", flush=True)
    tables = [models_table(rows)] + ([] if args.no_conformance else conformance_tables())
    notes = ("Each model runs in its own process; peak RSS is the process's high-water mark during the "
             "quantization (load, fuse, calibrate, search, save); 'before it' is the process's RSS when quantization "
             "starts (Python, onnxruntime, the inputs, and torch for the exported models). Opset: as exported "
             "(below 13 it is upgraded on load). "
             "Calibration and held-out inputs: rendered text lines (matplotlib's DejaVu fonts, words from "
             "pydoc_data) and pages for the OCR models, with scikit-image's page.png/text.png as real text; "
             "captcha-package images for ddddocr; letterboxed photos (faces kept for evaluation) for YOLO; "
             "synthetic audio for silero-vad (not speech: the model stays near 0, so its decision metric is weak); "
             "other photos for MobileNetV2; random token ids for the transformers. PP-OCRv4's cls is the same file "
             "as the mobile cls row. The det rows run the whole det+rec pipeline with both int8 models. A "
             "generated 2.25 GiB model (external data) is in tests/onnx/test_large_model.py, which prints its "
             "time and peak RSS.")
    flags = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")), "")
    vnni = [f for f in ("avx512_vnni", "avx_vnni") if f in flags.split()]
    notes = f"VNNI: {', '.join(vnni) or 'no'} (the int8 rows run with graph optimizations off). " + notes
    write_report("foreign", tables, notes)


if __name__ == "__main__":
    main()
