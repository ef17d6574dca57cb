"""Digests of exported models and records, to prove a restructuring changes no output.

Two digests per file: ``structure`` (node list with attributes, initializer names, dtypes and shapes, and the
bytes of every weight-side tensor: weight codes, weight scales and zero points, NUQ levels; none of these depend
on onnxruntime's float arithmetic, so they are the same on every machine) and ``full`` (every tensor's bytes,
activation qparams and bias codes included: those come from calibration, i.e. from onnxruntime's kernels, whose
float results differ in the last bits between CPUs, so the full digest is compared per platform).
"""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any, Dict

import numpy as np
import onnx
from onnx import numpy_helper


def _weight_side(name: str) -> bool:
    return ".weight" in name and "bias" not in name


def _attrs(node: onnx.NodeProto) -> list:
    out = []
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            arr = numpy_helper.to_array(v)
            v = ["tensor", str(arr.dtype), list(arr.shape), hashlib.sha256(arr.tobytes()).hexdigest()]
        elif isinstance(v, bytes):
            v = v.decode("latin-1")
        elif isinstance(v, (list, tuple)):
            v = [x.decode("latin-1") if isinstance(x, bytes) else x for x in v]
        out.append([a.name, repr(v)])
    return sorted(out)


def model_digest(model: onnx.ModelProto) -> Dict[str, str]:
    g = model.graph
    nodes = [[n.op_type, n.domain, n.name, list(n.input), list(n.output), _attrs(n)] for n in g.node]
    head = {"opset": sorted((i.domain, i.version) for i in model.opset_import), "nodes": nodes,
            "inputs": [i.name for i in g.input], "outputs": [o.name for o in g.output]}
    structure, full = hashlib.sha256(), hashlib.sha256()
    text = json.dumps(head, sort_keys=True).encode()
    structure.update(text)
    full.update(text)
    for t in sorted(g.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(t)
        meta = f"{t.name}|{arr.dtype}|{arr.shape}|".encode()
        data = np.ascontiguousarray(arr).tobytes()
        structure.update(meta + (data if _weight_side(t.name) else b""))
        full.update(meta + data)
    return {"structure": structure.hexdigest(), "full": full.hexdigest()}


#: The record's fields that the digests cover (records may gain fields; these must not change).
RECORD_LAYER_FIELDS = ("op_type", "layer", "activation", "weight")
#: Keys the record's ``extra`` gained later (deploy profile, CPU types, layers kept float, latency, scale guard hits).
RECORD_EXTRA_NEW = ("profile", "cpu_types", "kept_float", "latency", "scale_guard")


def record_digest(record: Dict[str, Any]) -> Dict[str, str]:
    layers = {k: {f: v[f] for f in RECORD_LAYER_FIELDS} for k, v in record["layers"].items()}
    weights = {k: [v["op_type"], v["layer"], v["weight"]] for k, v in layers.items()}
    head = {k: record[k] for k in ("format", "version")}
    head["extra"] = {k: v for k, v in record["extra"].items() if k not in RECORD_EXTRA_NEW}
    return {"structure": hashlib.sha256(json.dumps(weights, sort_keys=True).encode()).hexdigest(),
            "full": hashlib.sha256(json.dumps({**head, "layers": layers}, sort_keys=True).encode()).hexdigest()}


def platform_key() -> str:
    """What the float side of calibration depends on: the CPU's vector extensions and onnxruntime's version."""
    import onnxruntime

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = "+".join(x for x in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")
                                     if x in have)
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}|ort-{onnxruntime.__version__}"
