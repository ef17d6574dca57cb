"""The module boundaries of docs/architecture.md, checked on the source: the middle (quant/, config/) imports no
front end, torch/ imports onnx/ only to export, the core never imports the demo, and op knowledge has one home."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "python" / "ferroquant"


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def _modules(folder: str):
    return sorted((PKG / folder).rglob("*.py")) if folder else sorted(PKG.glob("*.py"))


@pytest.mark.parametrize("folder", ["quant", "config"])
def test_the_middle_imports_no_front_end(folder):
    for f in _modules(folder):
        bad = [m for m in _imports(f) if m.split(".")[0] in ("onnx", "onnxruntime", "torch")
               or m.startswith(("ferroquant.onnx", "ferroquant.torch", "ferroquant.report", "ferroquant.cli"))]
        assert not bad, f"{f.relative_to(PKG)} imports {bad}"


def test_torch_imports_onnx_only_to_export():
    for f in _modules("torch"):
        onnx_imports = [m for m in _imports(f) if m.startswith("ferroquant.onnx")]
        assert not onnx_imports or f.name == "export.py", f"{f.name} imports {onnx_imports}"


def test_onnx_never_imports_torch():
    for f in _modules("onnx"):
        assert not [m for m in _imports(f) if m.split(".")[0] == "torch" or m.startswith("ferroquant.torch")], f


def test_the_core_never_imports_the_demo():
    for f in PKG.rglob("*.py"):
        if "examples" in f.parts or f.name == "cli.py":  # the CLI's demo command loads it on demand
            continue
        assert not [m for m in _imports(f) if m.startswith("ferroquant.examples")], f


def test_op_types_are_listed_in_the_registry_only():
    """No second list of the quantizable op types (or of the torch modules that map to them)."""
    needles = ('"ConvTranspose"', "'ConvTranspose'", "nn.ConvTranspose2d", '"ConvTranspose2d"')
    for f in PKG.rglob("*.py"):
        if f.name == "registry.py":
            continue
        text = f.read_text()
        assert not any(n in text for n in needles), f"{f.relative_to(PKG)} names an op type itself"
