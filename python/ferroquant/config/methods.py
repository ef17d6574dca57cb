"""The model-wide settings of the methods that look past one tensor (issues 15 and 12). They sit under the
config's ``methods`` key: cross-layer equalization, learned rounding and SmoothQuant balancing::

    "methods": {
      "equalization": {"enabled": true, "relu6_to_relu": false, "bias_absorption": false},
      "adaround": {"enabled": true, "iterations": 500},
      "smooth_quant": {"enabled": true, "alpha": null},
      "mixed_precision": {"enabled": true, "size_fraction": 1.0, "int8_compute_share": 0.9},
      "output_clip": {"rows_per_batch": 64, "max_rows": 512}
    }

Which layers use a per-layer method is said in the layer sections (so ``common_config`` turns it on model-wide
and a layer's own entry turns it on or off for that layer): ``activation.channel_wise`` (per-channel scales on a
depthwise Conv's input), ``activation.output_clip`` (the input's clip chosen by the readers' output error; the
``output_clip`` section here only bounds its sample) and ``weight.bias_correction`` (``none`` or
``empirical``). Every default leaves the
output exactly as before these methods existed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ferroquant.config.fields import check_bool, check_int, check_known_keys, check_num, field_error
from ferroquant.errors import ConfigError

_WHERE = "<methods>"


@dataclass(frozen=True)
class EqualizationParams:
    """Cross-layer equalization of Conv -> (Relu) -> Conv chains, after BN folding and before calibration.

    ``relu6_to_relu``: equalize across ReLU6 (``Clip(0, 6)``) by replacing it with Relu (changes the FP32 model;
    the record says by how much on the first calibration batch), else such pairs are skipped.
    ``bias_absorption``: move ``max(0, beta - 3|gamma|)`` of a folded BN through the Relu into the next layer's
    bias (AIMET's rule; nearly exact only, so off by default: equalization alone is exact in float).
    ``iterations``: rounds over the chains (each round equalizes every pair once)."""

    enabled: bool = False
    relu6_to_relu: bool = False
    bias_absorption: bool = False
    iterations: int = 20

    def validate(self) -> None:
        for k in ("enabled", "relu6_to_relu", "bias_absorption"):
            check_bool(_WHERE, f"equalization.{k}", getattr(self, k))
        check_int(_WHERE, "equalization.iterations", self.iterations, range(1, 1001))


def _check_count(name: str, v: Any, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise field_error(_WHERE, name, f"must be an integer, got {v!r}")
    check_num(_WHERE, name, v, lo, hi)


@dataclass(frozen=True)
class AdaRoundParams:
    """Learned rounding (AdaRound) of the weights of every enabled Conv, Gemm and MatMul with ARQ weights: each
    weight is rounded down or up on its ARQ grid (scales unchanged) so as to reconstruct the layer's float
    output on the calibration data (:mod:`ferroquant.quant.adaround`).

    ``rows_per_batch``: input patches (rows) sampled per calibration batch and layer into the Gram matrix the
    optimization reads (memory: one ``[p, p]`` matrix per group, whatever the data); a layer that saw fewer
    rows than its inputs ``p`` keeps round-to-nearest (the record names it). ``iterations``, ``reg_weight``,
    ``lr``: the optimization (:class:`ferroquant.ops.AdaRoundOptions`)."""

    enabled: bool = False
    iterations: int = 500
    reg_weight: float = 1.0
    lr: float = 0.05
    rows_per_batch: int = 512

    def validate(self) -> None:
        check_bool(_WHERE, "adaround.enabled", self.enabled)
        _check_count("adaround.iterations", self.iterations, 0, 100_000)
        check_num(_WHERE, "adaround.reg_weight", self.reg_weight, 0.0, 1e6)
        check_num(_WHERE, "adaround.lr", self.lr, 0.0, 10.0, lo_open=True)
        _check_count("adaround.rows_per_batch", self.rows_per_batch, 1, 1 << 20)



@dataclass(frozen=True)
class SmoothQuantParams:
    """SmoothQuant balancing (issue 12) of every normalization (LayerNormalization, RMSNormalization,
    SimplifiedLayerNormalization) whose output only MatMuls with constant weights read: per input channel
    ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (``W``: the readers' weights side by side), folded into the
    normalization's scale and bias (divided by ``s``) and into the weights (rows multiplied by ``s``), which is
    exact in float. ``alpha``: a fixed value in [0, 1], or None to search ``alphas`` per normalization for the
    smallest int8 output error on at most ``max_rows`` calibration rows."""

    enabled: bool = False
    alpha: Optional[float] = None
    alphas: Tuple[float, ...] = tuple(i / 20 for i in range(21))
    max_rows: int = 2048

    def validate(self) -> None:
        check_bool(_WHERE, "smooth_quant.enabled", self.enabled)
        if self.alpha is not None:
            check_num(_WHERE, "smooth_quant.alpha", self.alpha, 0.0, 1.0)
        if not isinstance(self.alphas, tuple) or not self.alphas:
            raise ConfigError("methods.smooth_quant.alphas: must be a non-empty list of numbers in [0, 1]")
        for a in self.alphas:
            check_num(_WHERE, "smooth_quant.alphas", a, 0.0, 1.0)
        if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int) or self.max_rows < 1:
            raise ConfigError(f"methods.smooth_quant.max_rows: must be an integer >= 1, got {self.max_rows!r}")


@dataclass(frozen=True)
class MixedPrecisionParams:
    """Mixed-precision search (:mod:`ferroquant.quant.mixed_precision`): the bits of every enabled layer's
    weight (``weight_bits``: ARQ layers; NUQ keeps 8) and input activation (``activation_bits``: per tensor,
    shared by its readers; per-channel inputs keep their bits), chosen from each layer's local error (the
    report's local SQNR, measured per bit width on ``batches`` calibration batches) under a budget:

    - the weight size: the bytes of the quantized layers' weight codes (``elements * bits / 8``; scales, biases
      and float layers not counted), at most ``size_bytes``, or ``size_fraction`` of all-int8's (default 1.0);
    - ``int8_compute_share``: the least share of the quantized layers' multiply-accumulates (MACs: output
      elements times weight elements per output channel) whose activations keep the lowest of
      ``activation_bits`` (1.0: none wider; 0.0: no limit).

    ``sensitivity``: ``local`` (default) ranks by each layer's local error (one model pass per bit pair);
    ``output`` by the model's output error with that layer alone changed from its base bits and every other
    layer quantized (one fake-quant model and pass per layer and bit pair: slower, closer to the metric).

    The layers' own ``bits`` fields are replaced by the choice (the record names it per layer)."""

    enabled: bool = False
    weight_bits: Tuple[int, ...] = (4, 8)
    activation_bits: Tuple[int, ...] = (8, 16)
    size_bytes: Optional[int] = None
    size_fraction: Optional[float] = None
    int8_compute_share: float = 0.9
    batches: int = 2
    sensitivity: str = "local"

    def validate(self) -> None:
        check_bool(_WHERE, "mixed_precision.enabled", self.enabled)
        for name, allowed in (("weight_bits", range(2, 9)), ("activation_bits", (8, 16))):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not v or list(v) != sorted(set(v)) or any(
                    isinstance(b, bool) or b not in allowed for b in v):
                raise ConfigError(f"methods.mixed_precision.{name}: must be a non-empty increasing list of bit "
                                  f"widths from {list(allowed)}, got {list(v) if isinstance(v, tuple) else v!r}")
        if self.size_bytes is not None and self.size_fraction is not None:
            raise ConfigError("methods.mixed_precision: give size_bytes or size_fraction, not both")
        if self.size_bytes is not None:
            _check_count("mixed_precision.size_bytes", self.size_bytes, 1, 1 << 62)
        if self.size_fraction is not None:
            check_num(_WHERE, "mixed_precision.size_fraction", self.size_fraction, 0.0, 4.0, lo_open=True)
        check_num(_WHERE, "mixed_precision.int8_compute_share", self.int8_compute_share, 0.0, 1.0)
        _check_count("mixed_precision.batches", self.batches, 1, 1 << 20)
        if self.sensitivity not in ("local", "output"):
            raise ConfigError(f"methods.mixed_precision.sensitivity: must be 'local' or 'output', got "
                              f"{self.sensitivity!r}")


