"""Group-wise RTN: native == reference bit for bit (codes, scales, zero points), with group sizes that do not
divide K, all-zero / constant / huge / tie-laden groups, float16 scales and the MSE clip search."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from ferroquant import ops, reference
from ferroquant.errors import NonFiniteError, ParameterError, ScaleError, ShapeError
from tests.strategies import both, float_arrays


def _args(bits, gs, sym, f16, clip):
    """``clip``: None, or the grid (its sign: refined, negative: the joint search alone)."""
    spec = ops.GroupSpec(bits, gs, sym, "float16" if f16 else "float32")
    return spec, ops.ClipSearch(abs(clip), 0.5, clip > 0) if clip else None


def _native(w, bits, gs, sym, f16, clip):
    return ops.quantize_groupwise(w, *_args(bits, gs, sym, f16, clip))


def _ref(w, bits, gs, sym, f16, clip):
    return reference.quantize_groupwise(w, *_args(bits, gs, sym, f16, clip))


def _same(a, b):
    assert_array_equal(a.codes, b.codes)
    assert a.scale.dtype == b.scale.dtype
    assert_array_equal(a.scale, b.scale)
    assert_array_equal(a.zero_point, b.zero_point)


@given(w=float_arrays(min_dims=2, max_dims=2, max_side=40), bits=st.integers(2, 8), gs=st.integers(1, 45),
       sym=st.booleans(), f16=st.booleans(), clip=st.sampled_from([None, 20, 7, -20]))
def test_rtn_parity(w, bits, gs, sym, f16, clip):
    got, want = both(lambda: _native(w, bits, gs, sym, f16, clip), lambda: _ref(w, bits, gs, sym, f16, clip))
    if want is None:
        return
    _same(got, want)
    assert got.scale.shape == (-(-w.shape[0] // gs), w.shape[1])
    assert got.codes.max() <= (1 << bits) - 1
    assert_array_equal(got.dequantize(), reference.dequantize_groupwise(want))


@pytest.mark.parametrize("k,gs", [(100, 32), (130, 64), (7, 128), (256, 128)])
@pytest.mark.parametrize("sym", [True, False])
def test_rtn_parity_gaussian_ragged(k, gs, sym):
    w = np.random.default_rng(k).standard_normal((k, 300)).astype(np.float32)
    for clip in (None, 20, -20):
        _same(_native(w, 4, gs, sym, False, clip), _ref(w, 4, gs, sym, False, clip))


@pytest.mark.parametrize("seed", range(4))
def test_refining_each_bound_never_loses_and_helps_skewed_groups(seed):
    """The refined search starts from the joint one and keeps strict improvements: per group and column its
    squared weight error is at most the joint search's, and on groups with one long tail it is smaller."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((256, 64)).astype(np.float32)
    tail = rng.random(w.shape) < 0.02
    w[tail] = np.abs(w[tail]) * 6  # rare large positive values: a long upper tail, a short lower one
    spec = ops.GroupSpec(4, 32, False)
    err = lambda q: ((q.dequantize() - w).astype(np.float64) ** 2).reshape(8, 32, 64).sum(1)  # noqa: E731
    joint, refined = (ops.quantize_groupwise(w, spec, ops.ClipSearch(refine=r)) for r in (False, True))
    assert np.all(err(refined) <= err(joint)) and err(refined).sum() < 0.99 * err(joint).sum()  # 0.98 here
    # symmetric groups have one bound: nothing to refine
    sym = ops.GroupSpec(4, 32, True)
    _same(*(ops.quantize_groupwise(w, sym, ops.ClipSearch(refine=r)) for r in (True, False)))


def test_all_zero_and_constant_groups():
    w = np.zeros((10, 3), np.float32)
    w[4:8, 1] = 2.5  # group 1 of column 1 is constant
    for sym, zp0 in ((True, 8), (False, 0)):
        q = ops.quantize_groupwise(w, ops.GroupSpec(4, 4, sym), ops.ClipSearch())
        assert q.scale[0, 0] == 1.0 and q.zero_point[0, 0] == zp0 and np.all(q.codes[:4, 0] == zp0)
        assert_array_equal(q.dequantize()[:, [0, 2]], 0.0)
        assert_array_equal(q.dequantize()[4:8, 1], 2.5)


def test_symmetric_uses_the_127_128_rule_and_signed_codes():
    w = np.array([[-1.0], [3.5], [0.5], [-0.5]], np.float32)
    q = ops.quantize_groupwise(w, ops.GroupSpec(4, 4, True))
    assert q.scale[0, 0] == 0.5 and q.zero_point[0, 0] == 8
    assert_array_equal(q.codes[:, 0], [6, 15, 9, 7])
    assert_array_equal(q.signed_codes()[:, 0], [-2, 7, 1, -1])
    q = ops.quantize_groupwise(-w, ops.GroupSpec(4, 4, True))
    assert q.scale[0, 0] == np.float32(3.5 / 8) and q.codes[1, 0] == 0


def test_float16_scales_are_rounded_before_the_codes():
    w = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32) * 0.013
    q = ops.quantize_groupwise(w, ops.GroupSpec(4, 32, False, "float16"))
    assert q.scale.dtype == np.float16
    rows = np.arange(64) // 32
    want = np.clip(np.rint(w / q.scale.astype(np.float32)[rows]) + q.zero_point[rows], 0, 15)
    assert_array_equal(q.codes, want)
    with pytest.raises(ScaleError):
        ops.quantize_groupwise(np.full((4, 1), 1e7, np.float32), ops.GroupSpec(8, 4, True, "float16"))


def test_clip_search_never_worse_than_min_max():
    w = np.random.default_rng(5).standard_normal((256, 64)).astype(np.float32)
    for sym in (True, False):
        plain = ops.quantize_groupwise(w, ops.GroupSpec(4, 32, sym))
        clip = ops.quantize_groupwise(w, ops.GroupSpec(4, 32, sym), ops.ClipSearch())
        e = lambda q: ((q.dequantize().astype(np.float64) - w).reshape(8, 32, 64) ** 2).sum(axis=1)
        assert np.all(e(clip) <= e(plain))
        assert e(clip).sum() < e(plain).sum()


def test_bad_input_names_the_tensor():
    w = np.ones((8, 4), np.float32)
    w[5, 2] = np.nan
    with pytest.raises(NonFiniteError, match="'layers.0.fc1.weight'.*flat index 22"):
        ops.quantize_groupwise(w, name="layers.0.fc1.weight")
    with pytest.raises(ShapeError):
        ops.quantize_groupwise(np.ones(8, np.float32))
    for bad in (dict(bits=1), dict(bits=9), dict(group_size=0), dict(scale_dtype="bfloat16")):
        with pytest.raises(ParameterError):
            ops.GroupSpec(**bad)
    with pytest.raises(ParameterError):
        ops.ClipSearch(max_shrink=1.0)
