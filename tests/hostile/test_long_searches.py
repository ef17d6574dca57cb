"""Issue 13, item 10: bin counts and long searches. HFMG's search scales (2^20 bins in seconds, not a quarter
of an hour); the entropy search, quadratic, refuses more bins than it can search in about a second; and Ctrl-C
interrupts a running search within about a second instead of being ignored until it returns."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ferroquant.calibrate import HistogramCalibrator
from ferroquant.errors import ParameterError


def test_entropy_refuses_more_bins_than_it_can_search():
    with pytest.raises(ParameterError, match=r"num_of_bins must be a power of two in \[2\^bits = 256, 8192\] for entropy"):
        HistogramCalibrator("act", "entropy", num_of_bins=2**20)
    HistogramCalibrator("act", "hfmg", num_of_bins=2**20)  # HFMG scales


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from ferroquant.calibrate import HistogramCalibrator
    x = np.random.default_rng(0).laplace(size=20_000_000).astype(np.float32)
    c = HistogramCalibrator("act", "hfmg", num_of_bins=2**20, bits=12)
    c.observe(x)
    print("searching", flush=True)
    try:
        c.qparams()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(0)
    print("finished", flush=True)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_interrupts_a_long_search():
    """A 12-bit HFMG search of 2^20 bins of Laplace data takes about 4 s on two cores (uniform data, which took
    a minute before candidates were ranked by their clipped tails first, now takes 0.4 s); a SIGINT half a
    second in ends it."""
    # The child starts with Ctrl-C's default disposition whatever this process has: a SIGINT ignored here (some
    # library of an earlier test in the same pytest run does that) would be inherited across exec and ignored there.
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert p.stdout.readline().strip() == "searching", p.stderr.read()
        time.sleep(0.5)
        t0 = time.perf_counter()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        waited = time.perf_counter() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert out.strip() == "interrupted", (out, err)
    assert waited < 3.0, f"the KeyboardInterrupt came back after {waited:.1f} s"
