"""Native kernels vs their NumPy twins vs torch, on the same data in the same run.

    python bench/bench_kernels.py [--quick]

Writes bench/results/kernels.md (machine and commit included). Ratios are what to read: absolute times on
shared machines are noise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Table, median_time, write_report  # noqa: E402

from ferroquant import ops, reference  # noqa: E402

try:
    import torch
except ImportError:  # torch is optional
    torch = None


def _row(table: Table, name: str, nbytes: int, native: Callable, ref: Callable, peer: Optional[Callable],
         repeats: int) -> None:
    tn = median_time(native, repeats)
    tr = median_time(ref, max(1, repeats // 2), budget_s=40)
    tp = median_time(peer, repeats) if peer is not None else None
    table.add(
        name,
        f"{tn * 1e3:.2f}",
        f"{tr * 1e3:.1f}",
        f"{tr / tn:.1f}x",
        "n/a" if tp is None else f"{tp * 1e3:.2f}",
        "n/a" if tp is None else f"{tp / tn:.2f}x",
        f"{nbytes / tn / 1e9:.2f}",
    )


def weight_table(repeats: int) -> Table:
    t = Table("Weights: 512x4608 conv weight ([512, 512, 3, 3], Gaussian), per output channel",
              ["kernel", "native ms", "NumPy ms", "NumPy/native", "torch ms", "torch/native", "native GB/s"])
    w = np.random.default_rng(0).standard_normal((512, 512, 3, 3)).astype(np.float32)
    nb = w.nbytes
    peer = None
    if torch is not None:
        tw = torch.from_numpy(w)

        def peer():  # torch's per-channel min/max observer math + fake-quant, the usual QAT weight path
            lo, hi = torch.aminmax(tw.reshape(512, -1), dim=1)
            amax = torch.maximum(hi, -lo)
            s = torch.clamp(amax / 127.5, min=1.1920929e-07)
            return torch.fake_quantize_per_channel_affine(tw, s, torch.zeros(512, dtype=torch.int32), 0, -128, 127)

    _row(t, "ARQ per-channel (qparams + codes + fake)", nb, lambda: ops.arq(w), lambda: reference.arq(w), peer, repeats)
    _row(t, "ARQ per-tensor", nb, lambda: ops.arq(w, channel_wise=False), lambda: reference.arq(w, channel_wise=False), None, repeats)
    _row(t, "NUQ 32 steps, 1 iteration, per-channel", nb, lambda: ops.nuq(w, 32, 1),
         lambda: reference.nuq(w, 32, 1), None, max(1, repeats // 2))
    _row(t, "NUQ 16 steps, 0 iterations, per-tensor", nb, lambda: ops.nuq(w, 16, 0, channel_wise=False),
         lambda: reference.nuq(w, 16, 0, channel_wise=False), None, max(1, repeats // 2))
    s, z = ops.qparams_from_data(w, 0)
    peer_fq = None
    if torch is not None:
        ts, tz = torch.from_numpy(s), torch.from_numpy(z)
        peer_fq = lambda: torch.fake_quantize_per_channel_affine(tw, ts, tz, 0, -128, 127)  # noqa: E731
    _row(t, "fake-quant per-channel (given qparams)", nb, lambda: ops.fake_quant(w, s, z, 8, 0),
         lambda: reference.fake_quant(w, s, z, 8, 0), peer_fq, repeats)
    t.notes.append("torch row of ARQ: `aminmax` per channel, amax/127.5 scale, `fake_quantize_per_channel_affine` "
                   "(torch's rule, not the 127/128 rule; same work). NumPy rows are ferroquant.reference.")
    return t


def activation_table(n: int, repeats: int) -> Table:
    shape = (32, 64, 56, 56) if n == 6_422_528 else (n // (64 * 56 * 56), 64, 56, 56)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    nb = x.nbytes
    t = Table(f"Activations: {x.size / 1e6:.1f}M float32 {list(shape)}",
              ["kernel", "native ms", "NumPy ms", "NumPy/native", "torch ms", "torch/native", "native GB/s"])
    floor = median_time(lambda: np.max(np.abs(x)), repeats)
    s, z = ops.qparams_from_data(x, None, 8, False)
    sc, zc = ops.qparams_from_data(x, 1, 8, False)
    q = ops.quantize(x, s, z)
    tx = torch.from_numpy(x) if torch is not None else None
    pt = (lambda: torch.fake_quantize_per_tensor_affine(tx, float(s[0]), int(z[0]), -128, 127)) if torch else None
    pc = None
    if torch is not None:
        tsc, tzc = torch.from_numpy(sc), torch.from_numpy(zc)
        pc = lambda: torch.fake_quantize_per_channel_affine(tx, tsc, tzc, 1, -128, 127)  # noqa: E731
    pq = (lambda: torch.quantize_per_tensor(tx, float(s[0]), int(z[0]), torch.qint8)) if torch else None
    pmm = (lambda: torch.aminmax(tx)) if torch else None
    _row(t, "min/max -> asymmetric qparams", nb, lambda: ops.qparams_from_data(x, None, 8, False),
         lambda: reference.qparams_from_data(x, None, 8, False), pmm, repeats)
    _row(t, "quantize per-tensor -> int8", nb, lambda: ops.quantize(x, s, z), lambda: reference.quantize(x, s, z),
         pq, repeats)
    _row(t, "dequantize per-tensor", q.nbytes, lambda: ops.dequantize(q, s, z), lambda: reference.dequantize(q, s, z),
         None, repeats)
    _row(t, "fake-quant per-tensor", nb, lambda: ops.fake_quant(x, s, z), lambda: reference.fake_quant(x, s, z),
         pt, repeats)
    _row(t, "fake-quant per-channel (axis 1)", nb, lambda: ops.fake_quant(x, sc, zc, 8, 1),
         lambda: reference.fake_quant(x, sc, zc, 8, 1), pc, repeats)
    t.notes.append(f"Streaming floor: `np.max(np.abs(x))` takes {floor * 1e3:.2f} ms ({nb / floor / 1e9:.2f} GB/s). "
                   "torch peers: `aminmax`, `quantize_per_tensor(qint8)`, `fake_quantize_per_{tensor,channel}_affine`.")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="6.4M activations only, fewer repeats")
    args = ap.parse_args()
    repeats = 3 if args.quick else 7
    print(f"threads: ferroquant {ops.get_num_threads()}, torch {torch.get_num_threads() if torch else 'n/a'}")
    tables = [weight_table(repeats), activation_table(6_422_528, repeats)]
    if not args.quick:
        tables.append(activation_table(50_176_000, max(3, repeats // 2)))
    intro = (f"ferroquant threads: {ops.get_num_threads()}; torch: "
             f"{torch.__version__ + ', threads ' + str(torch.get_num_threads()) if torch else 'not installed'}. "
             "Median of repeats. NumPy/native > 1 means the native kernel is faster.")
    write_report("kernels", tables, intro)


if __name__ == "__main__":
    main()
