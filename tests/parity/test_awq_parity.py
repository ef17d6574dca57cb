"""AWQ, per-channel statistics and the SmoothQuant balancing search: native == reference (the chosen alpha
identical, scales bit-identical, losses within float64 rounding, codes identical on continuous data)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from ferroquant import ops, reference
from ferroquant.errors import BitsError, NonFiniteError, ParameterError, ShapeError


def _data(seed, k, n, rows, outliers=2):
    rng = np.random.default_rng(seed)
    gain = np.ones(k)
    gain[rng.choice(k, min(outliers, k), replace=False)] = 20.0
    x = (rng.standard_t(5, (rows, k)) * gain).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    return w, x


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 40), n=st.integers(1, 12), rows=st.integers(1, 50),
       bits=st.integers(2, 8), gs=st.integers(1, 45), sym=st.booleans(), n_grid=st.integers(1, 20),
       clip=st.sampled_from([None, 20, 6, -20]))
def test_awq_parity(seed, k, n, rows, bits, gs, sym, n_grid, clip):
    w, x = _data(seed, k, n, rows)
    spec = ops.GroupSpec(bits, gs, sym)
    args = (spec, n_grid, None if clip is None else ops.ClipSearch(abs(clip), refine=clip > 0))
    got, want = ops.awq(w, x, *args), reference.awq(w, x, *args)
    assert got.alpha == want.alpha
    assert_array_equal(got.alphas, want.alphas)
    assert_array_equal(got.channel_scale, want.channel_scale)
    assert_allclose(got.losses, want.losses, rtol=1e-9, atol=1e-300)
    assert_array_equal(got.quant.codes, want.quant.codes)
    assert_array_equal(got.quant.scale, want.quant.scale)
    assert_array_equal(got.quant.zero_point, want.quant.zero_point)


def test_awq_layout_and_meaning():
    w, x = _data(7, 96, 40, 64)
    r = ops.awq(w, x, ops.GroupSpec(4, 32, False), clip=None)
    assert r.channel_scale.shape == (96,) and r.quant.scale.shape == (3, 40)
    assert_array_equal(r.alphas, np.arange(20) / 20)
    assert r.losses[int(np.argmin(r.losses))] == r.losses.min() and r.alpha == r.alphas[np.argmin(r.losses)]
    # no clip: the codes are plain RTN of W * s
    ws = w * r.channel_scale[:, None]
    assert_array_equal(r.quant.codes, ops.quantize_groupwise(ws, ops.GroupSpec(4, 32, False)).codes)
    # deployment: (x / s) @ dequant reproduces the chosen loss
    y = (x / r.channel_scale).astype(np.float64) @ r.quant.dequantize().astype(np.float64)
    assert np.mean((x.astype(np.float64) @ w - y) ** 2) == pytest.approx(r.losses.min(), rel=1e-5)


def test_awq_nan_in_activations_names_the_layer():
    w, x = _data(8, 16, 4, 10)
    x[4, 9] = np.inf
    with pytest.raises(NonFiniteError, match=r"'decoder.0.q_proj \(calibration activations\)'.*row 4, channel 9"):
        ops.awq(w, x, ops.GroupSpec(4, 8), name="decoder.0.q_proj")
    with pytest.raises(NonFiniteError):
        reference.awq(w, x, ops.GroupSpec(4, 8))
    with pytest.raises(ShapeError):
        ops.awq(w, x[:, :15])
    with pytest.raises(ParameterError):
        ops.awq(w, np.abs(x).clip(0, 1), n_grid=0)


def reference_part(c, x):
    """The reference's statistics of one batch, updated in place from the empty state."""
    lo, hi, s = np.full(c, np.inf, np.float32), np.full(c, -np.inf, np.float32), np.zeros(c)
    n = reference.channel_stats_update(lo, hi, s, x)
    return lo, hi, s, n


@given(seed=st.integers(0, 2**32 - 1), c=st.integers(1, 30), rows=st.integers(1, 3000), cut=st.floats(0, 1))
def test_channel_stats_parity_and_merge(seed, c, rows, cut):
    x = (np.random.default_rng(seed).standard_normal((rows, c)) * 5).astype(np.float32)
    i = int(rows * cut)
    a, b = ops.ChannelStats(c), ops.ChannelStats(c)
    if i:
        a.observe(x[:i])
    if i < rows:
        b.observe(x[i:].reshape(-1, 1, c))
    a.merge(b)
    lo, hi, s = np.full(c, np.inf, np.float32), np.full(c, -np.inf, np.float32), np.zeros(c)
    parts = [reference_part(c, part) for part in (x[:i], x[i:]) if len(part)]
    for p in parts:
        reference.channel_stats_merge(lo, hi, s, *p[:3])
    assert a.count == sum(p[3] for p in parts) == rows
    assert_array_equal(a.min, lo)
    assert_array_equal(a.max, hi)
    assert_allclose(a.abs_sum, s, rtol=1e-12)
    assert_array_equal(a.absmax, np.abs(x).max(axis=0))


