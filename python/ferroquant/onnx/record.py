"""The quantization record: a JSON file with every layer's qparams, written beside an exported model.

Per layer (keyed by node name): ``op_type``, the layer's tensors (``activation``, ``weight``, ``bias``,
``axis``, ``groups``), the activation's ``tensor``, ``scale``, ``zero_point`` (AMCT's offset), ``bits``,
``algorithm``, ``clip_min``/``clip_max`` and free-form ``details`` (per-channel activations add ``axis``,
``channel_scales`` and ``channel_zero_points``), and the weight's ``tensor``, ``scale`` and
``zero_point`` lists, ``axis`` (null: per tensor), ``bits``, ``algorithm`` and, for NUQ, ``levels``; and, when
the bias is quantized, the bias's ``tensor``, ``scale`` list (``s_in * s_w``), ``axis`` and ``bits`` (32). Integer
codes are not written (they are in the deploy model). ``tensors`` lists the other activation tensors a deploy
profile quantizes (layer outputs, residual Adds...) with the same fields as a layer's activation. Floats are written by ``repr`` (shortest round-trip
form), so float32 scales read back bit for bit. :func:`read_record` validates the file and raises
:class:`RecordError` (a :class:`~ferroquant.errors.ConfigError`) naming the layer and field at fault.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from ferroquant import ops
from ferroquant.errors import ConfigError
from ferroquant.outputs import write_text
from ferroquant.quant.table import ActivationQuant, LayerQuant, QuantTable

FORMAT = "ferroquant-quant-record"
VERSION = 1
PathLike = Union[str, Path]


class RecordError(ConfigError):
    """A quantization record that cannot be read: missing, not JSON, or a field with a bad value."""


def _plain(value: Any, where: str) -> Any:
    """``value`` with NumPy scalars/arrays turned into JSON types; RecordError for anything else."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return _numbers(value, where, ravel=False)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), where)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordError(f"{where}: non-finite number {value!r} cannot be recorded")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    raise RecordError(f"{where}: {type(value).__name__} cannot be written to a record")


def _numbers(value: Any, where: str, ravel: bool = True) -> list:
    """An array's values as JSON numbers (a flat list with ``ravel``), converted in one call: the per-channel
    lists are most of a record. Non-finite floats raise."""
    a = np.asarray(value)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = a[~np.isfinite(a)].ravel()[0]
        raise RecordError(f"{where}: non-finite number {float(bad)!r} cannot be recorded")
    return (a.ravel() if ravel else a).tolist()


def _layer_entry(lq: LayerQuant) -> Dict[str, Any]:
    layer, aq, wq, where = lq.layer, lq.activation, lq.weight, lq.layer.name
    weight = {"tensor": wq.tensor, "scale": _numbers(np.asarray(wq.scale, np.float32), f"{where}.weight.scale"),
              "zero_point": _numbers(np.asarray(wq.zero_point, np.int64), f"{where}.weight.zero_point"),
              "axis": _plain(wq.axis, where), "bits": int(wq.bits), "algorithm": wq.algorithm}
    if wq.levels is not None:
        weight["levels"] = _numbers(np.asarray(wq.levels, np.int64), f"{where}.weight.levels")
    entry = {
        "op_type": layer.op_type,
        "layer": _plain({"activation": layer.activation, "weight": layer.weight, "bias": layer.bias,
                         "axis": layer.axis, "groups": layer.groups}, where),
        "activation": _activation_entry(aq, where),
        "weight": weight,
    }
    if lq.bias is not None:
        entry["bias"] = {"tensor": lq.bias.tensor,
                         "scale": _numbers(np.asarray(lq.bias.scale, np.float32), f"{where}.bias.scale"),
                         "axis": _plain(lq.bias.axis, where), "bits": 32}
    return entry


def _activation_entry(aq: ActivationQuant, where: str) -> Dict[str, Any]:
    out = _plain({"tensor": aq.tensor, "scale": float(aq.scale), "zero_point": int(aq.zero_point),
                  "bits": int(aq.bits), "algorithm": aq.algorithm, "clip_min": float(aq.clip_min),
                  "clip_max": float(aq.clip_max)}, where)
    out["details"] = _plain(aq.details, f"{where}.details")
    if aq.per_channel:
        out.update(axis=int(aq.axis),
                   channel_scales=_numbers(np.asarray(aq.channel_scales or (), np.float64), f"{where}.channel_scales"),
                   channel_zero_points=_numbers(np.asarray(aq.channel_zero_points or (), np.int64),
                                                f"{where}.channel_zero_points"))
    return out


