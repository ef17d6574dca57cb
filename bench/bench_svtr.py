"""PP-OCRv6 rec (SVTR, RapidOCR's ``PP-OCRv6_rec_small.onnx``) quantized the transformer ways of issue 12:
static int8 with and without SmoothQuant balancing of its two blocks (LayerNorm -> qkv, LayerNorm -> fc1), and
weight-only int4 (RTN, GPTQ, AWQ; MatMulNBits) of every MatMul weight. Recognized text compared with FP32's on
held-out rendered lines (and, for static int8, tests/foreign's rec evaluation: rendered lines and real crops).

    python bench/bench_svtr.py [--lines 100]

Writes bench/results/svtr.md."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))
from harness import Table, write_report  # noqa: E402


def main() -> None:
    import ferroquant as fq
    from ferroquant.config import WeightOnlyConfig
    from tests.foreign import ocr
    from tests.foreign.corpus import _rec_calib, _rec_eval, session
    from tests.foreign.models import find

    p = argparse.ArgumentParser()
    p.add_argument("--lines", type=int, default=100, help="held-out rendered lines (static and weight-only rows)")
    a = p.parse_args()
    rec, why = find("rapidocr", "PP-OCRv6_rec_small.onnx")
    if rec is None:
        sys.exit(why)
    work = Path(tempfile.mkdtemp(prefix="bench_svtr_"))
    calib = _rec_calib(rec)
    evaluate = _rec_eval("PP-OCRv6_det_small.onnx")
    lines = ocr.rendered_lines(a.lines, seed=200)
    chars = ocr.characters(rec)
    ref_s = session(rec, True)
    ref = [ocr.ctc_decode(ref_s.run(None, {"x": ocr.rec_input(img)})[0][0], chars) for _, img in lines]

    def texts(path: Path) -> list:
        s = session(path)
        return [ocr.ctc_decode(s.run(None, {"x": ocr.rec_input(img)})[0][0], chars) for _, img in lines]

    st = Table("Static int8, text = FP32 on rendered lines and real crops (tests/foreign's rec evaluation) and on "
               f"{len(lines)} held-out rendered lines",
               ["setting", "cpu types", "layers", "text = FP32", f"text = FP32, {len(lines)} held-out lines",
                "cosine", "SQNR dB", "alphas", "quantize s"])
    for cpu in ("u8s8", "u8s7"):
        for name, sq in (("static int8", None), ("+ SmoothQuant (alpha searched)", {"enabled": True}),
                         ("+ SmoothQuant (alpha 0.5)", {"enabled": True, "alpha": 0.5})):
            kw = {"config_defination": {"methods": {"smooth_quant": sq}}} if sq else {}
            t0 = time.perf_counter()
            out = fq.quantize(rec, calib, work / "s8.onnx", cpu_types=cpu, latency_check=False, **kw)
            took = time.perf_counter() - t0
            m = evaluate(rec, Path(out["paths"]["deploy"]), {})
            held = sum(x == y for x, y in zip(ref, texts(Path(out["paths"]["deploy"]))))
            groups = out["calibrated"].methods.get("smooth_quant", {}).get("groups", [])
            st.add(name, cpu, out["layers"], m["task"].split("on ")[1], f"{held}/{len(lines)}", f"{m['cosine']:.4f}",
                   f"{m['sqnr_db']:.1f}", ", ".join(f"{g['alpha']:g}" for g in groups) or "-", f"{took:.1f}")
    st.notes.append("Latency check off (every quantizable layer int8). Balancing finds the two blocks' "
                    "LayerNorm -> qkv and LayerNorm -> fc1 (LayerNorms written out in elementary ops, an Identity "
                    "before each MatMul); attention's activation x activation MatMuls stay float.")
    wo = Table(f"Weight-only int4 (MatMulNBits, asymmetric), text = FP32 on {len(lines)} held-out rendered lines",
               ["setting", "layers", "text = FP32", "text = truth (FP32: "
                f"{sum(r.strip() == t for r, (t, _) in zip(ref, lines))})", "quantize s"])
    for algo, gs in (("rtn", 128), ("rtn", 32), ("gptq", 128), ("gptq", 32), ("awq", 128), ("awq", 32)):
        t0 = time.perf_counter()
        out = fq.quantize(rec, calib, work / "w4.onnx", weight_only=WeightOnlyConfig(algo, 4, gs))
        took = time.perf_counter() - t0
        got = texts(out["paths"]["deploy"])
        wo.add(f"int4 g{gs} {algo.upper()}", out["layers"], f"{sum(x == y for x, y in zip(ref, got))}/{len(lines)}",
               sum(g.strip() == t for g, (t, _) in zip(got, lines)), f"{took:.1f}")
    wo.notes.append("Every MatMul with a constant weight (the blocks' qkv, proj, fc1, fc2 and the CTC head); the "
                    "Convs stay float. Calibration (GPTQ, AWQ): 32 rendered lines of other text.")
    write_report("svtr", [st, wo], f"load average at end: {os.getloadavg()[0]:.1f} (the machine is shared).")


if __name__ == "__main__":
    main()
