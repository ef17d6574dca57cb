"""Shape inference that never blames a valid model.

onnx's shape inference has gaps and bugs of its own (function-body ops such as ``MeanVarianceNormalization``
fail in strict mode, data propagation trips over some shape arithmetic, exporters write value_info that
strict merging rejects), so a failure there says nothing about the model: onnxruntime may run it fine. We try
the modes from the most to the least informative and keep the first that works:

1. strict, with data propagation (shapes computed by ``Shape``/``Gather``/``Concat`` arithmetic are known);
2. strict, without data propagation;
3. non-strict (a node whose inference fails is skipped, the rest is inferred), with, then without, data
   propagation;
4. non-strict without the model's own value_info (stale entries can contradict what inference finds).

If all fail, the model is kept as it is, without inferred shapes; the passes that need a shape (the rank
check of BN+Mul/Add folding) then skip that feature. Models with more than 64 MiB of weights (and so every
model over 2 GB) go through ``onnx.shape_inference.infer_shapes_path`` on a skeleton without the weights
(see :mod:`ferroquant.onnx.external`), and the inferred value_info is copied back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import onnx

from ferroquant.onnx.external import MEDIUM, reattach, skeleton, weights_size

MODES: List[Tuple[str, Dict[str, Any]]] = [
    ("strict", {"strict_mode": True, "data_prop": True}),
    ("strict, no data propagation", {"strict_mode": True}),
    ("non-strict", {"strict_mode": False, "data_prop": True}),
    ("non-strict, no data propagation", {"strict_mode": False}),
    ("non-strict, without the model's value_info", {"strict_mode": False, "drop_value_info": True}),
]


def _in_memory(model: onnx.ModelProto, options: Dict[str, Any]) -> onnx.ModelProto:
    """Inference on a skeleton without the floating-point weights (onnx serializes the model, infers, and
    parses the result back: with the weights, 45 ms for MobileNetV2's 14 MB instead of 8), the weights then
    copied back; integer tensors stay for data propagation, so the shapes are those of the whole model."""
    options = dict(options)
    sk = skeleton(model, floats_only=True)
    if options.pop("drop_value_info", False):
        del sk.model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(sk.model, check_type=True, **options)
    return reattach(sk, inferred, model, unread=True)


def _through_path(model: onnx.ModelProto, options: Dict[str, Any]) -> onnx.ModelProto:
    """Infer on a weightless skeleton with the path-based API; copy value_info and output types back."""
    options = dict(options)
    drop = options.pop("drop_value_info", False)
    sk = skeleton(model).model
    if drop:
        del sk.graph.value_info[:]
    with tempfile.TemporaryDirectory(prefix="ferroquant-shapes-") as tmp:
        src, dst = Path(tmp) / "skeleton.onnx", Path(tmp) / "inferred.onnx"
        src.write_bytes(sk.SerializeToString())
        del sk
        onnx.shape_inference.infer_shapes_path(str(src), str(dst), check_type=True, **options)
        inferred = onnx.load(str(dst), load_external_data=False)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def infer_shapes(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, Optional[str]]:
    """``model`` with inferred shapes and the mode that worked (one of :data:`MODES`' names), or the model
    unchanged and None when no mode works. A model over 64 MiB is annotated in place (and returned); any
    other is returned as a new model."""
    infer = _through_path if weights_size(model) > MEDIUM else _in_memory
    for name, options in MODES:
        try:
            return infer(model, options), name
        except Exception:  # noqa: BLE001 - onnx raises C++ errors of many types; each is a fallback
            continue
    return model, None


def infer_or_keep(model: onnx.ModelProto) -> onnx.ModelProto:
    """:func:`infer_shapes` without the mode."""
    return infer_shapes(model)[0]