def test_channel_stats_nan_leaves_state():
    st_ = ops.ChannelStats(4, name="ln_2 output")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    st_.observe(x)
    before = st_.state_dict()
    x[2, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"'ln_2 output'.*row 2, channel 1"):
        st_.observe(x)
    after = st_.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in ("min", "max", "abs_sum")) and st_.count == 3


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 30), n=st.integers(1, 10), rows=st.integers(1, 40),
       bits=st.sampled_from([4, 8]), w_bits=st.sampled_from([None, 4, 7, 8]), grid=st.integers(1, 11))
def test_smooth_parity(seed, k, n, rows, bits, w_bits, grid):
    w, x = _data(seed, k, n, rows)
    act = np.abs(x).max(axis=0)
    alphas = [i / max(grid - 1, 1) for i in range(grid)]
    got = ops.smooth_search(act, w, x, alphas, bits, w_bits=w_bits)
    want = reference.smooth_search(act, w, x, alphas, bits, w_bits=w_bits)
    assert got.alpha == want.alpha
    assert_array_equal(got.channel_scale, want.channel_scale)
    assert_allclose(got.losses, want.losses, rtol=1e-9, atol=1e-300)
    assert got.loss_unbalanced == pytest.approx(want.loss_unbalanced, rel=1e-9, abs=1e-300)


def test_smooth_balancing_helps_an_outlier_layer():
    w, x = _data(9, 64, 32, 256, outliers=3)
    stats = ops.ChannelStats(64)
    stats.observe(x)
    r = ops.smooth_search(stats.absmax, w, x)
    assert 0 < r.alpha <= 1 and r.losses.min() < 0.5 * r.loss_unbalanced
    with pytest.raises(ParameterError):
        ops.smooth_search(stats.absmax, w, x, alphas=[1.2])
    with pytest.raises(ParameterError):
        ops.smooth_search(-stats.absmax, w, x)


def test_smooth_search_weighs_the_weight_bits_it_is_given():
    # 7-bit weights (what onnxruntime's kernels take on CPUs without VNNI): the unbalanced and the best errors
    # grow; w_bits=8 is the default's search exactly
    w, x = _data(9, 64, 32, 256, outliers=3)
    act = np.abs(x).max(axis=0)
    r8, r7 = ops.smooth_search(act, w, x), ops.smooth_search(act, w, x, w_bits=7)
    assert r7.losses.min() > r8.losses.min() and r7.loss_unbalanced > r8.loss_unbalanced
    assert ops.smooth_search(act, w, x, w_bits=8).losses.tolist() == r8.losses.tolist()


def test_awq_refined_clip_lowers_the_output_error_of_every_column():
    """AWQ's clip search by output error, refined per bound: per group and column at most the joint search's
    error (it starts there and keeps strict improvements), and lower in total on outlier-laden inputs."""
    w, x = _data(11, 64, 48, 400, outliers=4)
    spec = ops.GroupSpec(4, 32, False)
    joint, refined = (ops.awq(w, x, spec, clip=ops.ClipSearch(refine=r)) for r in (False, True))
    assert joint.alpha == refined.alpha  # the scales come first and do not depend on the clip

    def err(r):  # per group and column: ||x_g (w_g s - deq_g)||^2 with the AWQ-scaled inputs
        ws = w * r.channel_scale[:, None]
        xs = x.astype(np.float64) / r.channel_scale.astype(np.float64)
        d = (ws - r.quant.dequantize()).astype(np.float64)
        return np.stack([((xs[:, g:g + 32] @ d[g:g + 32]) ** 2).sum(0) for g in (0, 32)])

    assert np.all(err(refined) <= err(joint) * (1 + 1e-12)) and err(refined).sum() < 0.99 * err(joint).sum()


def test_bad_weight_bits_and_refine_flags_are_clear_errors():
    w, x = _data(3, 8, 4, 16)
    act = np.abs(x).max(axis=0)
    for f in (ops.smooth_search, reference.smooth_search):
        with pytest.raises(BitsError, match="got 1"):
            f(act, w, x, w_bits=1)
    with pytest.raises(ParameterError, match="refine must be a bool"):
        ops.ClipSearch(refine="yes")
    from ferroquant.config import WeightOnlyConfig
    from ferroquant.errors import ConfigError

    with pytest.raises(ConfigError, match="clip_refine"):
        WeightOnlyConfig(clip_refine=1)
