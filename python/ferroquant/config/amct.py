"""AMCT's spelling of config keys, translated to ferroquant's one vocabulary, in the JSON reader only.

ferroquant says ``bits``, ``symmetric``, ``algorithm``, ``activation`` / ``weight``; AMCT's files (and the files
ferroquant wrote before version 2) say ``num_bits``, ``activation_offset`` / ``asymmetric`` / ``with_offset``
(the negation of ``symmetric``), ``act_algo`` / ``wts_algo`` / ``algo``, ``activation_quant_params`` /
``weight_quant_params`` / ``retrain_data_quant_params`` / ``retrain_weight_quant_params``. Both spellings load;
files are written in ferroquant's. A translated key keeps its spelling for error messages, so a bad
``num_bits`` is reported as ``num_bits``.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

from ferroquant.errors import ConfigError

#: section name -> ferroquant's section
SECTIONS = {"activation_quant_params": "activation", "weight_quant_params": "weight",
            "retrain_data_quant_params": "activation", "retrain_weight_quant_params": "weight"}
#: per section: AMCT key -> (ferroquant key, negated)
KEYS: Dict[str, Dict[str, Tuple[str, bool]]] = {
    "activation": {"act_algo": ("algorithm", False), "num_bits": ("bits", False), "quant_bits": ("bits", False),
                   "asymmetric": ("symmetric", True), "with_offset": ("symmetric", True)},
    "weight": {"wts_algo": ("algorithm", False), "algo": ("algorithm", False), "num_bits": ("bits", False),
               "quant_bits": ("bits", False), "with_offset": ("symmetric", True)},
}
#: AMCT algorithm names -> ferroquant's (``ulq`` weights in QAT are LSQ)
ALGORITHMS = {"arq_quantize": "arq", "nuq_quantize": "nuq", "ulq": "lsq", "ulq_quantize": "lsq",
              "ifmr_quantize": "ifmr", "hfmg_quantize": "hfmg"}
_DST_TYPES = {"INT4": 4, "INT8": 8, "INT16": 16}

Spelling = Dict[str, str]


def _params(section: str, d: Any, where: str) -> Tuple[Dict[str, Any], Spelling]:
    """One parameter section in ferroquant's keys, and how the user spelled each key."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: must be an object, got {type(d).__name__}")
    out: Dict[str, Any] = {}
    spelled: Spelling = {}
    for key, value in d.items():
        name, negate = KEYS.get(section, {}).get(key, (key, False))
        if key == "dst_type":
            name, value = "bits", _DST_TYPES.get(value, value)
        elif key == "clip_max_min" and isinstance(value, Mapping):  # AMCT QAT: {"clip_max": .., "clip_min": ..}
            for k in ("clip_max", "clip_min"):
                if k in value:
                    out[k], spelled[k] = value[k], f"clip_max_min.{k}"
            continue
        if name in out:
            raise ConfigError(f"{where}: {spelled[name]!r} and {key!r} set the same field {name!r}")
        if negate and isinstance(value, bool):
            value = not value
        if name == "algorithm" and isinstance(value, str):
            value = ALGORITHMS.get(value, value)
        out[name], spelled[name] = value, key
    return out, spelled


def sections(d: Mapping[str, Any], where: str) -> Tuple[Dict[str, Any], Dict[str, Spelling]]:
    """A dict of parameter sections (``activation`` / ``weight`` or AMCT's names, and other keys left as they
    are) in ferroquant's keys, and the spelling of each section's keys."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: must be an object, got {type(d).__name__}")
    out: Dict[str, Any] = {}
    spelled: Dict[str, Spelling] = {}
    for key, value in d.items():
        name = SECTIONS.get(key, key)
        if name in ("activation", "weight"):
            if name in out:
                raise ConfigError(f"{where}: two sections for {name!r}")
            out[name], spelled[name] = _params(name, value, f"{where}.{key}")
            spelled[name]["__section__"] = key
        else:
            out[key] = value
    return out, spelled


def top_level(d: Mapping[str, Any]) -> Dict[str, Any]:
    """The global keys: AMCT's ``activation_offset`` becomes ``symmetric`` (its negation)."""
    out = dict(d)
    if "activation_offset" in out:
        if "symmetric" in out:
            raise ConfigError("'activation_offset' (AMCT) and 'symmetric' set the same field; keep one")
        v = out.pop("activation_offset")
        if not isinstance(v, bool):
            raise ConfigError(f"field 'activation_offset': must be true or false, got {v!r}")
        out["symmetric"] = not v
    return out


__all__ = ["ALGORITHMS", "KEYS", "SECTIONS", "sections", "top_level"]
