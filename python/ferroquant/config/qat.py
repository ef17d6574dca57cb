"""The quantization-aware training config: ``batch_num`` (the IFMR batches that initialise the ULQ clips) and
one entry per quantizable torch module, by module name, with its ``layer_type`` (the torch class name, from the
registry's QAT modules). Same field checks, JSON loader and vocabulary as the PTQ config; AMCT's keys
(``retrain_data_quant_params``, ``num_bits``, ``asymmetric``, ``algo``, ``clip_max_min``...) are accepted."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ferroquant.config import amct
from ferroquant.config.fields import (
    check_batch_num,
    check_bool,
    check_choice,
    check_int,
    field_error,
    load_json,
    make_params,
    save_json,
)
from ferroquant.errors import ConfigError
from ferroquant.quant.registry import QAT_MODULES

RETRAIN_CONFIG_VERSION = 2
QAT_WEIGHT_ALGORITHMS = ("arq_retrain", "lsq")


@dataclass(frozen=True)
class UlqParams:
    """One layer's input activation under ULQ (spec §5.1): learned clips, initialised by IFMR unless given."""

    bits: int = 8
    symmetric: bool = False
    fixed_min: bool = False
    clip_max: Optional[float] = None
    clip_min: Optional[float] = None

    def validate(self, layer: str) -> None:
        check_int(layer, "bits", self.bits, (4, 8, 16))
        for k in ("symmetric", "fixed_min"):
            check_bool(layer, k, getattr(self, k))
        if self.clip_max is not None and not (isinstance(self.clip_max, (int, float)) and self.clip_max > 0):
            raise field_error(layer, "clip_max", f"must be > 0, got {self.clip_max!r}")
        if self.clip_min is not None and not (isinstance(self.clip_min, (int, float)) and self.clip_min <= 0):
            raise field_error(layer, "clip_min", f"must be <= 0, got {self.clip_min!r}")


@dataclass(frozen=True)
class RetrainWeightParams:
    """One layer's weight in QAT: ``arq_retrain`` (default, spec §5.3) or ``lsq`` (learned scales, §5.2;
    AMCT calls it ``ulq``)."""

    algorithm: str = "arq_retrain"
    bits: int = 8
    channel_wise: bool = True

    def validate(self, layer: str) -> None:
        check_choice(layer, "algorithm", self.algorithm, QAT_WEIGHT_ALGORITHMS)
        check_int(layer, "bits", self.bits, range(2, 9))
        check_bool(layer, "channel_wise", self.channel_wise)


@dataclass(frozen=True)
class RetrainLayerConfig:
    layer_type: str
    quant_enable: bool = True
    activation: UlqParams = field(default_factory=UlqParams)
    weight: RetrainWeightParams = field(default_factory=RetrainWeightParams)


@dataclass(frozen=True)
class RetrainConfig:
    """The QAT config: ``batch_num`` (IFMR init batches) and one entry per quantizable module, by name."""

    layers: Dict[str, RetrainLayerConfig]
    batch_num: int = 1

    def enabled_layers(self) -> List[str]:
        return [n for n, c in self.layers.items() if c.quant_enable]

    def to_json(self) -> Dict[str, Any]:
        return {"version": RETRAIN_CONFIG_VERSION, "batch_num": self.batch_num,
                "layers": {n: {"layer_type": c.layer_type, "quant_enable": c.quant_enable,
                               "activation": asdict(c.activation), "weight": asdict(c.weight)}
                           for n, c in self.layers.items()}}

    def save(self, path: Union[str, Path]) -> Path:
        return save_json(path, self.to_json())


_LAYER_KEYS = {"layer_type", "quant_enable", "activation", "weight"}


def _section(cls: type, layer: str, section: str, params: Mapping[str, Any], spelled: Mapping[str, Any]) -> Any:
    sp = spelled.get(section, {})
    return make_params(cls, layer, params.get(section, {}), sp, sp.get("__section__", section))


def retrain_config_from_json(d: Mapping[str, Any]) -> RetrainConfig:
    """Validate a retrain config dict (as read from JSON; AMCT's keys accepted)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
    unknown = set(d) - {"version", "batch_num", "layers"}
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}")
    if d.get("version", RETRAIN_CONFIG_VERSION) not in (1, RETRAIN_CONFIG_VERSION):
        raise ConfigError(f"retrain config version {d.get('version')!r} is not supported")
    bn = d.get("batch_num", 1)
    check_batch_num(bn)
    if bn is None:
        raise ConfigError("field 'batch_num': QAT needs a number of IFMR initialisation batches, got null")
    layers = {}
    for name, e in d.get("layers", {}).items():
        params, spelled = amct.sections(e, f"layer {name!r}")
        extra = set(params) - _LAYER_KEYS
        if extra:
            raise field_error(name, sorted(extra)[0], "unknown key")
        if params.get("layer_type") not in QAT_MODULES:
            raise field_error(name, "layer_type", f"must be one of {list(QAT_MODULES)}, got "
                                                  f"{params.get('layer_type')!r}")
        qe = params.get("quant_enable", True)
        check_bool(name, "quant_enable", qe)
        layers[name] = RetrainLayerConfig(
            params["layer_type"], qe,
            _section(UlqParams, name, "activation", params, spelled),
            _section(RetrainWeightParams, name, "weight", params, spelled))
    return RetrainConfig(layers, bn)


def load_retrain_config(config: Union[str, Path, Mapping[str, Any], RetrainConfig]) -> RetrainConfig:
    if isinstance(config, RetrainConfig):
        return config
    if isinstance(config, Mapping):
        return retrain_config_from_json(config)
    return retrain_config_from_json(load_json(config, "config file"))


__all__ = ["QAT_WEIGHT_ALGORITHMS", "RETRAIN_CONFIG_VERSION", "RetrainConfig", "RetrainLayerConfig",
           "RetrainWeightParams", "UlqParams", "load_retrain_config", "retrain_config_from_json"]
