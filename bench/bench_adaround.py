"""Learned rounding (AdaRound) on MobileNetV2 (ImageNet weights, BN folded), layer by layer: the reconstruction
error of every Conv's output on held-out crops, learned rounding against round-to-nearest on the same ARQ grid
(per-channel scales unchanged), and the time per layer (issue 15).

    python bench/bench_adaround.py [--calib 64] [--eval 128] [--bits 8,4] [--iterations 500]

A layer's output error given its FP32 input is ``(W - W_q) x``; its mean square over the input patches is
``Σ_o d_oᵀ G d_o`` with ``G`` the Gram matrix of the patches. One tapped FP32 run streams each layer's sampled
calibration patches and held-out patches into two Gram matrices (:class:`ferroquant.quant.adaround.LayerGram`,
as ``fo.quantize`` does with ``methods.adaround``); the rounding is learned on the first and measured on the
second. Calibration and held-out crops come from disjoint scenes. Writes bench/results/adaround.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Table, write_report  # noqa: E402

BATCH = 8


def _grams(prepared, layers, x, rows_per_batch, seed):
    from ferroquant.onnx.calibration import tapped_session
    from ferroquant.onnx.graph import GraphView, node_label
    from ferroquant.onnx.methods import patch_spec
    from ferroquant.quant.adaround import LayerGram

    view = GraphView(prepared.model)
    nodes = {node_label(n): n for n in prepared.model.graph.node}
    grams = {l.name: LayerGram(patch_spec(nodes[l.name], view.array(l.weight).shape), rows_per_batch, seed)
             for l in layers}
    taps = sorted({l.activation for l in layers})
    sess = tapped_session(prepared.model, taps)
    for i in range(0, len(x), BATCH):
        outs = dict(zip(taps, sess.run(taps, {"input": x[i : i + BATCH]})))
        for l in layers:
            grams[l.name].observe(outs[l.activation])
    return grams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=128)
    ap.add_argument("--bits", default="8,4")
    ap.add_argument("--iterations", type=int, default=None)
    args = ap.parse_args()
    from ferroquant import ops
    from ferroquant.config.methods import AdaRoundParams
    from ferroquant.examples.models import mobilenet_v2_onnx
    from ferroquant.examples.scenes import scene_sets
    from ferroquant.onnx.api import prepare_model
    from ferroquant.onnx.graph import GraphView
    from ferroquant.quant.adaround import reconstruction_error, weight_rows

    p = AdaRoundParams()
    options = ops.AdaRoundOptions(iterations=p.iterations if args.iterations is None else args.iterations,
                                  reg_weight=p.reg_weight, lr=p.lr)
    prepared = prepare_model(mobilenet_v2_onnx())
    layers = [l for l in prepared.layers if l.op_type == "Conv"]
    sets = scene_sets(args.calib, args.eval, seed=0)
    t0 = time.perf_counter()
    cal = _grams(prepared, layers, sets.calibration, p.rows_per_batch, 0)
    held = _grams(prepared, layers, sets.evaluation, p.rows_per_batch, 1)
    stream_s = time.perf_counter() - t0
    view = GraphView(prepared.model)
    tables = []
    for bits in [int(b) for b in args.bits.split(",")]:
        t = Table(f"MobileNetV2 Convs, int{bits} ARQ weights (per channel): output reconstruction error on held-out "
                  "patches, learned rounding / round-to-nearest",
                  ["layer", "groups", "inputs p", "calib rows", "held-out ratio", "calibration ratio",
                   "codes changed", "time s"])
        ratios, total = [], 0.0
        for l in layers:
            rows = weight_rows(l, view.array(l.weight))
            a = ops.arq(rows, bits=bits)
            g = cal[l.name].gram()
            t1 = time.perf_counter()
            r = ops.adaround(rows, a.scale, a.zero_point, g, bits, options, name=l.name)
            dt = time.perf_counter() - t1
            total += dt
            s = np.asarray(a.scale, np.float64).reshape(-1, 1)
            ratio = (reconstruction_error(rows, r.codes * s, held[l.name].gram())
                     / reconstruction_error(rows, a.codes * s, held[l.name].gram()))
            ratios.append(ratio)
            t.add(l.name, g.shape[0], g.shape[1], cal[l.name].count, f"{ratio:.3f}", f"{r.loss / r.loss_nearest:.3f}",
                  f"{np.mean(r.codes != a.codes):.3f}", f"{dt:.2f}")
        t.notes.append(f"{len(layers)} Convs; held-out ratio: max {max(ratios):.3f}, median {np.median(ratios):.3f}; "
                       f"layers above 0.7: {sum(r > 0.7 for r in ratios)}. Learned rounding took {total:.1f} s in all "
                       f"({options.iterations} iterations per layer).")
        tables.append(t)
    write_report("adaround", tables,
                 f"{args.calib} calibration crops from {len(sets.calibration_scenes)} scenes, {args.eval} held-out "
                 f"crops from {len(sets.evaluation_scenes)} other scenes; at most {p.rows_per_batch} patches per "
                 f"batch of {BATCH} and layer are sampled into each Gram matrix (streaming both took "
                 f"{stream_s:.1f} s). Options: {options}. The machine was shared with other work while this ran, so "
                 "times are upper bounds.")


if __name__ == "__main__":
    main()
