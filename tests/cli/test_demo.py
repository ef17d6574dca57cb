"""``ferroquant demo`` end to end on a small photo set: the table, the models and the report."""

from __future__ import annotations

import re

from ferroquant.cli import main


def test_demo_prints_the_table_and_writes_outputs(tmp_path, capsys):
    assert main(["demo", "--calib", "8", "--eval", "8", "--out", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    for label in ("FP32", "HFMG act + ARQ int8", "IFMR act + ARQ int8", "HFMG act + NUQ 32 lv"):
        assert re.search(rf"^{re.escape(label)}\s+\d\.\d{{3}}", out, re.M), out
    assert "size MB" in out and "time s" in out and str(tmp_path) in out
    for d in ("hfmg", "ifmr", "hfmg_nuq"):
        assert (tmp_path / d / "mobilenet_v2_deploy.onnx").is_file()
    assert (tmp_path / "hfmg" / "report" / "report.html").is_file()
    assert len(list((tmp_path / "hfmg" / "report" / "plots").glob("*.png"))) == 53
