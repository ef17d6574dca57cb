"""The README's main job, ``ferroquant demo``: MobileNetV2 with its ImageNet weights, calibrated on real photos
with HFMG and IFMR activations (ARQ per-channel int8 weights) and with NUQ weights, each deploy model compared
with FP32 on photos not used for calibration, and the per-layer report of one of them.

``ferroquant demo --weights`` (:func:`weights_demo`) is the weights-only demo: ARQ (8, 5 and 4 bits) and NUQ
(32 and 16 of the 256 int8 levels) on every weight tensor, with speed and parity against the NumPy reference."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from ferroquant import ops, reference
from ferroquant.examples.pretrained import mobilenet_v2_state_dict


def sqnr_db(w: np.ndarray, fake: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact), from the native comparison kernel."""
    return ops.compare(w, fake).sqnr_db


def _timed(fn: Callable[[], object]) -> Tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


METHODS: Dict[str, Tuple[Callable, Callable]] = {
    "ARQ int8": (lambda w: ops.arq(w).fake, lambda w: reference.arq(w).fake),
    "ARQ int5": (lambda w: ops.arq(w, bits=5).fake, lambda w: reference.arq(w, bits=5).fake),
    "ARQ int4": (lambda w: ops.arq(w, bits=4).fake, lambda w: reference.arq(w, bits=4).fake),
    "NUQ 32": (lambda w: ops.nuq(w, 32, 1).fake, lambda w: reference.nuq(w, 32, 1).fake),
    "NUQ 16": (lambda w: ops.nuq(w, 16, 1).fake, lambda w: reference.nuq(w, 16, 1).fake),
}


def _weights_rows(sd: Dict[str, np.ndarray], names: List[str], check_reference: bool
                  ) -> Tuple[List[Dict[str, Any]], Dict[str, float], Dict[str, float], List[str]]:
    t_native = {m: 0.0 for m in METHODS}
    t_ref = {m: 0.0 for m in METHODS}
    mismatches: List[str] = []
    rows: List[Dict[str, Any]] = []
    for name in names:
        w = sd[name]
        row: Dict[str, Any] = {"layer": name, "shape": list(w.shape)}
        for m, (native, ref) in METHODS.items():
            fake, dt = _timed(lambda: native(w))
            t_native[m] += dt
            row[m] = sqnr_db(w, fake)
            if check_reference:
                want, dr = _timed(lambda: ref(w))
                t_ref[m] += dr
                if not np.array_equal(fake, want):
                    mismatches.append(f"{name} {m}")
        rows.append(row)
    return rows, t_native, t_ref, mismatches


