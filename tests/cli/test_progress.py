"""The stderr progress bar: one line when not on a terminal, nothing when disabled."""

import io

from ferroquant import progress
from ferroquant.progress import ProgressBar, track


def test_bar_writes_one_line_off_a_terminal():
    s = io.StringIO()
    with ProgressBar("calibrating", 4, "batches", stream=s) as bar:
        for i in range(4):
            bar(i + 1, 4)
    assert s.getvalue().startswith("calibrating [") and "4/4 batches" in s.getvalue()
    assert s.getvalue().count("\n") == 1


def test_disabled_and_track():
    progress.set_enabled(False)
    try:
        s = io.StringIO()
        with ProgressBar("x", 2, stream=s) as bar:
            bar.update(2)
        assert s.getvalue() == ""
        assert list(track(range(3), "y")) == [0, 1, 2]
    finally:
        progress.set_enabled(True)
