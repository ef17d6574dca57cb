"""Issue 14: the torch extra and the test script agree on versions, and the test script installs nothing
unpinned (transformers and onnxscript once came in at whatever was newest)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def extras():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_torch_test_pins_are_exact_and_inside_the_torch_extra(extras):
    from packaging.requirements import Requirement

    pins = {r.name: r for r in map(Requirement, extras["torch-test"])}
    assert {"torch", "transformers", "onnxscript"} <= set(pins)
    for r in pins.values():
        (spec,) = r.specifier
        assert spec.operator == "==", f"{r} is not pinned"
    (torch_range,) = [Requirement(r) for r in extras["torch"] if Requirement(r).name == "torch"]
    pinned = next(iter(pins["torch"].specifier)).version
    assert torch_range.specifier.contains(pinned), f"torch-test's torch {pinned} is outside the extra {torch_range}"


def test_the_test_script_installs_only_the_project_extras_or_pinned_packages():
    script = (ROOT / "scripts" / "test.sh").read_text()
    for line in script.splitlines():
        if "pip install" not in line or line.lstrip().startswith("#"):
            continue
        args = line.split("pip install", 1)[1].split()
        names = [a.strip("\"'") for a in args if not a.startswith("-") and not a.startswith('"$')]
        for n in names:
            ok = n.startswith(".[") or "==" in n or n == "pip"
            assert ok, f"unpinned: {line}"
    assert re.search(r"torch-test", script)
