"""The layer registry: everything ferroquant knows about an op type it quantizes, one entry per op type: the
layers with weights (:data:`REGISTRY`), and the ops without weights that deploy targets quantize around
(:data:`OP_RULES`: residual Add, Concat, pooling, activations, shape ops).

Every consumer reads its op knowledge here and nowhere else: layer finding in ONNX graphs
(:func:`ferroquant.onnx.layers.quantizable_layers`), BatchNormalization fusion (which producers fold a BN and with
which arithmetic), both exporters (weight axis, grouped ConvTranspose layout, bias input), the torch front end
(which ``torch.nn`` modules map to which op, which of them QAT swaps), the config (the layer types a config may
name) and the report. Adding an op type is one :class:`LayerType` entry in :data:`REGISTRY` plus its tests.

Attributes are read through a getter ``attr(name, default)`` so the same entry serves ONNX nodes and torch
modules (whose export sets the same attributes: ``transB=1`` for ``nn.Linear``, ``group`` for convolutions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ferroquant.errors import ConfigError

Attr = Callable[[str, Any], Any]


def no_attrs(name: str, default: Any) -> Any:
    """An attribute getter for a node or module that sets no attribute."""
    return default


@dataclass(frozen=True)
class Placement:
    """Where a deploy target puts Q/DQ around a layer: which inputs (by index) get an activation Q/DQ pair, and
    whether the output is quantized too. The ``amct`` layout quantizes the activation input only."""

    inputs: Optional[Tuple[int, ...]] = (0,)  # None: every input
    output: bool = False


AMCT_PLACEMENT = Placement()


@dataclass(frozen=True)
class LayerType:
    """One quantizable op type.

    - ``op_type``: the ONNX op; ``weight_input`` / ``bias_input``: which node inputs hold the constant weight and
      the optional bias (``bias_input`` None: the op has no bias input).
    - ``axis(attr, weight_ndim)``: the weight's output-channel axis in the op's own layout.
    - ``transposed``: the weight is ``[C_in, C_out/g, ...]`` (ConvTranspose), so output channel
      ``gi*(C_out/g)+j`` lives in column ``j`` of the rows of group ``gi``: per-channel scales are per group.
    - ``refuse(attr, weight_ndim)``: why a node of this type is not quantizable (None when it is).
    - ``fold``: the BatchNormalization fold that applies when this op produces a BN's input (``"conv"``,
      ``"gemm"``), or None.
    - ``torch_modules`` / ``qat_modules``: torch module classes that export to this op, and those QAT swaps:
      ``torch.nn`` class names, or the dotted path of another library's class (``transformers``' ``Conv1D``).
    - ``torch_attrs``: per torch class, the attributes of the op it exports to (``Linear``: ``transB=1``, its
      weight is ``[out, in]``; ``Conv1D``: ``[in, out]``, no ``transB``).
    - ``placements``: per deploy target, where Q/DQ go (:class:`Placement`); targets not listed use ``amct``.
    - ``weight_only``: group-wise weight-only quantization applies (the weight is a ``[K, N]`` MatMul ``B``, or
      its transpose: ``MatMulNBits`` / blocked DequantizeLinear; :mod:`ferroquant.onnx.weight_only`).
    """

    op_type: str
    axis: Callable[[Attr, int], int]
    weight_input: int = 1
    bias_input: Optional[int] = 2
    transposed: bool = False
    refuse: Callable[[Attr, int], Optional[str]] = lambda attr, ndim: None
    fold: Optional[str] = None
    torch_modules: Tuple[str, ...] = ()
    qat_modules: Tuple[str, ...] = ()
    torch_attrs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    placements: Mapping[str, Placement] = field(default_factory=dict)
    weight_only: bool = False

    def groups(self, attr: Attr) -> int:
        """Groups that split the output channels across the weight's rows (ConvTranspose only; else 1)."""
        return int(attr("group", 1)) if self.transposed else 1

    def blocked(self, groups: int, per_channel: bool) -> bool:
        """Whether per-channel weight qparams need blocked Q/DQ (grouped ConvTranspose: a channel's weights are
        not one slice along one axis)."""
        return self.transposed and groups > 1 and per_channel

    def placement(self, target: str) -> Placement:
        return self.placements.get(target, AMCT_PLACEMENT)


