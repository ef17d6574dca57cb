"""Issue 13, items 3-4: outputs are written whole (temporary file in the same folder, fsync, rename) and as one
set per run, and an output that is an input is refused before anything is written."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import ferroquant as fq
from ferroquant.errors import DataError
from tests.cli.sensitive import feeds, write_case

FILES = ("model_fake_quant.onnx", "model_deploy.onnx", "model_quant_record.json", "config.json",
         "report/report.json", "report/report.html", "report/fallback_config.json")


def _cli(*args: object) -> list:
    return [sys.executable, "-m", "ferroquant", *map(str, args)]


def _digests(folder: Path) -> dict:
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in FILES if (folder / f).exists()}


def test_replacing_leaves_the_old_file_when_the_writer_fails(tmp_path):
    from ferroquant.outputs import replacing, write_text

    p = write_text(tmp_path / "a.json", "old\n")
    with pytest.raises(RuntimeError):
        with replacing(p) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert p.read_text() == "old\n" and os.listdir(tmp_path) == ["a.json"]


def test_an_output_set_renames_nothing_until_it_ends(tmp_path):
    from ferroquant.outputs import output_set, write_text

    a, b = write_text(tmp_path / "a", "old a"), write_text(tmp_path / "b", "old b")
    with pytest.raises(KeyboardInterrupt):
        with output_set():
            write_text(a, "new a")
            assert a.read_text() == "old a"
            raise KeyboardInterrupt
    assert (a.read_text(), b.read_text()) == ("old a", "old b") and sorted(os.listdir(tmp_path)) == ["a", "b"]
    with output_set():
        write_text(a, "new a")
        write_text(b, "new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")


def test_a_set_writes_in_the_background_and_fails_whole_on_a_write_error(tmp_path, monkeypatch):
    """Inside a set, files are written and fsync'd by a background thread while the run goes on (MobileNetV2's
    three outputs: 0.175 -> 0.13 s); the set waits for them before renaming, and a failed write (here fsync
    refusing, as on a full disk) fails the whole set: the error names the file, the old outputs stay, and no
    temporary file is left. Permissions are those of an ordinary file."""
    import threading

    import ferroquant.outputs as out

    a, b = out.write_text(tmp_path / "a", "old a"), out.write_text(tmp_path / "b", "old b")
    threads = []
    real_write = out._write_fd

    def spy(*args):
        threads.append(threading.current_thread().name)
        return real_write(*args)

    monkeypatch.setattr(out, "_write_fd", spy)
    with out.output_set():
        out.write_text(a, "new a")
        out.write_bytes(b, b"new b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert len(threads) == 2 and all(t.startswith("ferroquant-write") for t in threads)
    ref = tmp_path / "ref"
    ref.write_text("x")
    assert (a.stat().st_mode & 0o777) == (ref.stat().st_mode & 0o777)
    ref.unlink()

    real_fsync = os.fsync

    def fsync(fd):
        if threading.current_thread().name.startswith("ferroquant-write") and os.fstat(fd).st_size == 5:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(out.os, "fsync", fsync)
    with pytest.raises(OSError, match="cannot write .*b.*No space left"):
        with out.output_set():
            out.write_text(a, "newer a, longer")
            out.write_text(b, "bad b")
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_writes_its_own_set(tmp_path):
    """A child forked after the parent's writer threads exist (multiprocessing's fork start) does not hand its
    writes to threads it does not have: its set completes."""
    import ferroquant.outputs as out

    with out.output_set():
        out.write_text(tmp_path / "parent", "p")
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if its set was written
        try:
            with out.output_set():
                out.write_text(tmp_path / "child", "c")
            os._exit(0 if (tmp_path / "child").read_text() == "c" else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's output set never finished")
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_set_cut_between_two_renames_is_finished_by_the_next_write(tmp_path, monkeypatch):
    from ferroquant import outputs

    a, b = outputs.write_text(tmp_path / "a", "old a"), outputs.write_text(tmp_path / "sub" / "b", "old b")
    real, calls = os.replace, []

    def dying_replace(src, dst):  # noqa: ANN001 - the process dies after the journal and one rename
        calls.append(dst)
        if len(calls) == 3:
            raise SystemExit("killed")
        real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", dying_replace)
    with pytest.raises(SystemExit):
        with outputs.output_set():
            outputs.write_text(a, "new a")
            outputs.write_text(b, "new b")
    monkeypatch.setattr(outputs.os, "replace", real)
    assert (a.read_text(), b.read_text()) == ("new a", "old b")  # mixed, with the journal left
    assert (tmp_path / outputs.JOURNAL).exists()
    outputs.write_text(tmp_path / "sub" / "c", "another run")  # any later write into the folder finishes it
    assert (a.read_text(), b.read_text()) == ("new a", "new b") and not (tmp_path / outputs.JOURNAL).exists()


def test_files_keep_ordinary_permissions(tmp_path):
    from ferroquant.outputs import write_text

    p = write_text(tmp_path / "a", "x")
    ref = tmp_path / "ref"
    ref.write_text("x")
    assert (p.stat().st_mode & 0o777) == (ref.stat().st_mode & 0o777)


WRITER = """
import os, sys
from ferroquant.outputs import replacing
with replacing(sys.argv[1]) as f:
    for i in range(400):
        f.write(os.urandom(4096)); f.flush()
        if i == 10: print("writing", flush=True)
