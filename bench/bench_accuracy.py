"""MobileNetV2 (ImageNet weights, BN kept in the ONNX model and folded by each tool) int8 PTQ: the share of each
accuracy method of issue 15 (cross-layer equalization, empirical bias correction, per-channel scales on
depthwise-Conv inputs, output-aware clips, learned rounding, mixed precision), alone and together, beside onnxruntime's ``quantize_static`` and OpenVINO NNCF's
``nncf.quantize`` (default and MIXED presets), in one run on the same crops.

    python bench/bench_accuracy.py [--calib 64] [--eval 320] [--methods NAME,...]

Calibration and evaluation crops come from disjoint *scenes* (:func:`ferroquant.examples.scenes.scene_sets`:
the wheels' photos plus Debian opencv-doc's), so no photo is in both. Each method runs in its own process and
writes a deploy model; its top-1 agreement with FP32 is measured in onnxruntime with graph optimizations disabled
(every Q/DQ executed as written: the method is measured, not a runtime's fused kernels) and enabled. The 90 %
interval resamples evaluation *scenes* (crops of one photo are not independent). Writes
bench/results/accuracy.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_onnx_ptq import _agreement, _run  # noqa: E402
from harness import Table, write_report  # noqa: E402

BATCH = 8
CLE = {"equalization": {"enabled": True}}
CLE6 = {"equalization": {"enabled": True, "relu6_to_relu": True}}
CLE6A = {"equalization": {"enabled": True, "relu6_to_relu": True, "bias_absorption": True}}
BC = {"weight": {"bias_correction": "empirical"}}
DW = {"activation": {"channel_wise": True}}
ADA = {"adaround": {"enabled": True}}
W4 = {"weight": {"bits": 4}}
MP = {"mixed_precision": {"enabled": True}}  # weight size <= all-int8's, >= 90 % of the MACs on int8 activations
MP75 = {"mixed_precision": {"enabled": True, "int8_compute_share": 0.75}}
MPW = {"mixed_precision": {"enabled": True, "size_fraction": 0.75}}
MPO = {"mixed_precision": {"enabled": True, "sensitivity": "output"}}  # ranked by the model's output error
OC = {"activation": {"output_clip": True}}  # output-aware clips (common_config)
DW_OC = {"activation": {"channel_wise": True, "output_clip": True}}
#: name -> (profile, methods section, common_config); onnxruntime rows are per-tensor (deployable there),
#: amct rows may take per-channel depthwise inputs (the NNCF-like setting).
FERROQUANT = {
    "fq ort": ("onnxruntime", {}, {}),
    "fq ort +CLE": ("onnxruntime", CLE, {}),
    "fq ort +CLE(relu6->relu)": ("onnxruntime", CLE6, {}),
    "fq ort +CLE(relu6->relu) +absorption": ("onnxruntime", CLE6A, {}),
    "fq ort +BC": ("onnxruntime", {}, BC),
    "fq ort +CLE +BC": ("onnxruntime", CLE, BC),
    "fq ort +CLE(relu6->relu) +BC": ("onnxruntime", CLE6, BC),
    "fq amct": ("amct", {}, {}),
    "fq amct +CLE(relu6->relu)": ("amct", CLE6, {}),
    "fq amct +BC": ("amct", {}, BC),
    "fq amct +DW per-channel": ("amct", {}, DW),
    "fq amct +DW per-channel +BC": ("amct", {}, {**DW, **BC}),
    "fq amct all: CLE(relu6->relu) +BC +DW": ("amct", CLE6, {**DW, **BC}),
    "fq amct +AdaRound": ("amct", ADA, {}),
    "fq amct +BC +AdaRound": ("amct", ADA, BC),
    "fq amct +DW per-channel +BC +AdaRound": ("amct", ADA, {**DW, **BC}),
    "fq ort +AdaRound": ("onnxruntime", ADA, {}),
    "fq ort +CLE +BC +AdaRound": ("onnxruntime", {**CLE, **ADA}, BC),
    "fq amct W4A8": ("amct", {}, W4),
    "fq amct W4A8 +AdaRound": ("amct", ADA, W4),
    "fq amct W4A8 +BC": ("amct", {}, {"weight": {"bits": 4, "bias_correction": "empirical"}}),
    "fq amct W4A8 +BC +AdaRound": ("amct", ADA, {"weight": {"bits": 4, "bias_correction": "empirical"}}),
    "fq amct MP (size 1.0; int8 MACs 0.9)": ("amct", MP, {}),
    "fq amct MP (size 1.0; int8 MACs 0.75)": ("amct", MP75, {}),
    "fq amct MP (size 0.75; int8 MACs 0.9)": ("amct", MPW, {}),
    "fq amct +DW +BC +MP (size 1.0; 0.9)": ("amct", MP, {**DW, **BC}),
    "fq amct all: DW +BC +AdaRound +MP (size 1.0; 0.9)": ("amct", {**ADA, **MP}, {**DW, **BC}),
    "fq amct all: CLE(relu6->relu) +DW +BC +AdaRound +MP": ("amct", {**CLE6, **ADA, **MP}, {**DW, **BC}),
    "fq ort +CLE(relu6->relu) +BC +AdaRound": ("onnxruntime", {**CLE6, **ADA}, BC),
    "fq amct MP-output (size 1.0; int8 MACs 0.9)": ("amct", MPO, {}),
    "fq amct +DW +BC +MP-output (size 1.0; 0.9)": ("amct", MPO, {**DW, **BC}),
    "fq amct all: DW +BC +AdaRound +MP-output": ("amct", {**ADA, **MPO}, {**DW, **BC}),
    "fq amct all: CLE(relu6->relu) +DW +BC +AdaRound +MP-output": ("amct", {**CLE6, **ADA, **MPO}, {**DW, **BC}),
    "fq ort +OC": ("onnxruntime", {}, OC),
    "fq amct +OC": ("amct", {}, OC),
    "fq ort +BC +OC": ("onnxruntime", {}, {**OC, **BC}),
    "fq amct +BC +OC": ("amct", {}, {**OC, **BC}),
    "fq ort +CLE(relu6->relu) +BC +OC": ("onnxruntime", CLE6, {**OC, **BC}),
    "fq ort +CLE(relu6->relu) +BC +AdaRound +OC": ("onnxruntime", {**CLE6, **ADA}, {**OC, **BC}),
    "fq amct +DW +BC +MP +OC (size 1.0; 0.9)": ("amct", MP, {**DW_OC, **BC}),
    "fq amct all: DW +BC +AdaRound +MP +OC": ("amct", {**ADA, **MP}, {**DW_OC, **BC}),
}
PEERS = ["ort MinMax", "ort Percentile", "nncf default", "nncf MIXED", "nncf default, no bias correction"]
FLOAT = ["FP32 relu6->relu (float)", "FP32 CLE(relu6->relu) (float)", "FP32 CLE(relu6->relu) +absorption (float)"]


def _feeds(x: np.ndarray, batch: int = BATCH) -> List[Dict[str, np.ndarray]]:
    return [{"input": x[i : i + batch]} for i in range(0, len(x), batch)]


def _ferroquant(name: str, fp32: Path, out: Path, calib: np.ndarray) -> Dict[str, object]:
    """Quantize; returns what mixed precision chose (empty without it)."""
    import ferroquant.onnx as fo

    profile, methods, common = FERROQUANT[name]
    common = {k: dict(v) for k, v in common.items()}
    common.setdefault("activation", {})["algorithm"] = "hfmg"
    r = fo.quantize(str(fp32), _feeds(calib), out, profile=profile, latency_check=False,
                    config_defination={"common_config": common, "methods": methods})
    mp = json.loads(r["paths"]["record"].read_text())["extra"].get("methods", {}).get("mixed_precision")
    if not mp:
        return {}
    layers = mp["layers"]
    return {"size_fraction": mp["size_fraction"], "wide_mac_share": mp["wide_mac_share"],
            "a16": [n for n, v in layers.items() if v["activation_bits"] == 16],
            "w4": [n for n, v in layers.items() if v["weight_bits"] == 4], "layers": len(layers)}


def _peer(name: str, fp32: Path, out: Path, calib: np.ndarray) -> None:
    import onnx

    if name.startswith("nncf"):
        import nncf

        kw = {"preset": nncf.QuantizationPreset.MIXED} if "MIXED" in name else {}
        if "no bias" in name:
            kw["fast_bias_correction"] = None  # NNCF: None disables bias correction
        feeds = _feeds(calib, 1)
        q = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(feeds), subset_size=len(feeds), **kw)
        onnx.save(q, str(out))
        return
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    class Reader:
        def __init__(self) -> None:
            self.it = iter(_feeds(calib))

        def get_next(self):  # noqa: ANN202
            return next(self.it, None)

    method = {"MinMax": CalibrationMethod.MinMax, "Percentile": CalibrationMethod.Percentile}[name.split()[-1]]
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=method)


def _float_variant(name: str, fp32: Path, out: Path) -> None:
    """The FP32 model with every ReLU6 made Relu (and equalized): what CLE across ReLU6 costs in float."""
    import onnx

    from ferroquant.config.methods import EqualizationParams
    from ferroquant.onnx.api import prepare_model
    from ferroquant.onnx.equalize import _to_relu, equalize

    from ferroquant.onnx.methods import bn_statistics

    prepared = prepare_model(str(fp32))
    model = prepared.model
    if "CLE" in name:
        params = EqualizationParams(enabled=True, relu6_to_relu=True, bias_absorption="absorption" in name)
        model, _ = equalize(model, params, bn_statistics(prepared.fusion))
    else:
        for n in model.graph.node:
            if n.op_type == "Clip":
                _to_relu(n)
    onnx.save(model, str(out))


def _scene_interval(hit: np.ndarray, scene: np.ndarray, draws: int = 2000) -> List[float]:
    """5th and 95th percentile of the agreement when evaluation scenes are resampled with replacement."""
    rng = np.random.default_rng(0)
    scenes = np.unique(scene)
    per = [hit[scene == s] for s in scenes]
    vals = []
    for _ in range(draws):
        pick = rng.integers(0, len(scenes), len(scenes))
        vals.append(np.concatenate([per[i] for i in pick]).mean())
    return [float(np.percentile(vals, 5)), float(np.percentile(vals, 95))]


def worker(name: str, wd: Path) -> Dict[str, float]:
    fp32, calib = wd / "mobilenet_v2.onnx", np.load(wd / "calib.npy")
    out = wd / f"{abs(hash(name))}.onnx"
    t0 = time.perf_counter()
    chosen: Dict[str, object] = {}
    if name in FERROQUANT:
        chosen = _ferroquant(name, fp32, out, calib)
    elif name in FLOAT:
        _float_variant(name, fp32, out)
    else:
        _peer(name, fp32, out, calib)
    res: Dict[str, object] = {"time_s": time.perf_counter() - t0}
    if chosen:
        res["mixed_precision"] = chosen
    x, ref, scene = np.load(wd / "eval.npy"), np.load(wd / "ref.npy"), np.load(wd / "scene.npy")
    for opt in (False, True):
        got = _run(out, x, opt)
        tag = "opt" if opt else "noopt"
        res.update({f"{k}_{tag}": v for k, v in _agreement(ref, got).items()})
        res[f"ci_{tag}"] = _scene_interval(ref.argmax(1) == got.argmax(1), scene)
    return res


def _spawn(name: str, wd: Path) -> Dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--worker", name, "--workdir", str(wd)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=320)
    ap.add_argument("--methods", help="comma-separated subset of the rows, run in the order given")
    ap.add_argument("--report", default="accuracy", help="bench/results/<report>.md")
    ap.add_argument("--worker")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.workdir))))
        return
    import onnx

    from ferroquant.examples.models import mobilenet_v2_onnx
    from ferroquant.examples.scenes import scene_sets

    names = list(FLOAT) + list(FERROQUANT) + PEERS
    if args.methods:
        unknown = [n for n in args.methods.split(",") if n not in names]
        if unknown:
            raise SystemExit(f"unknown rows {unknown}")
        names = args.methods.split(",")
    with tempfile.TemporaryDirectory() as d:
        wd = Path(d)
        onnx.save(mobilenet_v2_onnx(), str(wd / "mobilenet_v2.onnx"))
        sets = scene_sets(args.calib, args.eval, seed=0)
        np.save(wd / "calib.npy", sets.calibration)
        np.save(wd / "eval.npy", sets.evaluation)
        np.save(wd / "scene.npy", sets.evaluation_scene)
        np.save(wd / "ref.npy", _run(wd / "mobilenet_v2.onnx", sets.evaluation, True))
        t = Table(f"MobileNetV2 int8 (HFMG for ferroquant), {args.calib} calibration crops from "
                  f"{len(sets.calibration_scenes)} scenes, {args.eval} evaluation crops from "
                  f"{len(sets.evaluation_scenes)} other scenes",
                  ["method", "quantize s", "top-1 agree (no opt)", "share (vs plain row)", "90% scene interval",
                   "top-5 (no opt)", "SQNR dB (no opt)", "top-1 agree (ORT opt)"])
        bits = Table("Mixed precision: the bits chosen (from the record's methods.mixed_precision)",
                     ["method", "weight size / all-int8", "MACs on int16 activations", "int16 inputs (layers)",
                      "int4 weights (layers)"])
        t.notes.append(f"Calibration scenes: {', '.join(sets.calibration_scenes)}. Agreement = FP32 top-1 class "
                       "reproduced; FP32 is the original model (ReLU6); 'share' is the row's agreement minus that of "
                       "'fq amct' or 'fq ort' (the same profile without methods). 'fq ort' rows use the onnxruntime profile "
                       "(per-tensor activations, u8s7 without VNNI), 'fq amct' rows the simulation layout; "
                       "CLE = cross-layer equalization (exact in float; with ReLU6 kept only the 2 pairs without an "
                       "activation between are taken; relu6->relu replaces ReLU6 between equalized Convs, which the "
                       "FP32 rows measure), absorption = bias absorption, BC = empirical bias correction, "
                       "DW per-channel = per-channel activation scales on depthwise-Conv inputs.")
        t.notes.append("OC = output-aware clip search (activation.output_clip, methods.output_clip defaults: 64 "
                       "patches a batch, at most 512 per reader layer, the largest values kept): each searched input's "
                       "clip is HFMG's times the best ratio in 0.7-1.3 by its readers' output error; skipped: "
                       "per-channel (DW) and 16-bit (MP) inputs, and on the onnxruntime profile the tensors its "
                       "residual Adds also read.")
        t.notes.append("AdaRound = learned rounding of the ARQ weight codes (methods.adaround, default options); "
                       "W4A8 = 4-bit ARQ weights (per channel), 8-bit activations.")
        t.notes.append("MP = mixed precision (methods.mixed_precision): per layer 4- or 8-bit ARQ weights and 8- "
                       "or 16-bit inputs, chosen greedily from each layer's local SQNR at each pair (MP-output: from "
                       "the model's output SQNR with that layer alone changed; 2 calibration batches) under a weight-size budget (a fraction of all-int8's weight codes) and a least "
                       "share of the MACs on 8-bit activations; 16-bit activations take their observed range; amct "
                       "profile only (onnxruntime runs int16 activations only as float simulation and refuses them).")
        plain: Dict[str, float] = {}  # "fq amct" / "fq ort" agreement, for each method's share
        intro = ("Each row is a separate process; 'quantize s' covers loading the float model, calibration and "
                 "saving the deploy model (wall time on a shared machine: noise).")
        for n in names:
            r = _spawn(n, wd)
            print(n, json.dumps(r), flush=True)
            if "error" in r:
                t.add(n, "failed: " + r["error"], "", "", "", "", "", "")
                continue
            lo, hi = r["ci_noopt"]
            if n in ("fq amct", "fq ort"):
                plain[n] = r["top1_noopt"]
            base = next((v for k, v in plain.items() if n.startswith(k + " ")), None)
            share = f"{r['top1_noopt'] - base:+.3f}" if base is not None else ""
            t.add(n, f"{r['time_s']:.1f}", f"{r['top1_noopt']:.3f}", share, f"{lo:.3f}-{hi:.3f}",
                  f"{r['top5_noopt']:.3f}", f"{r['sqnr_db_noopt']:.2f}", f"{r['top1_opt']:.3f}")
            mp = r.get("mixed_precision")
            if mp:
                bits.add(n, f"{mp['size_fraction']:.3f}", f"{mp['wide_mac_share']:.3f}",
                         f"{len(mp['a16'])} of {mp['layers']}: {', '.join(mp['a16'])}",
                         f"{len(mp['w4'])} of {mp['layers']}: {', '.join(mp['w4'])}")
            write_report(args.report, [t] + ([bits] if bits.rows else []), intro)  # after each row: a partial
            # run leaves a valid file
        write_report(args.report, [t] + ([bits] if bits.rows else []), intro)


if __name__ == "__main__":
    main()
