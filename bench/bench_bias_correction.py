"""Empirical bias correction on MobileNetV2 (ImageNet weights, BN folded), layer by layer: the mean per-channel
output error of every Conv, on held-out crops, with and without the correction (issue 15).

    python bench/bench_bias_correction.py [--calib 64] [--eval 128]

A layer's output error given its FP32 input is linear in the input, so its mean over the held-out crops is
``(W_q - W) E[patch] + (b_q - b)``: the held-out mean patch of each layer is streamed with
:class:`ferroquant.quant.moments.LayerMoments` from one tapped FP32 run, and ``b_q`` is the bias the deploy model
carries (int32 codes times their scale), corrected or not. Calibration and held-out crops come from disjoint
scenes. Writes bench/results/bias_correction.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Table, write_report  # noqa: E402


def _layer_errors(cm, table, means, forced=False):
    from onnx import numpy_helper

    from ferroquant import ops
    from ferroquant.quant.bias_correction import output_mean_error

    inits = {t.name: numpy_helper.to_array(t) for t in cm.model.graph.initializer}
    out = {}
    for l in cm.layers:
        if l.name not in means:
            continue
        w, b = inits[l.weight], inits[l.bias]
        lq = table.layers[l.name]
        wq = lq.weight
        w_deq = ops.dequantize(wq.codes, wq.scale, wq.zero_point, wq.bits, wq.axis).reshape(w.shape)
        b_q = lq.bias.codes.astype(np.float64) * np.asarray(lq.bias.scale, np.float64)
        m, groups = means[l.name]
        err = output_mean_error(w, w_deq, m, groups) + (b_q - b.astype(np.float64))
        if forced:  # the correction applied whatever its test says: minus the calibration data's shift
            err -= output_mean_error(w, w_deq, cm.moments[l.name].mean(), groups)
        out[l.name] = float(np.abs(err).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=128)
    args = ap.parse_args()
    from ferroquant.examples.models import mobilenet_v2_onnx
    from ferroquant.examples.scenes import scene_sets
    from ferroquant.onnx import create_quant_config, quantize_model
    from ferroquant.onnx.api import prepare_model
    from ferroquant.onnx.calibration import tapped_session
    from ferroquant.onnx.methods import layer_moments
    from ferroquant.quant.bias_correction import MIN_SHIFT_SNR

    prepared = prepare_model(mobilenet_v2_onnx())
    sets = scene_sets(args.calib, args.eval, seed=0)
    feeds = [{"input": sets.calibration[i : i + 8]} for i in range(0, len(sets.calibration), 8)]
    common = {"activation": {"algorithm": "hfmg"}}
    plain = quantize_model(create_quant_config(None, prepared, config_defination={"common_config": common}),
                           prepared, feeds, batch_num=len(feeds), profile="amct")  # every batch (the config's is 1)
    bc_common = {**common, "weight": {"bias_correction": "empirical"}}
    t0 = time.perf_counter()
    bc = quantize_model(create_quant_config(None, prepared, config_defination={"common_config": bc_common}),
                        prepared, feeds, batch_num=len(feeds), profile="amct")
    assert bc.batches == plain.batches == len(feeds)
    bc_s = time.perf_counter() - t0
    moments = layer_moments(bc.config, bc.model, bc.layers)
    taps = sorted({l.activation for l in bc.layers if l.name in moments})
    sess = tapped_session(bc.model, taps)
    for i in range(0, len(sets.evaluation), 8):
        outs = dict(zip(taps, sess.run(taps, {"input": sets.evaluation[i : i + 8]})))
        for l in bc.layers:
            if l.name in moments:
                moments[l.name].observe(outs[l.activation])
    means = {n: (m.mean(), m.spec.groups) for n, m in moments.items()}
    before, after = _layer_errors(plain, plain.table(), means), _layer_errors(bc, bc.table(), means)
    forced = _layer_errors(bc, plain.table(), means, forced=True)  # plain's biases minus every layer's shift
    tests = bc.methods["bias_correction"]["tests"]
    t = Table(f"MobileNetV2, mean over output channels of |mean output error| on {args.eval} held-out crops "
              f"({args.calib} calibration crops, amct profile, HFMG)",
              ["layer", "shift SNR", "corrected", "uncorrected", "with the method", "ratio",
               "ratio if every layer were corrected"])
    for name in before:
        snr = tests[name]["snr"]
        t.add(name, "-" if snr is None else f"{snr:.1f}", "yes" if tests[name]["corrected"] else "no",
              f"{before[name]:.3g}", f"{after[name]:.3g}", f"{after[name] / max(before[name], 1e-30):.3f}",
              f"{forced[name] / max(before[name], 1e-30):.3f}")
    done = [n for n in before if tests[n]["corrected"]]
    better = [n for n in done if after[n] < before[n]]
    worst = max((after[n] / before[n] for n in done), default=float("nan"))
    t.notes.append(f"{len(done)} of {len(before)} Conv layers corrected (shift SNR >= {MIN_SHIFT_SNR:g}: the mean "
                   f"squared shift over the mean variance of its estimate, from the {len(feeds)} calibration "
                   f"batches); {len(better)} of those {len(done)} have a smaller mean per-channel output error on the "
                   f"held-out crops (largest ratio {worst:.3f}); the others keep their bias (ratio 1): corrected anyway, "
                   f"{sum(forced[n] > before[n] for n in before if n not in done)} of those "
                   f"{len(before) - len(done)} would have a larger error. Calibration "
                   f"with the method took {bc_s:.1f} s (with the mean-patch streams).")
    write_report("bias_correction", [t], "Each batch of 8 calibration crops holds one scene's crops, so the test "
                 "sees how the shifts vary from scene to scene; the held-out crops are of other scenes.")


if __name__ == "__main__":
    main()
