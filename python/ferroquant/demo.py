"""The README's main job until the full model demo lands: real pretrained weights (MobileNetV2, ImageNet)
quantized with ARQ (8, 5 and 4 bits) and NUQ (32 and 16 of the 256 int8 levels: compare with 5 and 4 bits), each checked against the NumPy reference."""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Tuple

import numpy as np

from ferroquant import ops, reference
from ferroquant.pretrained import mobilenet_v2_state_dict


def sqnr_db(w: np.ndarray, fake: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact)."""
    w64 = w.astype(np.float64)
    noise = float(np.sum((w64 - fake) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(float(np.sum(w64**2)) / noise)


def _timed(fn: Callable[[], object]) -> Tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


METHODS: Dict[str, Tuple[Callable, Callable]] = {
    "ARQ int8": (lambda w: ops.arq(w).fake, lambda w: reference.arq(w, 0)[3]),
    "ARQ int5": (lambda w: ops.arq(w, bits=5).fake, lambda w: reference.arq(w, 0, 5)[3]),
    "ARQ int4": (lambda w: ops.arq(w, bits=4).fake, lambda w: reference.arq(w, 0, 4)[3]),
    "NUQ 32": (lambda w: ops.nuq(w, 32, 1).fake, lambda w: reference.nuq(w, 0, 32, 1)[3]),
    "NUQ 16": (lambda w: ops.nuq(w, 16, 1).fake, lambda w: reference.nuq(w, 0, 16, 1)[3]),
}


def weights_demo(layers: int = 0, check_reference: bool = True) -> int:
    sd = mobilenet_v2_state_dict()
    names = [k for k, v in sd.items() if k.endswith("weight") and v.ndim in (2, 4)]
    if layers:
        names = names[:layers]
    total = sum(sd[k].size for k in names)
    print(f"MobileNetV2 (torchvision ImageNet weights): {len(names)} weight tensors, {total / 1e6:.2f}M values")
    print(f"native threads: {ops.get_num_threads()}; per-output-channel scales; SQNR in dB (higher is better)\n")
    t_native = {m: 0.0 for m in METHODS}
    t_ref = {m: 0.0 for m in METHODS}
    mismatches: List[str] = []
    rows = []
    for name in names:
        w = sd[name]
        row = [name, "x".join(map(str, w.shape))]
        for m, (native, ref) in METHODS.items():
            fake, dt = _timed(lambda: native(w))
            t_native[m] += dt
            row.append(f"{sqnr_db(w, fake):6.2f}")
            if check_reference:
                want, dr = _timed(lambda: ref(w))
                t_ref[m] += dr
                if not np.array_equal(fake, want):
                    mismatches.append(f"{name} {m}")
        rows.append(row)
    head = ["layer", "shape", *METHODS]
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(c).ljust(wd) for c, wd in zip(r, widths)))
    print()
    for m in METHODS:
        line = f"{m:9s} native {t_native[m] * 1e3:8.1f} ms"
        if check_reference:
            line += f"   NumPy reference {t_ref[m] * 1e3:9.1f} ms   speed-up {t_ref[m] / max(t_native[m], 1e-9):5.1f}x"
        print(line)
    if check_reference:
        print(f"\nparity with the NumPy reference: {'all identical' if not mismatches else mismatches}")
    return 1 if mismatches else 0
