"""The weight-only config: group-wise int4/int8 weights for MatMul/Gemm (RTN, GPTQ, AWQ), activations in float.

In a config file it is the ``weight_only`` section (``{"weight_only": {"algorithm": "gptq", "bits": 4, ...}}``);
every key is checked and named in errors as ``weight_only.<key>``; unknown keys are errors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

from ferroquant.config.fields import (
    check_batch_num,
    check_bool,
    check_choice,
    check_int,
    check_known_keys,
    check_names,
    check_num,
    field_error,
    load_json,
    save_json,
)
from ferroquant.errors import ConfigError

WEIGHT_ONLY_ALGORITHMS = ("rtn", "gptq", "awq")
#: ``matmulnbits``: onnxruntime's ``com.microsoft.MatMulNBits``; ``qdq``: opset-21 blocked DequantizeLinear
#: (int4/uint4, int8/uint8) feeding the original MatMul (the model is converted to opset 21 when older).
WEIGHT_ONLY_FORMATS = ("matmulnbits", "qdq")
SECTION = "weight_only"


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Group-wise weight-only quantization of every MatMul (constant 2-D ``B``) and Gemm (constant ``B``).

    - ``algorithm``: ``rtn`` (round to nearest per group; ``clip_search`` adds the per-group MSE clip search;
      ``clip_refine``, asymmetric groups, then scans each bound's shrink alone, see ``ops.ClipSearch``),
      ``gptq`` (needs calibration data: the Hessian of each layer's input, streamed), ``awq`` (needs
      calibration data: per-input-channel scales by output error, then the per-group clip search; the input is
      divided by the scales in a ``Div`` node before the layer).
    - ``bits`` 4 or 8, ``group_size`` inputs per group (a power of two >= 16 for ``matmulnbits``),
      ``symmetric`` or with a zero point per group, ``scale_dtype`` float32 or float16 (scales rounded to
      float16 before the codes are computed; ``MatMulNBits`` stores them in the activations' float32).
    - ``percdamp``, ``act_order``, ``block_size``: GPTQ's dampening, activation order and lazy block size.
      ``act_order`` (on by default) quantizes the inputs with the largest Hessian diagonal first; the groups stay
      contiguous in the original input order (the reference's ``static_groups``), so the model is the same size
      and runs the same way with it on or off.
    - ``n_grid``: AWQ's scale grid; ``awq_max_rows``: calibration rows kept per input tensor for AWQ's loss
      (a uniform reservoir sample: memory is bounded whatever the number of batches).
    - ``accuracy_level``: ``MatMulNBits``' attribute (None: not written, onnxruntime's default 0 = float32
      compute; 4: int8 activations quantized per block at run time, faster on CPUs, not what the codes alone say).
    - ``skip_layers``: layers (node names) kept in float; ``batch_num``: calibration batches (None: all).
    - ``embeddings``: also the constant tables of Gather nodes (embeddings, gathered on axis 0), group-wise along
      each row by RTN (``clip_search`` as set; GPTQ/AWQ have no activations to use there), exported as
      onnxruntime's ``GatherBlockQuantized`` (``matmulnbits``: the row width must be a multiple of
      ``group_size``) or as blocked DequantizeLinear feeding the Gather (``qdq``).
    """

    algorithm: str = "rtn"
    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    scale_dtype: str = "float32"
    format: str = "matmulnbits"
    clip_search: bool = True
    clip_refine: bool = True
    percdamp: float = 0.01
    act_order: bool = True
    block_size: int = 128
    n_grid: int = 20
    awq_max_rows: int = 4096
    accuracy_level: Optional[int] = None
    skip_layers: Tuple[str, ...] = ()
    batch_num: Optional[int] = None
    embeddings: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.skip_layers, list):
            object.__setattr__(self, "skip_layers", tuple(self.skip_layers))
        where = SECTION
        check_choice(where, "algorithm", self.algorithm, WEIGHT_ONLY_ALGORITHMS)
        check_int(where, "bits", self.bits, (4, 8))
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise field_error(where, "group_size", f"must be an integer >= 1, got {self.group_size!r}")
        check_choice(where, "format", self.format, WEIGHT_ONLY_FORMATS)
        if self.format == "matmulnbits" and (self.group_size < 16 or self.group_size & (self.group_size - 1)):
            raise field_error(where, "group_size", f"MatMulNBits needs a power of two >= 16, got {self.group_size}")
        for k in ("symmetric", "clip_search", "clip_refine", "act_order", "embeddings"):
            check_bool(where, k, getattr(self, k))
        check_choice(where, "scale_dtype", self.scale_dtype, ("float32", "float16"))
        check_num(where, "percdamp", self.percdamp, 0.0, 1.0)
        for k, lo in (("block_size", 1), ("n_grid", 1), ("awq_max_rows", 1)):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise field_error(where, k, f"must be an integer >= {lo}, got {v!r}")
        if self.accuracy_level is not None:
            check_int(where, "accuracy_level", self.accuracy_level, range(5))
        check_names("weight_only.skip_layers", list(self.skip_layers))
        check_batch_num(self.batch_num)

    @property
    def needs_data(self) -> bool:
        """Whether the algorithm reads calibration activations (GPTQ, AWQ)."""
        return self.algorithm != "rtn"

    def to_json(self) -> dict:
        d = asdict(self)
        d["skip_layers"] = list(self.skip_layers)
        if not self.embeddings:  # written only when on: a config without it saves as before
            del d["embeddings"]
        return {SECTION: d}

    def save(self, path: Union[str, Path]) -> Path:
        return save_json(path, self.to_json())


def weight_only_from_json(doc: Mapping[str, Any]) -> WeightOnlyConfig:
    """The ``weight_only`` section of a config document (or the section's own mapping)."""
    d = doc.get(SECTION, doc) if isinstance(doc, Mapping) else doc
    if not isinstance(d, Mapping):
        raise ConfigError(f"field {SECTION!r}: must be an object, got {type(d).__name__}")
    check_known_keys(SECTION, SECTION, d, WeightOnlyConfig)
    return WeightOnlyConfig(**dict(d))


def has_weight_only_section(config: Any) -> bool:
    """Whether ``config`` (a mapping or a JSON file path) is a weight-only config document."""
    if isinstance(config, WeightOnlyConfig):
        return True
    if isinstance(config, (str, Path)):
        p = Path(config)
        return p.suffix == ".json" and p.is_file() and SECTION in (load_json(p, "config file") or {})
    return isinstance(config, Mapping) and SECTION in config


def load_weight_only_config(config: Union[str, Path, Mapping[str, Any], WeightOnlyConfig, bool]) -> WeightOnlyConfig:
    """A :class:`WeightOnlyConfig` from itself, ``True`` (the defaults), a mapping or a JSON file."""
    if isinstance(config, WeightOnlyConfig):
        return config
    if config is True:
        return WeightOnlyConfig()
    if isinstance(config, (str, Path)):
        return weight_only_from_json(load_json(config, "weight-only config file"))
    if isinstance(config, Mapping):
        return weight_only_from_json(config)
    raise ConfigError(f"weight_only must be a WeightOnlyConfig, True, a mapping or a JSON path, got {config!r}")


__all__ = ["WEIGHT_ONLY_ALGORITHMS", "WEIGHT_ONLY_FORMATS", "WeightOnlyConfig", "has_weight_only_section",
           "load_weight_only_config", "weight_only_from_json"]
