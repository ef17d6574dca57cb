"""Hessian and GPTQ: native == reference. Hessians agree within float64 rounding; GPTQ codes are identical.

Identical codes need every rounding input ``w / scale`` to be on the same side of a half-integer in both
implementations, whose float64 sums differ in the last bits. The layers here are drawn from continuous
distributions (seeds from hypothesis), so the chance that any of a layer's values lies within ~1e-12 of a
rounding tie is ~1e-9: the test is exact by construction, with no tolerance on codes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from ferroquant import ops, reference
from ferroquant.errors import NonFiniteError, ParameterError, ShapeError


def _layer(seed, k, n, rows, dead=()):
    """A weight and a Hessian from correlated, heavy-tailed inputs; inputs in ``dead`` are always zero."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(4, (rows, k)) @ (np.eye(k) + 0.3 * rng.standard_normal((k, k)))
    x[:, list(dead)] = 0.0
    w = rng.standard_normal((k, n)).astype(np.float32)
    acc = ops.HessianAccumulator(k)
    acc.observe(x.astype(np.float32))
    return w, acc.hessian(), x.astype(np.float32)


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 40), rows=st.integers(1, 1200), split=st.floats(0, 1))
def test_hessian_parity_streaming(seed, k, rows, split):
    x = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32) * 3
    cut = int(rows * split)
    h = np.zeros((k, k))
    for part in (x[:cut], x[cut:]):
        if len(part):
            ops.hessian_update(h, part)
            assert_array_equal(h, h.T)
    want = np.zeros((k, k))
    assert reference.hessian_update(want, x) is want
    assert_allclose(h, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


def test_hessian_accumulator_scale_and_nan_names_the_layer():
    x = np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32)
    acc = ops.HessianAccumulator(8, name="blocks.3.mlp.fc2")
    acc.observe(x)
    x2 = x.reshape(-1, 8).astype(np.float64)
    assert acc.rows == 15
    assert_allclose(acc.hessian(), 2 / 15 * x2.T @ x2, rtol=1e-12)
    before = acc.sum.copy()
    bad = x.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(NonFiniteError, match=r"'blocks.3.mlp.fc2 \(calibration activations\)'.*NaN.*row 7, channel 3"):
        acc.observe(bad)
    assert_array_equal(acc.sum, before) and acc.rows == 15
    with pytest.raises(ShapeError):
        acc.observe(np.ones((2, 7), np.float32))


def _check(w, h, bits, gs, sym, f16, act_order, block):
    spec = ops.GroupSpec(bits, gs, sym, "float16" if f16 else "float32")
    got = ops.gptq(w, h, spec, act_order=act_order, block_size=block)
    want = reference.gptq(w, h, spec, act_order=act_order, block_size=block)
    assert_array_equal(got.quant.codes, want.quant.codes)
    assert_array_equal(got.quant.scale, want.quant.scale)
    assert_array_equal(got.quant.zero_point, want.quant.zero_point)
    assert_array_equal(got.dead, want.dead)
    assert got.damp == want.damp
    if act_order:
        assert_array_equal(got.perm, want.perm)
    return got


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(2, 48), n=st.integers(1, 20), bits=st.integers(2, 8),
       gs=st.integers(1, 50), sym=st.booleans(), f16=st.booleans(), act_order=st.booleans(),
       block=st.sampled_from([1, 3, 8, 128]), n_dead=st.integers(0, 3))
def test_gptq_codes_identical(seed, k, n, bits, gs, sym, f16, act_order, block, n_dead):
    dead = np.random.default_rng(seed).choice(k, min(n_dead, k - 1), replace=False)
    w, h, _ = _layer(seed, k, n, 3 * k, dead)
    r = _check(w, h, bits, gs, sym, f16, act_order, block)
    assert set(r.dead.tolist()) == set(dead.tolist())


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("k,gs", [(96, 32), (100, 32), (160, 128)])
def test_gptq_codes_identical_larger(k, gs, act_order):
    w, h, _ = _layer(k, k, 300, 4 * k, dead=(5, 17))
    r = _check(w, h, 4, gs, False, False, act_order, 64)
    assert_array_equal(r.quant.dequantize()[[5, 17]], 0.0)


def test_identity_hessian_is_rtn_and_block_size_does_not_matter():
    w = np.random.default_rng(2).standard_normal((70, 9)).astype(np.float32)
    spec = ops.GroupSpec(3, 16, False)
    r = ops.gptq(w, np.eye(70), spec, percdamp=0.0)
    rtn = ops.quantize_groupwise(w, spec)
    assert_array_equal(r.quant.codes, rtn.codes)
    w, h, _ = _layer(3, 70, 9, 200)
    codes = [ops.gptq(w, h, spec, act_order=True, block_size=b).quant.codes for b in (1, 7, 16, 128)]
    for c in codes[1:]:
        assert_array_equal(c, codes[0])


def test_gptq_bad_input():
    w, h, _ = _layer(4, 6, 3, 20)
    with pytest.raises(ShapeError):
        ops.gptq(w, h[:5, :5])
    bad = h.copy()
    bad[2, 2] = -1.0
    with pytest.raises(ParameterError, match="negative"):
        ops.gptq(w, bad)
    bad = h.copy()
    bad[0, 1] = bad[1, 0] = 10 * h.max()  # symmetric, not positive definite
    with pytest.raises(ParameterError, match="positive definite"):
        ops.gptq(w, bad, percdamp=0.0)
    with pytest.raises(ParameterError, match="positive definite"):
        reference.gptq(w, bad, percdamp=0.0)
    bad = h.copy()
    bad[3, 4] = np.inf
    with pytest.raises(NonFiniteError):
        ops.gptq(w, bad)
    w2 = w.copy()
    w2[1, 1] = np.nan
    with pytest.raises(NonFiniteError, match="'fc.weight'"):
        ops.gptq(w2, h, name="fc.weight")
    with pytest.raises(ParameterError):
        ops.gptq(w, h, percdamp=-0.1)
