"""Issue 13, item 8: numeric CLI arguments out of range (zero or negative counts, NaN thresholds, impossible bit
widths) stop at once with one line naming the option and exit status 2, before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli.sensitive import write_case


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_case(tmp_path_factory.mktemp("case"))


BAD = [
    ("quantize", "--report-batches", "0"),
    ("quantize", "--report-batches", "-1"),
    ("quantize", "--fallback-count", "-1"),
    ("quantize", "--fallback-sqnr", "nan"),
    ("quantize", "--fallback-sqnr", "inf"),
    ("quantize", "--batch-num", "0"),
    ("quantize", "--batch-num", "-3"),
    ("quantize", "--batch-size", "0"),
    ("quantize", "--bits", "0"),
    ("quantize", "--bits", "-8"),
    ("quantize", "--bits", "nan"),
    ("report", "--report-batches", "0"),
    ("autocal", "--max-drop", "nan"),
    ("autocal", "--max-drop", "-0.5"),
    ("demo", "--calib", "0"),
    ("demo", "--eval", "-1"),
    ("demo", "--layers", "-2"),
]


@pytest.mark.parametrize("command,option,value", BAD, ids=[" ".join(b) for b in BAD])
def test_bad_numbers_are_refused_with_one_line(case, tmp_path, command, option, value):
    args = {"quantize": [case["model"], "--calib", case["calib"], "--out", tmp_path / "o"],
            "report": [case["model"], "--calib", case["calib"], "--out", tmp_path / "o"],
            "autocal": [case["model"], "--calib", case["calib"], "--out", tmp_path / "o", "--evaluator",
                        case["evaluator"]],
            "demo": ["--out", tmp_path / "o"]}[command]
    if command == "autocal" or option != "--max-drop":
        args = [*args, *(["--max-drop", "0.01"] if command == "autocal" and option != "--max-drop" else [])]
    p = subprocess.run([sys.executable, "-m", "ferroquant", command, *map(str, args), option, value],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferroquant: error: ") and option in lines[0], p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "o").exists()
