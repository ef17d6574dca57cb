"""Issue 13, items 9 and 12: report plots of layers whose names sanitize alike get files of their own, and
without matplotlib the report is still written, the plots skipped with one warning."""

from __future__ import annotations

import subprocess
import sys

from tests.cli.sensitive import write_case


def test_colliding_layer_names_get_distinct_plot_files():
    from ferroquant.report.render import plot_names

    names = ["blk/conv", "blk_conv", "blk:conv", "BLK_CONV", "other"]
    files = plot_names(names)
    assert len({f.lower() for f in files.values()}) == len(names)
    assert files["blk/conv"] == "blk_conv.png" and files["other"] == "other.png"
    assert plot_names(names) == files  # deterministic


def test_each_plot_shows_its_own_layer(tmp_path):
    """Two layers named ``blk/conv`` and ``blk_conv`` in a real report: two PNGs, each linked from its row."""
    import json

    import onnx

    case = write_case(tmp_path / "case")
    m = onnx.load(str(case["model"]))
    renamed = {"fc1": "blk/conv", "fc2": "blk_conv"}
    for n in m.graph.node:
        n.name = renamed.get(n.name, n.name)
    onnx.save(m, str(case["model"]))
    p = subprocess.run([sys.executable, "-m", "ferroquant", "report", case["model"], "--calib", case["calib"],
                        "--out", tmp_path / "r", "-q"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    pngs = {l["name"]: l["histogram_png"] for l in doc["layers"]}
    assert pngs["blk/conv"] != pngs["blk_conv"]
    assert all((tmp_path / "r" / f).is_file() for f in pngs.values())


NO_MATPLOTLIB = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError("No module named 'matplotlib'")
        return None
sys.meta_path.insert(0, _Block())
from ferroquant.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_matplotlib_the_report_is_written_and_plots_skipped_with_one_line(tmp_path):
    case = write_case(tmp_path / "case")
    p = subprocess.run([sys.executable, "-c", NO_MATPLOTLIB, "quantize", case["model"], "--calib", case["calib"],
                        "--out", tmp_path / "o", "-q", "--report"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    notes = [l for l in p.stderr.splitlines() if "matplotlib" in l]
    assert len(notes) == 1 and notes[0].startswith("ferroquant: warning: "), p.stderr
    for f in ("report.html", "report.json", "fallback_config.json"):
        assert (tmp_path / "o" / "report" / f).is_file()
    assert not list((tmp_path / "o" / "report" / "plots").glob("*.png"))