def weights_demo(layers: int = 0, check_reference: bool = True, out_dir: Union[str, Path, None] = None) -> int:
    """ARQ and NUQ on MobileNetV2's weight tensors (the first ``layers``, 0: all): SQNR per tensor and method,
    time, parity with the NumPy reference. Prints the table; with ``out_dir``, also writes it there as
    ``weights_demo.txt`` and ``weights_demo.json``. Returns 1 when native and reference results differ."""
    sd = mobilenet_v2_state_dict()
    names = [k for k, v in sd.items() if k.endswith("weight") and v.ndim in (2, 4)]
    if layers:
        names = names[:layers]
    rows, t_native, t_ref, mismatches = _weights_rows(sd, names, check_reference)
    total = sum(sd[k].size for k in names)
    lines = [f"MobileNetV2 (torchvision ImageNet weights): {len(names)} weight tensors, {total / 1e6:.2f}M values",
             f"native threads: {ops.get_num_threads()}; per-output-channel scales; SQNR in dB (higher is better)", ""]
    head = ["layer", "shape", *METHODS]
    cells = [[r["layer"], "x".join(map(str, r["shape"])), *(f"{r[m]:6.2f}" for m in METHODS)] for r in rows]
    widths = [max(len(str(r[i])) for r in cells + [head]) for i in range(len(head))]
    lines += ["  ".join(str(c).ljust(wd) for c, wd in zip(r, widths)) for r in [head] + cells] + [""]
    for m in METHODS:
        line = f"{m:9s} native {t_native[m] * 1e3:8.1f} ms"
        if check_reference:
            line += f"   NumPy reference {t_ref[m] * 1e3:9.1f} ms   speed-up {t_ref[m] / max(t_native[m], 1e-9):5.1f}x"
        lines.append(line)
    if check_reference:
        lines += ["", f"parity with the NumPy reference: {'all identical' if not mismatches else mismatches}"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if out_dir is not None:
        _write_weights_demo(Path(out_dir), text, rows, t_native, t_ref if check_reference else None, mismatches)
    return 1 if mismatches else 0


def _write_weights_demo(out: Path, text: str, rows: List[Dict[str, Any]], t_native: Dict[str, float],
                        t_ref: Optional[Dict[str, float]], mismatches: List[str]) -> None:
    from ferroquant.outputs import output_set, write_text

    def num(v: float) -> Any:
        return v if np.isfinite(v) else str(v)

    doc = {"layers": [{"layer": r["layer"], "shape": r["shape"], "sqnr_db": {m: num(r[m]) for m in METHODS}}
                      for r in rows],
           "native_ms": {m: t * 1e3 for m, t in t_native.items()},
           "reference_ms": None if t_ref is None else {m: t * 1e3 for m, t in t_ref.items()},
           "mismatches": mismatches}
    with output_set():
        write_text(out / "weights_demo.txt", text)
        write_text(out / "weights_demo.json", json.dumps(doc, indent=2) + "\n")


# -- the model demo ----------------------------------------------------------------------------------------------
#: (label, activation params, weight params) of each quantized variant
VARIANTS = (
    ("HFMG act + ARQ int8", {"algorithm": "hfmg"}, {"algorithm": "arq"}),
    ("IFMR act + ARQ int8", {"algorithm": "ifmr"}, {"algorithm": "arq"}),
    ("HFMG act + NUQ 32 lv", {"algorithm": "hfmg"}, {"algorithm": "nuq", "num_steps": 32}),
)
BATCH = 8


def _run(model: Union[Path, Any], x: np.ndarray) -> np.ndarray:
    """Logits, onnxruntime with graph optimizations disabled (each Q/DQ as written: the calibration is
    measured, not the runtime's fused int8 kernels)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    s = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"input": x[i:i + BATCH]})[0] for i in range(0, len(x), BATCH)])


def agreement(ref: np.ndarray, got: np.ndarray) -> Dict[str, float]:
    """Top-1 agreement with FP32, FP32's top-1 inside the top-5, and the logits' SQNR (dB)."""
    top1 = ref.argmax(1)
    top5 = np.argsort(-got, axis=1)[:, :5]
    return {"top1": float(np.mean(top1 == got.argmax(1))),
            "top5": float(np.mean([t in row for t, row in zip(top1, top5)])),
            "sqnr": sqnr_db(ref, got)}


def _table(rows: List[List[str]]) -> str:
    head = ["method", "top-1 agree", "in top-5", "SQNR dB", "size MB", "time s"]
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [head] + rows)


def model_demo(out_dir: Union[str, Path] = "ferroquant-demo", n_calib: int = 32, n_eval: int = 64,
               seed: int = 0) -> int:
    """Quantize MobileNetV2 three ways, compare with FP32, write the models and one report into ``out_dir``."""
    from ferroquant.examples.photos import calibration_and_eval_sets
    from ferroquant.examples.models import mobilenet_v2_onnx
    from ferroquant.onnx import create_quant_config, prepare_model, quantize_model, save_model, save_onnx
    from ferroquant.progress import ProgressBar
    from ferroquant.report import create_report, summary_lines

    out = Path(out_dir)
    t0 = time.perf_counter()
    model = mobilenet_v2_onnx()
    sets = calibration_and_eval_sets(n_calib, n_eval, seed)
    fp32_path = save_onnx(model, out / "mobilenet_v2_fp32.onnx")
    print(f"MobileNetV2 (torchvision ImageNet weights); {n_calib} calibration crops of "
          f"{', '.join(sets.calibration_photos)}; {n_eval} evaluation crops of {', '.join(sets.evaluation_photos)}")
    calib = [{"input": sets.calibration[i:i + BATCH]} for i in range(0, len(sets.calibration), BATCH)]
    ref = _run(model, sets.evaluation)
    rows = [["FP32", "1.000", "1.000", "inf", f"{fp32_path.stat().st_size / 1e6:.1f}", "-"]]
    first = None
    prepared = prepare_model(model)  # loaded and fused once for every variant
    for label, act, wts in VARIANTS:
        t = time.perf_counter()
        cfg = create_quant_config(None, prepared, batch_num=len(calib), config_defination={
            "common_config": {"activation": act, "weight": wts}})
        with ProgressBar(f"calibrating {label}", len(calib), "batches") as bar:
            cm = quantize_model(cfg, prepared, calib, progress=bar)
        with ProgressBar(f"searching clips {label}", len(cm.calibrators), "tensors") as bar:
            table = cm.table(progress=bar)
        folder = out / (label.split()[0].lower() + ("_nuq" if "NUQ" in label else ""))
        paths = save_model(cm, folder / "mobilenet_v2", table)
        cfg.save(folder / "config.json")
        dt = time.perf_counter() - t
        m = agreement(ref, _run(paths["deploy"], sets.evaluation))
        rows.append([label, f"{m['top1']:.3f}", f"{m['top5']:.3f}", f"{m['sqnr']:.1f}",
                     f"{paths['deploy'].stat().st_size / 1e6:.1f}", f"{dt:.1f}"])
        first = first or (cm, folder, table)
    cm, folder, table = first
    rep, rpaths = create_report(cm, calib, folder / "report", max_batches=None, table=table)
    print()
    print(_table(rows))
    print(f"\n(agreement with FP32 on {n_eval} evaluation crops, deploy models in onnxruntime with graph "
          "optimizations disabled; time: config + calibration + search + export)")
    print(f"\nmost sensitive layers ({VARIANTS[0][0]}; report measured on the {rep.samples} calibration crops, "
          f"not the evaluation crops of the table):\n{summary_lines(rep)}")
    print(f"\noutputs in {out.resolve()}:")
    print(f"  {fp32_path.name}; per method <dir>/mobilenet_v2_{{fake_quant,deploy}}.onnx, "
          "mobilenet_v2_quant_record.json, config.json")
    print(f"  report: {rpaths['html']}  (fallback config: {rpaths['fallback_config'].name})")
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0
