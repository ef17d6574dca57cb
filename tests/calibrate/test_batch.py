"""observe_all / search_all (issue 16, item 2): many tensors in one native call each way, with exactly the
results of observing and searching one calibrator at a time, whatever the thread count."""

import numpy as np
import pytest

from ferroquant import ops
from ferroquant.calibrate import HistogramCalibrator, IFMRCalibrator, make_calibrator, observe_all, search_all
from ferroquant.errors import DataError, EmptyInputError, NonFiniteError


def _calibrators(backend="native"):
    return {
        "a": HistogramCalibrator("a", "hfmg", backend=backend),
        "b": HistogramCalibrator("b", "hfmg", num_of_bins=1024, bits=4, symmetric=True, backend=backend),
        "c": HistogramCalibrator("c", "hfmg", refine=False, backend=backend),
        "d": make_calibrator("percentile", "d", backend=backend),
        "e": make_calibrator("entropy", "e", num_of_bins=2048, backend=backend),
        "f": IFMRCalibrator("f", backend=backend),
        "g": IFMRCalibrator("g", mode="histogram", backend=backend),
        "h": HistogramCalibrator("h", "hfmg", nonfinite="drop", backend=backend),
        "i": HistogramCalibrator("i", "hfmg", backend=backend),
        "j": IFMRCalibrator("j", bits=4, symmetric=True, backend=backend),
    }


def _stream(n=3, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        out = {}
        for i, k in enumerate("abcdefghij"):
            x = rng.standard_t(3 + i, (2, 8, 20, 20)).astype(np.float32) * (1 + i)
            out[k] = np.maximum(x, 0) if k in "cij" else x
        out["h"][0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
        yield out


def _one_by_one(backend="native"):
    cals = _calibrators(backend)
    for batch in _stream():
        for k, x in batch.items():
            cals[k].observe(x)
    return cals, {k: c.qparams() for k, c in cals.items()}


def _batched(backend="native"):
    cals = _calibrators(backend)
    for batch in _stream():
        observe_all(cals, batch)
    return cals, search_all(cals)


def _same_states(a, b):
    for k in a:
        sa, sb = a[k].state_dict(), b[k].state_dict()
        assert sa.keys() == sb.keys()
        for f in sa:
            if isinstance(sa[f], np.ndarray):
                np.testing.assert_array_equal(sa[f], sb[f])
            else:
                assert sa[f] == sb[f], (k, f)


def test_batched_equals_one_by_one():
    c1, r1 = _one_by_one()
    c2, r2 = _batched()
    _same_states(c1, c2)
    assert r1 == r2
    assert list(r2) == list(c2)  # in the calibrators' order


def test_batched_on_the_reference_backend():
    c1, r1 = _one_by_one("reference")
    c2, r2 = _batched("reference")
    _same_states(c1, c2)
    assert r1 == r2


def test_thread_count_does_not_change_batched_results():
    try:
        ops.set_num_threads(1)
        one = _batched()
        ops.set_num_threads(4)
        four = _batched()
    finally:
        ops.set_num_threads(0)
    _same_states(one[0], four[0])
    assert one[1] == four[1]


def test_native_batch_calls_equal_single_calls():
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(n).astype(np.float32) * s for n, s in [(10, 1.0), (100_000, 3.0), (700_000, 0.1)]]
    hs = ops.histogram_observe_many([None] * 3, xs, 2048)
    assert hs == [ops.histogram_observe(None, x, 2048) for x in xs]
    more = ops.histogram_observe_many(hs, [x[::-1] * 2 for x in xs], 2048)
    assert more == [ops.histogram_observe(h, x[::-1] * 2) for h, x in zip(hs, xs)]
    for kw in ({}, {"bits": 4, "symmetric": True}, {"refine": False}):
        assert ops.hfmg_search_many(more, **kw) == [ops.hfmg_search(h, **kw) for h in more]
    options = [ops.IfmrOptions(), ops.IfmrOptions(bits=4, symmetric=True), ops.IfmrOptions(search_2d=True)]
    zeros = [0, 7, 1000]
    assert ops.ifmr_many(xs, options, zeros) == [ops.ifmr(x, o, z) for x, o, z in zip(xs, options, zeros)]


def test_exact_ifmr_searches_in_one_call_name_the_empty_tensor():
    cals = {"p": IFMRCalibrator("p"), "q": IFMRCalibrator("q")}
    cals["p"].observe(np.ones(10, np.float32))
    with pytest.raises(EmptyInputError, match="'q'"):
        search_all(cals)
    with pytest.raises(ValueError, match="2 arrays, 1 options and 2 zero counts"):
        ops.ifmr_many([np.ones(3, np.float32)] * 2, [ops.IfmrOptions()], [0, 0])


def test_errors_name_the_tensor():
    cals = _calibrators()
    bad = next(_stream())
    bad["b"][0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="'b'"):
        observe_all(cals, bad)
    with pytest.raises(DataError, match="'z'"):
        observe_all(cals, {"z": np.ones(3, np.float32)})
    with pytest.raises(EmptyInputError, match="'a'"):
        search_all(_calibrators())
