"""ARQ native == reference, and the layouts of Conv, Gemm and (grouped) ConvTranspose weights."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from ferroquant import ops, reference
from ferroquant.errors import QuantError
from tests.strategies import array_and_axis


@given(xa=array_and_axis(), bits=st.integers(2, 16), sym=st.booleans())
def test_arq_parity(xa, bits, sym):
    w, axis = xa
    try:
        want = reference.arq(w, channel_wise=axis is not None, axis=axis if axis is not None else 0, bits=bits,
                             symmetric=sym)
        s, z, q, f = want.scale, want.zero_point, want.codes, want.fake
    except QuantError as e:
        try:
            ops.arq(w, channel_wise=axis is not None, axis=axis or 0, bits=bits, symmetric=sym)
        except type(e):
            return
        raise AssertionError(f"native accepted what the reference rejected: {e}")
    r = ops.arq(w, channel_wise=axis is not None, axis=axis if axis is not None else 0, bits=bits, symmetric=sym)
    assert_array_equal(r.scale, s)
    assert_array_equal(r.zero_point, z)
    assert_array_equal(r.codes, q)
    assert_array_equal(r.fake, f)


def test_per_channel_extremes_are_exact():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    r = ops.arq(w)
    flat = w.reshape(16, -1)
    for c in range(16):
        a = flat[c, np.argmax(np.abs(flat[c]))]
        code = 127 if a > 0 else -128
        assert r.fake.reshape(16, -1)[c, np.argmax(np.abs(flat[c]))] == np.float32(a)
        assert code in r.codes.reshape(16, -1)[c]


def test_all_zero_channel_and_negative_only():
    w = np.zeros((3, 5), np.float32)
    w[1] = -np.linspace(0.1, 2.0, 5)
    r = ops.arq(w)
    assert r.scale[0] == 1.0 and r.scale[2] == 1.0 and np.all(r.codes[0] == 0)
    assert r.scale[1] == np.float32(2.0) / np.float32(128)
    assert r.codes[1, -1] == -128


def test_conv_transpose_grouped_axis():
    """ConvTranspose weight [C_in, C_out/g, kh, kw]: output channel gi*(C_out/g)+j; scales follow it."""
    rng = np.random.default_rng(3)
    g, cin, cog = 2, 4, 3
    w = rng.standard_normal((cin, cog, 2, 2)).astype(np.float32)
    # make each output channel's range distinctive
    for gi in range(g):
        for j in range(cog):
            w[gi * (cin // g) : (gi + 1) * (cin // g), j] *= 1 + gi * cog + j
    r = ops.arq(w, axis=1, groups=g)
    assert r.scale.shape == (g * cog,)
    for gi in range(g):
        for j in range(cog):
            block = w[gi * (cin // g) : (gi + 1) * (cin // g), j]
            assert r.scale[gi * cog + j] == reference.qparams_from_range(block.min(), block.max()).scale
            fq = r.fake[gi * (cin // g) : (gi + 1) * (cin // g), j]
            assert_array_equal(fq, reference.fake_quant(block, r.scale[gi * cog + j], 0))
    ref = reference.arq(w, axis=1, groups=g)  # the twin takes the same layout
    assert_array_equal(ref.codes, r.codes)
    assert_array_equal(ref.scale, r.scale)
    # groups=1 ConvTranspose is plain axis 1
    r1 = ops.arq(w, axis=1)
    assert r1.scale.shape == (cog,)


def test_per_tensor_and_4_bit():
    w = np.linspace(-1, 3, 64, dtype=np.float32).reshape(8, 8)
    r = ops.arq(w, channel_wise=False, bits=4)
    assert r.scale.shape == (1,) and r.scale[0] == np.float32(3) / np.float32(7)
    assert r.codes.min() >= -8 and r.codes.max() <= 7
