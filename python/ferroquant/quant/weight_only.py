"""Weight-only group-wise quantization, framework-neutral: the statistics of a layer's input (GPTQ's streamed
Hessian, AWQ's bounded row sample), the algorithm dispatch (RTN, GPTQ, AWQ) on a ``[K, N]`` weight, and the
arrays the exporters write (``MatMulNBits`` packing, blocked DequantizeLinear codes). Exporters copy these
arrays into graphs and do no arithmetic; the element work runs in :mod:`ferroquant.ops`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from ferroquant import ops
from ferroquant.config.weight_only import WeightOnlyConfig
from ferroquant.errors import DataError, ShapeError
from ferroquant.ops import ClipSearch, GroupQuant, GroupSpec


@dataclass(frozen=True)
class WeightOnlyLayer:
    """A MatMul/Gemm whose constant weight is quantized group-wise: ``activation`` (its input tensor), ``weight``
    (the initializer), ``bias`` (Gemm's C, or None), ``transposed`` (the weight is stored ``[N, K]``: Gemm
    ``transB=1``), and the sizes ``k`` (reduction) and ``n`` (outputs)."""

    name: str
    op_type: str
    activation: str
    weight: str
    bias: Optional[str]
    transposed: bool
    k: int
    n: int


class RowSample:
    """A uniform sample of at most ``capacity`` rows ``[.., K]`` from every row observed (reservoir sampling with
    a fixed seed: the same data gives the same sample), in O(capacity · K) memory. NaN/Inf raise a
    NonFiniteError naming ``name`` (the tensor), with the sample unchanged."""

    def __init__(self, k: int, capacity: int, name: Optional[str] = None, seed: int = 0) -> None:
        self.k, self.capacity, self.name = k, capacity, name
        self.rows = np.zeros((0, k), np.float32)
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def observe(self, x: np.ndarray) -> None:
        a = np.asarray(x, np.float32)
        if a.shape[-1] != self.k:
            raise ShapeError(f"tensor {self.name!r}: rows of {self.k} values expected, got shape {a.shape}")
        a = a.reshape(-1, self.k)
        ops.min_max(a, name=f"{self.name} (calibration activations)")  # raises on NaN/Inf, naming the tensor
        free = max(self.capacity - self.rows.shape[0], 0)
        if free:
            self.rows = np.concatenate([self.rows, a[:free]])
        rest = a[free:]
        if len(rest):
            # row t (0-based over everything seen) replaces slot j ~ U[0, t] when j < capacity; later rows of a
            # batch overwrite earlier ones in the same slot, as the sequential algorithm does
            t = self.seen + free + np.arange(len(rest))
            j = np.floor(self._rng.random(len(rest)) * (t + 1)).astype(np.int64)
            keep = j < self.capacity
            self.rows[j[keep]] = rest[keep]
        self.seen += a.shape[0]


@dataclass
class InputStatistics:
    """What GPTQ or AWQ needs of one input tensor (shared by every layer that reads it)."""

    tensor: str
    k: int
    hessian: Optional[ops.HessianAccumulator] = None
    sample: Optional[RowSample] = None

    @classmethod
    def for_config(cls, tensor: str, k: int, cfg: WeightOnlyConfig) -> "InputStatistics":
        if cfg.algorithm == "gptq":
            return cls(tensor, k, hessian=ops.HessianAccumulator(k, name=tensor))
        return cls(tensor, k, sample=RowSample(k, cfg.awq_max_rows, tensor))

    def observe(self, x: np.ndarray) -> None:
        if self.hessian is not None:
            self.hessian.observe(x)
        if self.sample is not None:
            self.sample.observe(x)


@dataclass(frozen=True)
class WeightOnlyQuant:
    """A layer's group-quantized weight (``[K, N]`` codes) and, for AWQ, the per-input-channel divisor of its
    input (``x / input_divisor`` feeds the quantized weight). ``details``: the algorithm's choices (alpha,
    dampening, dead inputs) for the record."""

    layer: WeightOnlyLayer
    quant: GroupQuant
    algorithm: str
    input_divisor: Optional[np.ndarray] = None
    details: Dict[str, Any] = field(default_factory=dict)


def group_spec(cfg: WeightOnlyConfig) -> GroupSpec:
    return GroupSpec(cfg.bits, cfg.group_size, cfg.symmetric, cfg.scale_dtype)


def quantize_layer(layer: WeightOnlyLayer, w_kn: np.ndarray, cfg: WeightOnlyConfig,
                   stats: Optional[InputStatistics] = None) -> WeightOnlyQuant:
    """RTN, GPTQ or AWQ of the layer's ``[K, N]`` weight per ``cfg`` (``stats`` of its input for GPTQ/AWQ)."""
    spec, clip = group_spec(cfg), ClipSearch(refine=cfg.clip_refine) if cfg.clip_search else None
    if cfg.algorithm == "rtn":
        return WeightOnlyQuant(layer, ops.quantize_groupwise(w_kn, spec, clip, name=layer.weight), "rtn")
    if stats is None:
        raise DataError(f"layer {layer.name!r}: {cfg.algorithm} needs calibration data (statistics of its input "
                        f"{layer.activation!r})")
    if cfg.algorithm == "gptq":
        r = ops.gptq(w_kn, stats.hessian.hessian(), spec, cfg.percdamp, cfg.act_order, cfg.block_size,
                     name=layer.weight)
        return WeightOnlyQuant(layer, r.quant, "gptq", None,
                               {"damp": r.damp, "act_order": cfg.act_order, "dead_inputs": r.dead.tolist(),
                                "rows": stats.hessian.rows})
    r = ops.awq(w_kn, stats.sample.rows, spec, cfg.n_grid, clip, name=layer.name)
    return WeightOnlyQuant(layer, r.quant, "awq", r.channel_scale,
                           {"alpha": r.alpha, "rows": int(stats.sample.rows.shape[0])})