@dataclass(frozen=True)
class OpRule:
    """How deploy targets treat an op without weights.

    - ``placements``: per target, which inputs get an activation Q/DQ pair and whether the output does
      (calibrated on its own). Targets not listed leave the op in float.
    - ``carries``: the op only moves values (Reshape, Transpose, MaxPool...): its outputs take the qparams of
      input 0 when that input is quantized, so the runtime can run it on integers and nothing is calibrated.
    - ``absorbs``: an activation (Relu, Clip) that a target removes into the quantization of its input's
      producer, since an asymmetric grid that starts at 0 (and ends within the clip) clamps like it.
    - ``opt_in``: the rule applies only where a profile's policy or the config turns this name on
      (:data:`OPT_INS`); None: always.
    """

    op_type: str
    placements: Mapping[str, Placement] = field(default_factory=dict)
    carries: bool = False
    absorbs: bool = False
    opt_in: Optional[str] = None

    def placement(self, target: str) -> Optional[Placement]:
        return self.placements.get(target)


_ALL = None  # Placement.inputs None: every input
ORT_IO = Placement(inputs=(0,), output=True)
#: onnxruntime fuses DQ -> MatMul into MatMulIntegerToFloat without a Q on the output (and into QLinearMatMul
#: when a Q follows): the output stays float, which keeps a transformer's residual stream exact
ORT_IN = Placement(inputs=(0,), output=False)
TRT_IN = Placement(inputs=(0,), output=False)


def _carry(op: str) -> OpRule:
    return OpRule(op, {"onnxruntime": Placement(inputs=(), output=True)}, carries=True)


#: onnxruntime's CPU QDQ fusions: QLinearAdd/Mul/Concat/Sigmoid/LeakyRelu/GlobalAveragePool; shape and pooling
#: ops that run on int8 when their input and output share qparams; Relu/Clip absorbed into the producer's Q.
#: TensorRT's explicit quantization: Q/DQ on residual Add inputs.
OP_RULES: Dict[str, OpRule] = {r.op_type: r for r in (
    OpRule("Add", {"onnxruntime": Placement((0, 1), True), "tensorrt": Placement((0, 1), False)}),
    OpRule("Mul", {"onnxruntime": Placement((0, 1), True)}),
    OpRule("Concat", {"onnxruntime": Placement(_ALL, True)}),
    OpRule("Sigmoid", {"onnxruntime": ORT_IO}),
    OpRule("LeakyRelu", {"onnxruntime": ORT_IO}),
    OpRule("GlobalAveragePool", {"onnxruntime": ORT_IO}),
    OpRule("Relu", {"onnxruntime": Placement(inputs=(), output=True)}, absorbs=True),
    OpRule("Clip", {"onnxruntime": Placement(inputs=(), output=True)}, absorbs=True),
    *(_carry(op) for op in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "MaxPool", "AveragePool",
                            "Resize", "Slice", "Split", "DepthToSpace", "SpaceToDepth")),
    # attention's activation x activation MatMuls (Q.K^T, P.V): both inputs per tensor, the output float
    # (onnxruntime: MatMulIntegerToFloat); MatMuls with a constant weight are layers, never matched here
    OpRule("MatMul", {"onnxruntime": Placement((0, 1), False), "tensorrt": Placement((0, 1), False)},
           opt_in="activation_matmul"),
)}

#: The names an :class:`OpRule` may be opted in by (a profile's ``opt_in``, or the config's key of that name).
OPT_INS: Tuple[str, ...] = tuple(sorted({r.opt_in for r in OP_RULES.values() if r.opt_in}))


#: GPT-2's projections: a Linear with its weight stored ``[in, out]``, exported as ``Gemm`` (``addmm``).
HF_CONV1D = "transformers.pytorch_utils.Conv1D"