@dataclass(frozen=True)
class OutputClipParams:
    """The sample output-aware clip search (``activation.output_clip`` of a layer) reads: per reader layer, at
    most ``max_rows`` input patches kept (a uniform sample of the calibration data), ``rows_per_batch`` drawn
    from each batch (:mod:`ferroquant.quant.output_clip`). Memory: ``max_rows`` patches per reader layer."""

    rows_per_batch: int = 64
    max_rows: int = 512

    def validate(self) -> None:
        _check_count("output_clip.rows_per_batch", self.rows_per_batch, 1, 1 << 20)
        _check_count("output_clip.max_rows", self.max_rows, 1, 1 << 20)


_SECTIONS = {"equalization": EqualizationParams, "adaround": AdaRoundParams, "smooth_quant": SmoothQuantParams,
             "mixed_precision": MixedPrecisionParams, "output_clip": OutputClipParams}


@dataclass(frozen=True)
class MethodsConfig:
    """The ``methods`` section (see the module docstring)."""

    equalization: EqualizationParams = field(default_factory=EqualizationParams)
    adaround: AdaRoundParams = field(default_factory=AdaRoundParams)
    smooth_quant: SmoothQuantParams = field(default_factory=SmoothQuantParams)
    mixed_precision: MixedPrecisionParams = field(default_factory=MixedPrecisionParams)
    output_clip: OutputClipParams = field(default_factory=OutputClipParams)

    def is_default(self) -> bool:
        return self == MethodsConfig()

    def to_json(self) -> Dict[str, Any]:
        """The sections that differ from the defaults (an unchanged config writes nothing)."""
        out = {}
        for name in _SECTIONS:
            d = asdict(getattr(self, name))
            base = asdict(_SECTIONS[name]())
            diff = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items() if v != base[k]}
            if diff:
                out[name] = diff
        return out


def methods_from_json(d: Any) -> MethodsConfig:
    """The ``methods`` section of a config dict, validated; unknown keys are errors naming the section."""
    if d is None:
        return MethodsConfig()
    if not isinstance(d, Mapping):
        raise ConfigError(f"methods: must be an object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"methods: unknown keys {unknown} (known: {sorted(_SECTIONS)})")
    parts = {}
    for name, cls in _SECTIONS.items():
        sec = d.get(name, {})
        if not isinstance(sec, Mapping):
            raise ConfigError(f"methods.{name}: must be an object, got {type(sec).__name__}")
        check_known_keys(_WHERE, name, sec, cls)
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in sec.items()}
        obj = cls(**values)
        obj.validate()
        parts[name] = obj
    return MethodsConfig(**parts)


__all__ = ["AdaRoundParams", "EqualizationParams", "MethodsConfig", "MixedPrecisionParams", "OutputClipParams",
           "SmoothQuantParams",
           "methods_from_json"]