"""


def test_a_writer_killed_mid_way_leaves_the_old_file_intact(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"complete old model")
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert target.read_bytes() == b"complete old model"
    assert set(os.listdir(tmp_path)) - {"model.onnx"} <= {f for f in os.listdir(tmp_path) if ".fq-tmp-" in f}


@pytest.mark.slow
def test_kill_9_at_random_points_of_a_quantize_run_never_mixes_runs(tmp_path):
    """20 ``kill -9`` at random times of a run over the outputs of an earlier run: each output file is always
    the complete old one or the complete new one, and all of them come from the same run."""
    case = write_case(tmp_path / "case")
    common = ("quantize", case["model"], "--calib", case["calib"], "--batch-size", "16", "--report", "--no-plots",
              "-q", "--no-latency-check")
    old_args, new_args = (*common, "--act-algo", "hfmg"), (*common, "--act-algo", "ifmr")
    subprocess.run(_cli(*old_args, "--out", tmp_path / "old"), check=True, capture_output=True)
    t0 = time.perf_counter()
    subprocess.run(_cli(*new_args, "--out", tmp_path / "new"), check=True, capture_output=True)
    span = time.perf_counter() - t0
    old, new = _digests(tmp_path / "old"), _digests(tmp_path / "new")
    assert set(old) == set(new) == set(FILES)
    # without the latency check (timings) two runs of the same settings write the same bytes
    subprocess.run(_cli(*old_args, "--out", tmp_path / "out"), check=True, capture_output=True)
    assert _digests(tmp_path / "out") == old
    rng = random.Random(13)
    seen, recovered = set(), 0
    for i in range(20):
        p = subprocess.Popen(_cli(*new_args, "--out", tmp_path / "out"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, span * 1.1))
        p.send_signal(signal.SIGKILL)
        p.wait()
        now = _digests(tmp_path / "out")
        assert all(now[f] in (old[f], new[f]) for f in FILES), f"kill {i}: a file that is neither old nor new"
        from ferroquant.outputs import recover

        recovered += recover(tmp_path / "out")  # what the next run does first (a kill between two renames)
        now = _digests(tmp_path / "out")
        assert now in (old, new), f"kill {i}: a mix of runs: {[f for f in FILES if now.get(f) != old[f]]}"
        seen.add("new" if now == new else "old")
        if now == new:  # start the next kill from the old outputs again
            subprocess.run(_cli(*old_args, "--out", tmp_path / "out"), check=True, capture_output=True)
    onnx.checker.check_model(onnx.load(str(tmp_path / "out" / "model_deploy.onnx")))
    assert "old" in seen


def test_config_output_that_is_the_model_is_refused(tmp_path):
    case = write_case(tmp_path / "case")
    before = case["model"].read_bytes()
    p = subprocess.run(_cli("config", case["model"], "-o", case["model"]), capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("ferroquant: error: ") and "refusing" in p.stderr
    assert case["model"].read_bytes() == before


def test_quantize_out_folder_holding_the_input_is_refused(tmp_path):
    case = write_case(tmp_path / "case")
    out = tmp_path / "out"
    subprocess.run(_cli("quantize", case["model"], "--calib", case["calib"], "--out", out, "--no-report", "-q"),
                   check=True, capture_output=True)
    deploy = out / "model_deploy.onnx"
    before = deploy.read_bytes()
    p = subprocess.run(_cli("quantize", deploy, "--calib", case["calib"], "--out", out, "--no-report", "-q"),
                       capture_output=True, text=True)
    assert p.returncode == 1 and "refusing" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert deploy.read_bytes() == before


@pytest.mark.parametrize("link", ["symlink", "hardlink", "same"])
def test_python_quantize_refuses_its_input_as_output(tmp_path, link):
    case = write_case(tmp_path / "case")
    before = case["model"].read_bytes()
    alias = tmp_path / "alias.onnx"
    if link == "symlink":
        alias.symlink_to(case["model"])
    elif link == "hardlink":
        os.link(case["model"], alias)
    else:
        alias = case["model"]
    with pytest.raises(DataError, match="refusing"):
        fq.quantize(str(case["model"]), feeds(32), str(alias))
    assert case["model"].read_bytes() == before


def test_an_output_folder_that_is_a_file_names_it(tmp_path):
    case = write_case(tmp_path / "case")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        fq.quantize(str(case["model"]), feeds(32), str(tmp_path / "f" / "m.onnx"))
