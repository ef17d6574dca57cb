"""Same result with one thread and with all threads (spec decision 9)."""

import numpy as np
from numpy.testing import assert_array_equal

from ferroquant import ops


def _run_all(x, w):
    s, z = ops.qparams_from_data(x, None, 8, False)
    a = ops.arq(w, bits=6)
    n = ops.nuq(w, 16, 2)
    return [ops.quantize(x, s, z), ops.fake_quant(x, s, z), a.scale, a.codes, a.fake, n.levels, n.codes, n.fake,
            np.array([n.mse])]


def test_thread_count_does_not_change_results():
    rng = np.random.default_rng(11)
    x = rng.standard_normal(1_000_003).astype(np.float32) * 4
    w = rng.laplace(size=(128, 2304)).astype(np.float32)
    before = ops.get_num_threads()
    try:
        ops.set_num_threads(1)
        assert ops.get_num_threads() == 1
        one = _run_all(x, w)
        ops.set_num_threads(4)
        assert ops.get_num_threads() == 4
        many = _run_all(x, w)
    finally:
        ops.set_num_threads(0)
    assert ops.get_num_threads() == before
    for a, b in zip(one, many):
        assert_array_equal(a, b)
