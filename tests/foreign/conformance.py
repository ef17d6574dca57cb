"""The ONNX conformance corpus that ships in the ``onnx`` wheel, run through ferroquant: the node test cases
(``onnx.backend.test.case.node.collect_testcases()``, built in memory) and the models under
``onnx/backend/test/data/{pytorch-converted,pytorch-operator,simple}/*/model.onnx`` with their
``test_data_set_0`` inputs.

For every model with a float input: load, fuse, and then either quantize it with its own test input as the
calibration batch (``fq.quantize``; the written deploy model must load and run in onnxruntime), or, when it
has no quantizable layer, save the fused model and check that onnxruntime gives the same outputs as for the
original, bit for bit. Every outcome is one of :data:`KINDS`; refusals keep their one-line reason.
"""

from __future__ import annotations

import glob
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

KINDS = ("quantized", "left alone", "refused", "no float input", "crash", "written model does not load",
         "left alone but outputs differ")


@dataclass(frozen=True)
class Outcome:
    name: str
    kind: str
    reason: str = ""


def node_cases() -> Iterator[Tuple[str, onnx.ModelProto, List[Any]]]:
    from onnx.backend.test.case.node import collect_testcases

    for case in collect_testcases():
        if case.data_sets:
            yield "node/" + case.name, case.model, list(case.data_sets[0][0])


def data_cases() -> Iterator[Tuple[str, onnx.ModelProto, List[Any]]]:
    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    for group in ("pytorch-converted", "pytorch-operator", "simple"):
        for path in sorted(glob.glob(str(root / group / "*" / "model.onnx"))):
            folder = Path(path).parent / "test_data_set_0"
            inputs = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(folder.glob("input_*.pb"))]
            yield f"{group}/{Path(path).parent.name}", onnx.load(path), inputs


def cases() -> Iterator[Tuple[str, onnx.ModelProto, List[Any]]]:
    yield from node_cases()
    yield from data_cases()


def _session(model_or_path):  # noqa: ANN001, ANN202
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
            a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]


def try_case(name: str, model: onnx.ModelProto, inputs: List[Any], workdir: Path) -> Outcome:
    """What ferroquant does with one model (see the module docstring)."""
    import ferroquant as fq
    from ferroquant.errors import QuantError
    from ferroquant.onnx import fuse, load_model, quantizable_layers, save_onnx

    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    feed: Dict[str, Any] = dict(zip(names, inputs))
    if not any(isinstance(v, np.ndarray) and v.dtype.kind == "f" for v in feed.values()):
        return Outcome(name, "no float input")
    try:
        fused, _ = fuse(load_model(model))
        if quantizable_layers(fused):
            out = fq.quantize(model, [feed], workdir / "q.onnx")
            try:
                _session(out["paths"]["deploy"]).run(None, feed)
            except Exception as e:  # noqa: BLE001 - onnxruntime's errors
                return Outcome(name, "written model does not load", _one_line(e))
            return Outcome(name, "quantized")
        path = save_onnx(fused, workdir / "same.onnx")
    except QuantError as e:
        return Outcome(name, "refused", _one_line(e))
    except Exception as e:  # noqa: BLE001 - anything else is a crash, counted
        return Outcome(name, "crash", f"{type(e).__name__}: {_one_line(e)}")
    try:
        ref = _session(model).run(None, feed)
    except Exception:  # noqa: BLE001 - the runtime cannot run the original: nothing to compare
        return Outcome(name, "left alone", "onnxruntime cannot run the original")
    try:
        got = _session(path).run(None, feed)
    except Exception as e:  # noqa: BLE001
        return Outcome(name, "written model does not load", _one_line(e))
    if not all(_same(a, b) for a, b in zip(ref, got)):
        return Outcome(name, "left alone but outputs differ")
    return Outcome(name, "left alone")


def run_all(limit: int = 0) -> List[Outcome]:
    """Every case (the first ``limit`` when > 0), warnings silenced."""
    import warnings

    out = []
    with tempfile.TemporaryDirectory(prefix="ferroquant-conformance-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = os.environ.get("ORT_LOGGING_LEVEL")
        for i, (name, model, inputs) in enumerate(cases()):
            if limit and i >= limit:
                break
            out.append(try_case(name, model, inputs, Path(tmp)))
        if old is not None:
            os.environ["ORT_LOGGING_LEVEL"] = old
    return out


def summary(outcomes: List[Outcome]) -> Dict[str, Any]:
    """Counts by kind and by refusal reason (reasons with node names and numbers folded together)."""
    import re
    from collections import Counter

    kinds = Counter(o.kind for o in outcomes)
    reasons = Counter(re.sub(r"'[^'\s]*'|\d+", "…", o.reason)[:160] for o in outcomes if o.kind == "refused")
    tried = sum(v for k, v in kinds.items() if k != "no float input")
    return {"total": len(outcomes), "tried": tried, "kinds": dict(kinds), "reasons": reasons.most_common(),
            "examples": {o.kind: o.name for o in outcomes}}
