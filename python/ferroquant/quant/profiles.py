"""Deploy profiles: what a target runtime needs from the deploy model, and the integer types chosen for the CPU.

- ``onnxruntime`` (the default): Q/DQ where onnxruntime's CPU QDQ fusions form integer kernels (quantized
  outputs of Conv/MatMul/Gemm, residual Add/Mul, Concat, pooling, Sigmoid; Relu/Clip absorbed; shape ops carry
  their input's qparams: the placements of :mod:`ferroquant.quant.registry`), uint8 activations, and weights
  that the CPU's kernels cannot saturate on: on x86 without VNNI, onnxruntime runs u8 x s8 products with
  ``vpmaddubsw``, whose 16-bit pair sums saturate once weights use the full int8 range, so the weights get 7 bits
  there (255 * 64 * 2 = 32640 <= 32767); with VNNI (or Arm's dot product) the full 8 bits.
- ``tensorrt``: TensorRT's explicit quantization: symmetric int8 everywhere (zero point 0), per-channel weights
  on the output-channel axis, Q/DQ on the inputs of Conv/ConvTranspose/MatMul/Gemm and of residual Adds.
- ``amct``: AMCT's simulation layout (Q/DQ on the inputs of quantized layers only), signed int8: the deploy
  model as ferroquant wrote it before profiles existed.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Dict, FrozenSet, Mapping, Optional, Tuple

from ferroquant.errors import ConfigError


@dataclass(frozen=True)
class CpuTypes:
    """Integer types for a CPU's kernels: ``unsigned_activations`` (uint8, zero point shifted by 128) and the
    largest weight bit width that cannot saturate, with why."""

    name: str
    unsigned_activations: bool
    max_weight_bits: int
    reason: str


VNNI = CpuTypes("u8s8", True, 8, "the CPU has VNNI (or a dot-product instruction): int8 products accumulate in "
                                 "32 bits")
NO_VNNI = CpuTypes("u8s7", True, 7, "x86 without VNNI: u8 x s8 pair sums saturate int16 unless weights keep 7 bits")
SIGNED = CpuTypes("s8s8", False, 8, "signed int8 activations and weights (no CPU kernel constraint)")
CPU_TYPES: Dict[str, CpuTypes] = {t.name: t for t in (VNNI, NO_VNNI, SIGNED)}


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_cpu_types() -> CpuTypes:
    """VNNI (x86 ``avx512_vnni`` / ``avx_vnni``, or an Arm dot product) -> full 8-bit weights; other x86 -> 7."""
    flags = _cpu_flags()
    if flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8", "asimddp"}:
        return VNNI
    if platform.machine().lower() in ("aarch64", "arm64"):
        return VNNI  # onnxruntime's Arm kernels widen before they add: nothing to saturate
    return NO_VNNI


@dataclass(frozen=True)
class Profile:
    """A deploy target.

    - ``placement``: the registry target whose placements the deploy model follows (``amct``: layer inputs only).
    - ``all_readers``: every reader of a quantized tensor reads its DequantizeLinear output (so the runtime can
      fuse), rather than only the quantized layers.
    - ``symmetric``: zero points must be 0 (activations and weights).
    - ``opsets``: the opsets the target parses; ``latency_check``: time the model against FP32 before writing.
    - ``opt_in``: the registry's opt-in rules this target applies by default (the config's key of the same name
      turns one on or off): none so far. ``activation_matmul`` (attention's Q.K^T and P.V per tensor) costs
      accuracy on the transformers measured (bench/results/llm_static.md), so transformers stay selective.
    """

    name: str
    placement: str
    all_readers: bool
    symmetric: bool = False
    opsets: Tuple[int, int] = (13, 99)
    latency_check: bool = False
    cpu_dependent: bool = False
    opt_in: FrozenSet[str] = frozenset()

    def rules(self, overrides: Mapping[str, Optional[bool]]) -> FrozenSet[str]:
        """The opt-in rules that apply: this profile's, with each ``overrides[name]`` (True/False) applied."""
        on = set(self.opt_in)
        for name, value in overrides.items():
            if value is True:
                on.add(name)
            elif value is False:
                on.discard(name)
        return frozenset(on)


PROFILES: Dict[str, Profile] = {p.name: p for p in (
    Profile("onnxruntime", "onnxruntime", all_readers=True, latency_check=True, cpu_dependent=True),
    Profile("tensorrt", "tensorrt", all_readers=True, symmetric=True, opsets=(13, 20)),
    Profile("amct", "amct", all_readers=False),
)}
DEFAULT_PROFILE = "onnxruntime"


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown deploy profile {name!r} (known: {sorted(PROFILES)})") from None


def cpu_types_for(p: Profile, override: Optional[str] = None) -> CpuTypes:
    """The integer types a profile writes: detected for the CPU (``onnxruntime``), or ``override`` (a name of
    :data:`CPU_TYPES`); signed int8 for the other profiles."""
    if override is not None:
        if override not in CPU_TYPES:
            raise ConfigError(f"unknown cpu types {override!r} (known: {sorted(CPU_TYPES)})")
        return CPU_TYPES[override]
    return detect_cpu_types() if p.cpu_dependent else SIGNED


__all__ = ["CPU_TYPES", "DEFAULT_PROFILE", "NO_VNNI", "PROFILES", "SIGNED", "VNNI", "CpuTypes", "Profile",
           "cpu_types_for", "detect_cpu_types", "profile"]