def _gemm_refuse(attr: Attr, ndim: int) -> Optional[str]:
    if attr("transA", 0):
        return "Gemm with transA=1"
    return None if ndim == 2 else f"Gemm weight of rank {ndim}"


REGISTRY: Dict[str, LayerType] = {t.op_type: t for t in (
    LayerType("Conv", axis=lambda attr, ndim: 0, fold="conv",
              torch_modules=("Conv1d", "Conv2d", "Conv3d"), qat_modules=("Conv1d", "Conv2d", "Conv3d"),
              placements={"onnxruntime": ORT_IO, "tensorrt": TRT_IN}),
    LayerType("ConvTranspose", axis=lambda attr, ndim: 1, transposed=True, fold="conv",
              torch_modules=("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"),
              qat_modules=("ConvTranspose2d",), placements={"tensorrt": TRT_IN}),
    LayerType("Gemm", axis=lambda attr, ndim: 0 if attr("transB", 0) else 1, refuse=_gemm_refuse, fold="gemm",
              torch_modules=("Linear", HF_CONV1D), qat_modules=("Linear", HF_CONV1D),
              torch_attrs={"Linear": {"transB": 1}, HF_CONV1D: {"transB": 0}},
              placements={"onnxruntime": ORT_IO, "tensorrt": TRT_IN}, weight_only=True),
    LayerType("MatMul", axis=lambda attr, ndim: ndim - 1, bias_input=None,  # [.., K, N]: a scale per output
              refuse=lambda attr, ndim: None if ndim >= 2 else f"MatMul weight of rank {ndim}",
              placements={"onnxruntime": ORT_IN, "tensorrt": TRT_IN}, weight_only=True),
)}

@dataclass(frozen=True)
class TableType:
    """An op that looks rows up in a constant table (embeddings), quantized weight-only (group-wise along the
    table's last axis, one set of groups per row) when the weight-only config turns ``embeddings`` on:
    ``table_input`` holds the constant 2-D table, ``indices_input`` the row indices, ``axis`` the attribute
    that must be 0 (rows gathered). Exported as blocked DequantizeLinear feeding the op, or as onnxruntime's
    ``com.microsoft`` ``fused`` op."""

    op_type: str
    table_input: int = 0
    indices_input: int = 1
    fused: Optional[str] = None


#: Weight-only lookup tables by op type.
TABLES: Dict[str, TableType] = {t.op_type: t for t in (TableType("Gather", fused="GatherBlockQuantized"),)}

#: The op types a config may name, in registry order.
QUANTIZABLE_TYPES: Tuple[str, ...] = tuple(REGISTRY)
#: torch class name (``torch.nn``'s, or a dotted path) -> its entry.
TORCH_MODULES: Dict[str, LayerType] = {m: t for t in REGISTRY.values() for m in t.torch_modules}
#: torch class names QAT swaps for quantized layers.
QAT_MODULES: Tuple[str, ...] = tuple(m for t in REGISTRY.values() for m in t.qat_modules)


def layer_type(op_type: str) -> LayerType:
    """The entry of ``op_type``; a ConfigError naming the known types when there is none."""
    try:
        return REGISTRY[op_type]
    except KeyError:
        raise ConfigError(f"op type {op_type!r} is not quantizable (known: {list(QUANTIZABLE_TYPES)})") from None


def folding_producer(op_type: str, domain: str = "") -> Optional[LayerType]:
    """The entry of an op that can absorb a following BatchNormalization, or None."""
    t = REGISTRY.get(op_type) if domain in ("", "ai.onnx") else None
    return t if t is not None and t.fold is not None else None


__all__ = ["AMCT_PLACEMENT", "Attr", "LayerType", "OPT_INS", "OP_RULES", "OpRule", "Placement", "QAT_MODULES",
           "QUANTIZABLE_TYPES", "REGISTRY", "TABLES", "TORCH_MODULES", "TableType", "folding_producer", "layer_type",
           "no_attrs"]
