"""Field checks shared by every config (PTQ and QAT), and the one JSON loader.

Every check raises :class:`FieldError`, a :class:`~ferroquant.errors.ConfigError` that carries the layer and the
field it is about, so a reader that translated a key (AMCT's ``num_bits`` is our ``bits``) can name the key as
the user wrote it.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from ferroquant.errors import ConfigError
from ferroquant.outputs import write_text


class FieldError(ConfigError):
    """A bad value in one field of one layer's config (``layer`` is ``<global>`` for top-level keys)."""

    def __init__(self, layer: str, field: str, message: str) -> None:
        super().__init__(f"layer {layer!r}, field {field!r}: {message}")
        self.layer, self.field, self.detail = layer, field, message

    def renamed(self, field: str) -> "FieldError":
        """The same error about ``field`` (the key as the user spelled it)."""
        return FieldError(self.layer, field, self.detail)


def field_error(layer: str, fld: str, msg: str) -> FieldError:
    return FieldError(layer, fld, msg)


def check_known_keys(layer: str, prefix: str, section: Mapping[str, Any], cls: type) -> None:
    """Every key of ``section`` is a field of the dataclass ``cls``; else a FieldError naming the first unknown
    key as ``prefix.key``."""
    known = {f.name for f in fields(cls)}
    bad = sorted(set(section) - known)
    if bad:
        raise field_error(layer, f"{prefix}.{bad[0]}", f"unknown key (known: {sorted(known)})")


def check_bool(layer: str, name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise field_error(layer, name, f"must be true or false, got {v!r}")


def check_num(layer: str, name: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        raise field_error(layer, name, f"must be a number, got {v!r}")
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise field_error(layer, name, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")


def check_int(layer: str, name: str, v: Any, allowed: Iterable[int]) -> None:
    allowed = tuple(allowed)
    if isinstance(v, bool) or not isinstance(v, int) or v not in allowed:
        raise field_error(layer, name, f"must be one of {list(allowed)}, got {v!r}")


def check_choice(layer: str, name: str, v: Any, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if v not in allowed:
        raise field_error(layer, name, f"must be one of {list(allowed)}, got {v!r}")


def check_batch_num(v: Any) -> None:
    """``batch_num``: an integer > 0, or None for every batch."""
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ConfigError(f"field 'batch_num': must be an integer > 0 or null (every batch), got {v!r}")


def check_names(what: str, v: Any) -> None:
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
        raise ConfigError(f"field {what!r}: must be a list of names, got {v!r}")


def make_params(cls: type, layer: str, params: Mapping[str, Any], spelled: Mapping[str, str], section: str) -> Any:
    """A parameter dataclass ``cls`` from ``params`` (ferroquant's keys), validated. Errors name the key as the
    user spelled it (``spelled``: our key -> theirs) and the section it sits in."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise field_error(layer, f"{section}.{spelled.get(unknown[0], unknown[0])}",
                          f"unknown key (known: {sorted(names)})")
    values = dict(params)
    if isinstance(values.get("search_range"), list):
        values["search_range"] = tuple(values["search_range"])
    obj = cls(**values)
    try:
        obj.validate(layer)
    except FieldError as e:
        raise e.renamed(spelled.get(e.field, e.field)) from None
    return obj


def load_json(path: Union[str, Path], what: str = "file") -> Any:
    """The JSON document in ``path``; a ConfigError naming the file when it is missing, not UTF-8 or not JSON."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None


def save_json(path: Union[str, Path], doc: Any) -> Path:
    """Write ``doc`` as indented JSON to ``path`` (parent folders made; replaced whole, see
    :mod:`ferroquant.outputs`)."""
    return write_text(path, json.dumps(doc, indent=2) + "\n")