def _pad_codes(q: GroupQuant) -> np.ndarray:
    """Codes ``[N, G * group_size]``: transposed, the last group padded with its zero point (dequantizes to 0)."""
    k, n = q.codes.shape
    gs = q.spec.group_size
    pad = q.spec.groups(k) * gs - k
    codes = q.codes.T
    if pad:
        codes = np.concatenate([codes, np.repeat(q.zero_point[-1][:, None], pad, axis=1)], axis=1)
    return np.ascontiguousarray(codes, np.uint8)


def pack_nibbles(a: np.ndarray) -> np.ndarray:
    """Pairs of 4-bit values along the last axis in one byte, the first in the low nibble (odd lengths padded
    with 0): the layout of ``MatMulNBits`` and of ONNX ``int4``/``uint4`` tensors."""
    a = np.asarray(a, np.uint8) & 0x0F
    if a.shape[-1] % 2:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (a[..., 0::2] | (a[..., 1::2] << 4)).astype(np.uint8)


@dataclass(frozen=True)
class NBitsArrays:
    """The inputs and attributes of onnxruntime's ``com.microsoft.MatMulNBits`` for one weight: ``packed``
    ``[N, G, group_size * bits / 8]`` uint8, ``scales`` ``[N, G]`` float32, ``zero_points`` (None when
    symmetric: the op's default ``2**(bits-1)``) ``[N, ceil(G * bits / 8)]`` uint8."""

    packed: np.ndarray
    scales: np.ndarray
    zero_points: Optional[np.ndarray]
    k: int
    n: int
    bits: int
    block_size: int


def matmulnbits_arrays(q: GroupQuant) -> NBitsArrays:
    k, n = q.codes.shape
    bits, gs, g = q.spec.bits, q.spec.group_size, q.spec.groups(k)
    codes = _pad_codes(q).reshape(n, g, gs)
    packed = pack_nibbles(codes) if bits == 4 else codes
    scales = np.ascontiguousarray(q.scale.T, np.float32)
    zp = None
    if not q.spec.symmetric:
        zp = q.zero_point.T
        zp = pack_nibbles(zp) if bits == 4 else np.ascontiguousarray(zp, np.uint8)
    return NBitsArrays(np.ascontiguousarray(packed), scales, zp, k, n, bits, gs)


@dataclass(frozen=True)
class BlockedArrays:
    """The inputs of an opset-21 blocked ``DequantizeLinear`` (``axis=0``, ``block_size``) giving the ``[K, N]``
    weight: ``codes`` (``signed``: int4/int8 values with zero point 0; else uint4/uint8 with ``zero_points``),
    ``scales`` ``[G, N]`` float32."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: Optional[np.ndarray]
    bits: int
    block_size: int
    signed: bool


def blocked_arrays(q: GroupQuant) -> BlockedArrays:
    scales = np.ascontiguousarray(q.scale, np.float32)
    if q.spec.symmetric:
        return BlockedArrays(q.signed_codes(), scales, None, q.spec.bits, q.spec.group_size, True)
    return BlockedArrays(q.codes, scales, q.zero_point, q.spec.bits, q.spec.group_size, False)


def shortest(a: np.ndarray) -> list:
    """Float32 values as the shortest decimals that read back to them (a compact record)."""
    return [float(str(v)) for v in np.asarray(a, np.float32).ravel()]


def record_entry(wq: WeightOnlyQuant) -> Dict[str, Any]:
    """One layer in the record: sizes, algorithm, and every group's scale (and zero point) per output column
    (``scale[n][g]``, the ``MatMulNBits`` order)."""
    q, layer = wq.quant, wq.layer
    entry: Dict[str, Any] = {"op_type": layer.op_type, "weight": layer.weight, "activation": layer.activation,
                             "k": layer.k, "n": layer.n, "algorithm": wq.algorithm, "bits": q.spec.bits,
                             "group_size": q.spec.group_size, "symmetric": q.spec.symmetric,
                             "scale_dtype": q.spec.scale_dtype, "groups": q.spec.groups(layer.k)}
    entry.update(wq.details)
    if wq.input_divisor is not None:
        entry["input_divisor"] = shortest(wq.input_divisor)
    entry["scale"] = [shortest(row) for row in np.asarray(q.scale, np.float32).T]
    if not q.spec.symmetric:
        entry["zero_point"] = [row.tolist() for row in q.zero_point.T]
    return entry


__all__ = ["BlockedArrays", "InputStatistics", "NBitsArrays", "RowSample", "WeightOnlyLayer", "WeightOnlyQuant",
           "blocked_arrays", "group_spec", "matmulnbits_arrays", "pack_nibbles", "quantize_layer", "record_entry"]
