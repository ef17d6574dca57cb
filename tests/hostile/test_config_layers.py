"""Issue 13, item 9 (last part): a config that declares a layer with the wrong op type is refused, naming the
layer and the field, in Python and through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ferroquant.errors import ConfigError
from ferroquant.onnx import quantize_model
from tests.cli.sensitive import feeds, write_case


@pytest.fixture()
def wrong_type(tmp_path):
    case = write_case(tmp_path / "case")
    cfg = tmp_path / "c.json"
    subprocess.run([sys.executable, "-m", "ferroquant", "config", case["model"], "-o", cfg], check=True,
                   capture_output=True)
    doc = json.loads(cfg.read_text())
    assert doc["layers"]["fc2"]["layer_type"] == "MatMul"
    doc["layers"]["fc2"]["layer_type"] = "Conv"
    cfg.write_text(json.dumps(doc))
    return case, cfg


def test_wrong_layer_type_in_python(wrong_type):
    case, cfg = wrong_type
    with pytest.raises(ConfigError, match=r"'fc2'.*layer_type.*Conv.*MatMul"):
        quantize_model(str(cfg), str(case["model"]), feeds(32))


def test_wrong_layer_type_through_the_cli(wrong_type, tmp_path):
    case, cfg = wrong_type
    p = subprocess.run([sys.executable, "-m", "ferroquant", "quantize", case["model"], "--calib", case["calib"],
                        "--config", cfg, "--out", tmp_path / "o", "-q"], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "fc2" in p.stderr and "layer_type" in p.stderr
    assert not (tmp_path / "o").exists()