def record_dict(table: QuantTable, extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The record of ``table`` as plain JSON data (what :func:`write_record` writes)."""
    layers = {name: _layer_entry(lq) for name, lq in table.layers.items()}
    out = {"format": FORMAT, "version": VERSION, "layers": layers}
    if table.tensors:
        out["tensors"] = {t: _activation_entry(aq, t) for t, aq in table.tensors.items()}
    out["extra"] = _plain(dict(extra or {}), "extra")
    return out


_quote = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str (its C function)


def _scalar(value: Any) -> str:
    """``json.dumps(value, allow_nan=False)``, the common leaves without its encoder set-up (a record has
    thousands of them)."""
    if isinstance(value, str):
        return _quote(value)
    if value is True or value is False or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value, allow_nan=False)


def dumps(value: Any, indent: str = "") -> str:
    """JSON with objects indented one space a level and lists of numbers on one line (a per-channel scale list is
    one line, not one line per channel: a third of the size, and written in a third of the time). A list is
    written on one line when its first item is a number (the record's lists are of one kind)."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = indent + " "
        items = (f"{inner}{_quote(str(k))}: {dumps(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and not isinstance(value[0], (int, float)):
        inner = indent + " "
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in value) + "\n" + indent + "]"
    if isinstance(value, list) and len(value) > 1 and all(type(v) is float for v in value):
        # The per-channel scale lists, most of a record: formatted natively (float repr is 30 of the 33 ms
        # MobileNetV2's record took), the same text
        return ops.json_floats(value)
    return _scalar(value)


def write_record(path: PathLike, table: QuantTable, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write the record of ``table`` (and the JSON-able ``extra``) to ``path``; returns the path."""
    return write_text(path, dumps(record_dict(table, extra)) + "\n")


def _field(entry: Mapping[str, Any], key: str, kind: Any, where: str) -> Any:
    if not isinstance(entry, Mapping) or key not in entry:
        raise RecordError(f"{where}: missing field {key!r}")
    value = entry[key]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, (int, float), float))
    if not ok:
        raise RecordError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _check_qparams(scales: list, zps: list, bits: int, where: str) -> None:
    if not 2 <= bits <= 16:
        raise RecordError(f"{where}.bits: {bits} outside 2..16")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and s > 0):
            raise RecordError(f"{where}.scale: {s!r} is not a finite number > 0")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for z in zps:
        if isinstance(z, bool) or not isinstance(z, int) or not lo <= z <= hi:
            raise RecordError(f"{where}.zero_point: {z!r} is not an integer in [{lo}, {hi}]")


def _check_activation(entry: Mapping[str, Any], where: str) -> None:
    _field(entry, "tensor", str, where)
    _field(entry, "algorithm", str, where)
    _field(entry, "details", dict, where)
    bits = _field(entry, "bits", int, where)
    scale = _field(entry, "scale", (int, float), where)
    zp = _field(entry, "zero_point", int, where)
    lo, hi = _field(entry, "clip_min", (int, float), where), _field(entry, "clip_max", (int, float), where)
    _check_qparams([scale], [zp], bits, where)
    if not lo <= hi:
        raise RecordError(f"{where}: clip_min {lo!r} > clip_max {hi!r}")
    if entry.get("axis") is not None:
        _field(entry, "axis", int, where)
        scales, zps = _field(entry, "channel_scales", list, where), _field(entry, "channel_zero_points", list, where)
        if not scales or len(scales) != len(zps):
            raise RecordError(f"{where}: {len(scales)} channel scales and {len(zps)} channel zero points")
        _check_qparams(scales, zps, bits, where)


def _check_weight(entry: Mapping[str, Any], where: str) -> None:
    _field(entry, "tensor", str, where)
    _field(entry, "algorithm", str, where)
    bits = _field(entry, "bits", int, where)
    scales, zps = _field(entry, "scale", list, where), _field(entry, "zero_point", list, where)
    if not scales or len(scales) != len(zps):
        raise RecordError(f"{where}: {len(scales)} scales and {len(zps)} zero points (need the same, >= 1)")
    axis = entry.get("axis")
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise RecordError(f"{where}.axis: expected an integer or null, got {axis!r}")
    if axis is None and len(scales) != 1:
        raise RecordError(f"{where}: per-tensor (axis null) but {len(scales)} scales")
    _check_qparams(scales, zps, bits, where)
    levels = entry.get("levels")
    if levels is not None and not (isinstance(levels, list) and all(isinstance(v, int) for v in levels)):
        raise RecordError(f"{where}.levels: expected a list of integers")


def _check_bias(entry: Mapping[str, Any], where: str) -> None:
    _field(entry, "tensor", str, where)
    scales = _field(entry, "scale", list, where)
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and s > 0):
            raise RecordError(f"{where}.scale: {s!r} is not a finite number > 0")
    axis = entry.get("axis")
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise RecordError(f"{where}.axis: expected an integer or null, got {axis!r}")


def _check_layer(name: str, entry: Any) -> None:
    _field(entry, "op_type", str, name)
    layer = _field(entry, "layer", dict, name)
    for key in ("activation", "weight"):
        _field(layer, key, str, f"{name}.layer")
    _field(layer, "axis", int, f"{name}.layer")
    _field(layer, "groups", int, f"{name}.layer")
    _check_activation(_field(entry, "activation", dict, name), f"{name}.activation")
    _check_weight(_field(entry, "weight", dict, name), f"{name}.weight")
    if entry.get("bias") is not None:
        _check_bias(_field(entry, "bias", dict, name), f"{name}.bias")


def read_record(path: PathLike) -> Dict[str, Any]:
    """Read and validate a record written by :func:`write_record`; returns the same data as
    :func:`record_dict` gave (scales as Python floats, exact). Raises :class:`RecordError`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"record not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: not a JSON record ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecordError(f"{path}: not a ferroquant record (format must be {FORMAT!r})")
    if data.get("version") != VERSION:
        raise RecordError(f"{path}: record version {data.get('version')!r}, this ferroquant reads {VERSION}")
    layers = _field(data, "layers", dict, str(path))
    for name, entry in layers.items():
        _check_layer(name, entry)
    for name, entry in data.get("tensors", {}).items():
        _check_activation(entry, f"tensors.{name}")
    if not isinstance(data.get("extra", {}), dict):
        raise RecordError(f"{path}: 'extra' must be an object")
    return data


__all__ = ["RecordError", "read_record", "record_dict", "write_record"]
