"""The README's Python snippets run as written (issue 14): each ```python block is preceded by a marker,
``<!-- readme: run -->`` (run here, in a fresh folder, with the placeholders of tests/readme_fixture.py) or
``<!-- readme: run, needs torch -->`` (run when torch is installed); a block without a marker fails the test,
so a new snippet is either run or says why not (``<!-- readme: not run: REASON -->``)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import List, Tuple

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = re.compile(r"<!-- readme: (run(?:, needs (\w+))?|not run: [^>]+) -->")


def snippets() -> List[Tuple[int, str, str]]:
    """(line number, marker, code) of every python block."""
    lines = README.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            end = lines.index("```", i + 1)
            out.append((i + 1, prev, "\n".join(lines[i + 1:end])))
            i = end
        i += 1
    return out


def test_every_python_block_is_marked():
    unmarked = [line for line, mark, _ in snippets() if not MARK.fullmatch(mark)]
    assert not unmarked, f"README python blocks without a '<!-- readme: ... -->' marker at lines {unmarked}"
    assert len(snippets()) >= 3


@pytest.mark.parametrize("line,mark,code", snippets(), ids=[f"line{s[0]}" for s in snippets()])
def test_snippet_runs(line, mark, code, tmp_path, monkeypatch):
    from tests.readme_fixture import placeholders

    m = MARK.fullmatch(mark)
    if m is None or m.group(1).startswith("not run"):
        pytest.skip(f"README line {line}: {mark}")
    if m.group(2):
        pytest.importorskip(m.group(2))
    monkeypatch.chdir(tmp_path)
    ns = placeholders(tmp_path)
    ns["__name__"] = "readme_snippet"
    from ferroquant import ops

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # calibration notes on a tiny model
            exec(compile(code, f"README.md:{line}", "exec"), ns)  # noqa: S102 - our own README
    finally:
        ops.set_num_threads(0)  # the array snippet sets one thread; later tests expect the default
    assert os.getcwd() == str(tmp_path)


def _defs(package: Path) -> dict:
    import ast

    out = {}
    for f in package.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                a = node.args
                out.setdefault(node.name, {x.arg for x in a.args + a.kwonlyargs} | ({"**"} if a.kwarg else set()))
    return out


def test_torch_snippets_use_parameters_that_exist():
    """Without torch the torch snippets cannot run here: their calls of ferroquant.torch functions are checked
    against the functions' signatures in the source (the kwargs num_bits / weight_num_bits once went stale)."""
    import ast

    defs = _defs(Path(__file__).resolve().parents[1] / "python" / "ferroquant" / "torch")
    checked = 0
    for line, mark, code in snippets():
        if "needs torch" not in mark:
            continue
        tree = ast.parse(code)
        names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                 and (n.module or "").startswith("ferroquant.torch") for a in n.names}
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
            if call.func.id in names:
                params = defs[call.func.id]
                unknown = [k.arg for k in call.keywords if k.arg not in params and "**" not in params]
                assert not unknown, f"README line {line}: {call.func.id}() has no parameter {unknown}"
                checked += 1
    assert checked >= 4
