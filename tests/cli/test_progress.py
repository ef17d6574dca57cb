"""The stderr progress bar: one line when not on a terminal, nothing when disabled."""

import io

import pytest

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


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_with_tqdm_the_bar_shows_rate_and_eta():
    pytest.importorskip("tqdm")
    s = _Tty()
    with ProgressBar("calibrating", 3, "batches", stream=s) as bar:
        for i in range(3):
            bar(i + 1, 3)
    out = s.getvalue()
    assert "calibrating" in out and "3/3" in out and "batches/s" in out and "<" in out  # rate and ETA


def test_on_a_terminal_without_tqdm_a_plain_counter(monkeypatch):
    monkeypatch.setattr(progress, "_tqdm", lambda: None)
    s = _Tty()
    with ProgressBar("calibrating", 3, "batches", stream=s) as bar:
        bar.update(3)
    assert "\r" in s.getvalue() and "3/3 batches" in s.getvalue()


def test_a_bar_that_ends_early_ends_at_what_was_done():
    """Issue 14: one batch where two were allowed showed '1/2 batches' at the end."""
    s = io.StringIO()
    with ProgressBar("measuring layers", 2, "batches", stream=s) as bar:
        bar.update()
    assert "1/1 batches" in s.getvalue() and "1/2" not in s.getvalue()


def test_an_interrupted_bar_keeps_its_total():
    s = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with ProgressBar("x", 2, stream=s) as bar:
            bar.update()
            raise KeyboardInterrupt
    assert "1/1" not in s.getvalue()
