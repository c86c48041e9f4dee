"""Tests of refquant.formats.ggml (Q8_0, Q4_0, Q4_1).

Oracles, in order of independence:
1. hand calculations (the expected codes/bytes are worked out in the comments);
2. a scalar oracle in this file: one value at a time in Python floats, each float32 operation
   emulated by rounding the exact double result to binary32 with ``struct`` (for +, -, *, / of
   float32 operands, rounding the double result to float32 equals rounding the exact result:
   double rounding is innocuous when 53 >= 2*24 + 2), ``roundf`` and truncation on Fractions;
3. the ``gguf`` package's own quantizers (``gguf.quants``), bit for bit.
"""

import functools
import math
import struct
from fractions import Fraction

import gguf
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refquant.formats import ggml
import ggml_oracle
from refquant.testing import STRESS_KINDS, assert_ggml_equal, stress_tensor

FORMATS = ("Q8_0", "Q4_0", "Q4_1")
GGUF_TYPE = {f: getattr(gguf.GGMLQuantizationType, f) for f in FORMATS}


# --- scalar oracle ------------------------------------------------------------------------------

def f32(v: float) -> float:
    """Round a Python float to the nearest float32 (ties to even), as a Python float; inf on
    overflow (struct raises only when the rounded value would be infinite)."""
    try:
        return struct.unpack("<f", struct.pack("<f", v))[0]
    except OverflowError:
        return math.copysign(math.inf, v)


def recip(d: float) -> float:
    """id = 1/d in float32; 0 where d == 0 (the C reference) or 1/d overflows (refquant's rule,
    see the module docstring of refquant.formats.ggml)."""
    if d == 0:
        return 0.0
    inv = f32(1.0 / d)
    return 0.0 if math.isinf(inv) else inv


def f16_bits(v: float) -> bytes:
    return struct.pack("<e", v)


def roundf(v: float) -> int:
    a = Fraction(abs(v))
    whole = math.floor(a)
    q = whole + (1 if a - whole >= Fraction(1, 2) else 0)
    return q if v >= 0 else -q


def oracle_block(xs: list, fmt: str) -> bytes:
    """The GGUF bytes of one block of 32 float32 values, one value at a time."""
    xs = [f32(v) for v in xs]
    if fmt == "Q8_0":
        amax = max(abs(v) for v in xs)
        d = f32(amax / 127)
        inv = recip(d)
        q = [roundf(f32(v * inv)) for v in xs]
        return f16_bits(d) + bytes((c & 0xFF) for c in q)
    if fmt == "Q4_0":
        amax, vmax = 0.0, 0.0
        for v in xs:                                   # first largest |x|, strict '<' as in C
            if amax < abs(v):
                amax, vmax = abs(v), v
        if amax == 0:
            vmax = 0.0                                 # C: max = 0.0f, d = -0.0
        d = f32(vmax / -8)
        inv = recip(d)
        q = [min(15, math.trunc(f32(f32(v * inv) + 8.5))) for v in xs]
        return f16_bits(d) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    lo, hi = min(xs), max(xs)
    d = f32(f32(hi - lo) / 15)
    inv = recip(d)
    q = [min(15, math.trunc(f32(f32(f32(v - lo) * inv) + 0.5))) for v in xs]
    return f16_bits(d) + f16_bits(lo) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))


def oracle(x: np.ndarray, fmt: str) -> np.ndarray:
    rows = x.reshape(-1, x.shape[-1])
    out = [b"".join(oracle_block(r[i:i + 32].tolist(), fmt) for i in range(0, len(r), 32))
           for r in rows]
    return np.frombuffer(b"".join(out), np.uint8).reshape(x.shape[:-1] + (-1,))


# --- hand-calculated cases ----------------------------------------------------------------------

def test_bits_per_weight_and_block_bytes():
    # Q8_0: 2 + 32 bytes; Q4_0: 2 + 16; Q4_1: 2 + 2 + 16, per 32 weights
    assert [ggml.block_bytes(f) for f in FORMATS] == [34, 18, 20]
    assert [ggml.bits_per_weight(f) for f in FORMATS] == [8.5, 4.5, 5.0]


def test_q8_0_hand_case_roundf():
    # amax = 127 -> d = 1 (float16 0x3C00), id = 1: codes = roundf(x), ties away from zero.
    x = np.zeros(32, np.float32)
    x[:6] = [127.0, -2.5, 2.5, -0.5, np.float32(0.5) - np.float32(2**-25), 1.5]
    b = ggml.quantize_q8_0(x)
    assert b[:2].tolist() == [0x00, 0x3C]
    assert b[2:8].view(np.int8).tolist() == [127, -3, 3, -1, 0, 2]


def test_q4_0_hand_case_ties_go_up_and_double_rounding():
    # max |x| = 8 at x = -8 -> d = -8 / -8 = 1, id = 1; code = trunc(x + 8.5) (x >= -8):
    #   -2.5 -> trunc(6.0) = 6 (value -2: the tie goes UP, roundf would give -3)
    #    2.5 -> trunc(11.0) = 11 (value 3)
    #   0.49999997 (= 0.5 - 2**-25) -> 8.99999997 rounds to 9.0 in float32 -> 9 (value 1,
    #   although the nearest integer is 0)
    x = np.zeros(32, np.float32)
    x[:4] = [-8.0, -2.5, 2.5, np.float32(0.5) - np.float32(2**-25)]
    blk = ggml.quantize_blocks(x, "Q4_0")
    assert float(blk.d[0]) == 1.0
    assert blk.q[0, :4].tolist() == [0, 6, 11, 9]
    assert blk.q[0, 4:].tolist() == [8] * 28                       # zeros -> trunc(8.5) = 8
    b = ggml.quantize_q4_0(x)
    # byte j = code j (low nibble) | code j+16 (high nibble); codes 16..31 are all 8
    assert b[:2].tolist() == [0x00, 0x3C]
    assert b[2:6].tolist() == [0x80, 0x86, 0x8B, 0x89]
    assert ggml.dequantize_q4_0(b)[:4].tolist() == [-8.0, -2.0, 3.0, 1.0]


def test_q4_0_scale_takes_sign_of_signed_max():
    # largest |x| is +4 -> d = 4 / -8 = -0.5 (negative), its code is 0 (value -8 d = 4)
    x = np.linspace(-1, 1, 32).astype(np.float32)
    x[7] = 4.0
    blk = ggml.quantize_blocks(x, "Q4_0")
    assert float(blk.d[0]) == -0.5 and blk.q[0, 7] == 0
    # -4 and +4 share the largest magnitude: the first one wins (C loop with a strict '<')
    x[3] = -4.0
    blk = ggml.quantize_blocks(x, "Q4_0")
    assert float(blk.d[0]) == 0.5 and blk.q[0, 3] == 0 and blk.q[0, 7] == 15


def test_q4_1_hand_case_double_rounding():
    # min 0, max 15 -> d = 1, m = 0; code = trunc((x - 0) * 1 + 0.5):
    #   2.5 -> 3;  0.49999997 + 0.5 = 1 - 2**-25, a float32 tie between 1 - 2**-24 (odd) and 1.0
    #   (even) -> 1.0 -> code 1
    x = np.zeros(32, np.float32)
    x[:4] = [15.0, 2.5, np.float32(0.5) - np.float32(2**-25), 7.0]
    blk = ggml.quantize_blocks(x, "Q4_1")
    assert float(blk.d[0]) == 1.0 and float(blk.m[0]) == 0.0
    assert blk.q[0, :4].tolist() == [15, 3, 1, 7]
    b = ggml.quantize_q4_1(x)
    assert b[:4].tolist() == [0x00, 0x3C, 0x00, 0x00]


def test_all_zero_blocks():
    x = np.zeros((2, 32), np.float32)
    x[1, 0] = -0.0
    for fmt in FORMATS:
        assert np.array_equal(ggml.dequantize(ggml.quantize(x, fmt), fmt), x)
    # Q4_0 (hand calculation, ggml's C): max = 0.0f is never replaced, d = +0.0 / -8 = -0.0
    # (float16 bits 0x8000) whatever the sign of x[0]; codes all 8
    b = ggml.quantize_q4_0(x)
    assert b[0, :2].tolist() == [0x00, 0x80] and b[1, :2].tolist() == [0x00, 0x80]
    assert (b[:, 2:] == 0x88).all()
    # Q4_1: m = the first smallest value (C's strict '<' loop): +0.0 in row 0, -0.0 in row 1
    # (float16 bits 0x8000 in bytes 2-3); d = m_max - m_min = +0.0; codes 0
    b1 = ggml.quantize_q4_1(x)
    assert b1[0].tolist() == [0] * 20 and b1[1, :4].tolist() == [0, 0, 0, 0x80]
    assert (b1[1, 4:] == 0).all() and (ggml.quantize_q8_0(x) == 0).all()


def test_fields_roundtrip_through_bytes():
    x = stress_tensor("heavy_tail", (3, 128), seed=1)
    for fmt in FORMATS:
        blk = ggml.quantize_blocks(x, fmt)
        back = ggml.unpack_blocks(ggml.pack_blocks(blk), fmt)
        assert np.array_equal(back.q, blk.q) and np.array_equal(back.d.view(np.uint16), blk.d.view(np.uint16))
        assert blk.q.shape == (3, 4, 32) and blk.d.shape == (3, 4)


# --- the scalar oracle and gguf ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_matches_scalar_oracle(fmt, kind):
    x = stress_tensor(kind, (3, 64), seed=11)
    assert_ggml_equal(ggml.quantize(x, fmt), oracle(x, fmt), fmt, x=x)


@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_scalar_oracle_near_ties(fmt):
    # values k/2 and their float32 neighbours: exact ties and the values one ulp either side
    rng = np.random.default_rng(5)
    k = rng.integers(-16, 17, (4, 64)).astype(np.float32) / 2
    x = np.where(rng.random(k.shape) < 0.5, np.nextafter(k, np.float32(np.inf)), k)
    x = np.where(rng.random(k.shape) < 0.3, np.nextafter(k, np.float32(-np.inf)), x)
    x[:, ::32] = 8.0                                               # scale 8/127, 1, 16/15
    assert_ggml_equal(ggml.quantize(x, fmt), oracle(x, fmt), fmt, x=x)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_matches_gguf(fmt, kind):
    x = stress_tensor(kind, (16, 256), seed=3)
    # "subnormal" has Q8_0 blocks whose 1/d overflows: gguf then casts NaN to int8, which gives
    # 0 on x86-64 and aarch64 -- the code refquant writes by rule (see test below)
    with np.errstate(all="ignore"):
        ref = gguf.quants.quantize(x, GGUF_TYPE[fmt])
    ours = ggml.quantize(x, fmt)
    if kind == "signed_zeros" and fmt != "Q8_0":
        # the one known difference between gguf's port and ggml's C (which refquant follows,
        # test_bytes_equal_ggml_c_quantizer): the sign of a zero scale or minimum (C keeps the
        # first extreme its strict-comparison loop meets; gguf takes np.min / x[argmax]). Only
        # the sign bit of a float16 zero header field may differ; codes are identical.
        nb = ggml.block_bytes(fmt)
        hdr = 2 if fmt == "Q4_0" else 4
        a, e = ours.reshape(-1, nb), ref.reshape(-1, nb)
        assert np.array_equal(a[:, hdr:], e[:, hdr:])
        fa = a[:, :hdr].copy().view("<f2")
        fe = e[:, :hdr].copy().view("<f2")
        assert np.array_equal(fa, fe)                      # equal as numbers (+0 == -0)
        sign_only = np.signbit(fa) != np.signbit(fe)
        assert np.all(fa[sign_only] == 0) and sign_only.any()
        return
    assert_ggml_equal(ours, ref, fmt, x=x)
    assert np.array_equal(ggml.dequantize(ref, fmt), gguf.quants.dequantize(ref, GGUF_TYPE[fmt]))


@settings(max_examples=40)
@given(fmt=st.sampled_from(FORMATS), seed=st.integers(0, 2**31), scale_exp=st.integers(-20, 12))
def test_matches_gguf_property(fmt, seed, scale_exp):
    x = (stress_tensor("normal", (2, 96), seed) * np.float32(2.0**scale_exp)).astype(np.float32)
    assert_ggml_equal(ggml.quantize(x, fmt), gguf.quants.quantize(x, GGUF_TYPE[fmt]), fmt, x=x)


def test_subnormal_float16_scale_matches_gguf():
    # max |x| = 1e-6 -> Q8_0 d ~ 7.9e-9 is below float16's smallest subnormal/2 -> stored 0;
    # 1e-3 -> d ~ 7.9e-6, a float16 subnormal
    for amax in (1e-6, 1e-3):
        x = np.linspace(-amax, amax, 64, dtype=np.float32).reshape(2, 32)
        for fmt in FORMATS:
            assert_ggml_equal(ggml.quantize(x, fmt), gguf.quants.quantize(x, GGUF_TYPE[fmt]), fmt, x=x)


def test_reciprocal_overflow_block_is_treated_as_zero_scale():
    # all |x| ~ 1e-39 (float32 subnormals): d = max/127 ~ 8e-42, 1/d overflows float32. refquant
    # uses id = 0 (codes 0, or 8 for Q4_0); the stored float16 d is 0 either way, so the
    # dequantized block is all zeros, as gguf's (whose codes come from casting inf/NaN).
    x = np.full((1, 32), 1e-39, np.float32)
    x[0, ::2] = -1e-39
    for fmt, code in (("Q8_0", 0), ("Q4_0", 8), ("Q4_1", 0)):
        blk = ggml.quantize_blocks(x, fmt)
        assert (blk.q == code).all() and float(blk.d[0, 0]) == 0.0
        with np.errstate(all="ignore"):
            ref = gguf.quants.quantize(x, GGUF_TYPE[fmt])
        assert np.array_equal(ggml.dequantize(ggml.quantize(x, fmt), fmt),
                              gguf.quants.dequantize(ref, GGUF_TYPE[fmt]))


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_input_raises(fmt):
    with pytest.raises(ValueError, match="multiple of 32"):
        ggml.quantize(np.zeros((2, 48), np.float32), fmt)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ggml.quantize(np.full((1, 32), np.nan, np.float32), fmt)
    with pytest.raises(ValueError, match="overflows float32"):
        ggml.quantize(np.full((1, 32), 1e39), fmt)
    with pytest.raises(ValueError, match="overflows float16"):
        ggml.quantize(np.full((1, 32), 3e6, np.float32) * np.arange(32, dtype=np.float32), fmt)
    with pytest.raises(ValueError, match="uint8"):
        ggml.dequantize(np.zeros((1, ggml.block_bytes(fmt)), np.int8), fmt)
    with pytest.raises(ValueError, match="multiple of"):
        ggml.dequantize(np.zeros((1, ggml.block_bytes(fmt) + 1), np.uint8), fmt)
    with pytest.raises(ValueError, match="unknown GGML block format"):
        ggml.quantize(np.zeros((1, 32)), "Q7_0")                  # no such GGML type


def test_q4_1_minimum_overflow_raises():
    # range 0 .. small, but the block minimum -70000 does not fit float16
    x = np.full((1, 32), -70000.0, np.float32)
    with pytest.raises(ValueError, match="m \\(block minimum\\).*overflows float16"):
        ggml.quantize_q4_1(x)


@pytest.mark.skipif(not ggml_oracle.available(), reason="libggml-python (test extra) missing")
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_bytes_equal_ggml_c_quantizer(fmt, kind):
    """Oracle: ggml's own C quantizer (ggml_quantize_chunk of libggml-python through ctypes,
    tests/ggml_oracle.py), and ggml's C decoder for the dequantized values."""
    x = stress_tensor(kind, (8, 256), seed=11)
    expected = ggml_oracle.quantize(x, fmt)
    got = ggml.quantize(x, fmt)
    assert_ggml_equal(got, expected, fmt, x=x)
    np.testing.assert_array_equal(ggml.dequantize(got, fmt), ggml_oracle.dequantize(expected, fmt, 256))


# --- the importance-matrix quantizers (quantize_row_q4_0_impl / _q4_1_impl) ------------------

needs_ggml = ggml_oracle.needs_ggml


def imatrices(K, seed):
    return ggml_oracle.imatrices(K, seed, with_none=False, zero_first_block=True)


def check_imatrix_equal_c(x, fmt, imatrix):
    """refquant's bytes with ``imatrix`` equal ggml's C (ggml_quantize_chunk), and so do the
    decoded values (ggml's dequantize_row_*)."""
    expected = ggml_oracle.quantize(x, fmt, imatrix)
    got = ggml.quantize(x, fmt, imatrix)
    assert_ggml_equal(got, expected, fmt, x=x)
    np.testing.assert_array_equal(ggml.dequantize(got, fmt),
                                  ggml_oracle.dequantize(expected, fmt, x.shape[-1]))


def test_registry_says_which_types_read_the_imatrix():
    """Oracle: ggml-quants.c, where quantize_q4_0/_q4_1 pass quant_weights on to their _impl
    and quantize_q8_0 discards them."""
    assert ggml.block_type("Q4_0").uses_imatrix and ggml.block_type("Q4_1").uses_imatrix
    assert not ggml.block_type("Q8_0").uses_imatrix


@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_imatrix_bytes_equal_ggml_c_quantizer(fmt, kind):
    """Oracle: ggml's C quantizer with an importance matrix (ggml_quantize_chunk ->
    quantize_row_q4_0_impl / _q4_1_impl; Q8_0 ignores it) and ggml's decoder, on every stress
    kind with a random and a zero-holding imatrix."""
    x = stress_tensor(kind, (8, 256), seed=11)
    for im in imatrices(256, seed=3):
        check_imatrix_equal_c(x, fmt, im)


@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
def test_imatrix_bytes_equal_ggml_near_ties(fmt):
    """Oracle: ggml's C quantizer on half-integers and their float32 neighbours, with
    importance matrices (ties of nearest_int in every candidate of the search)."""
    rng = np.random.default_rng(5)
    k = rng.integers(-16, 17, (4, 512)).astype(np.float32) / 2
    x = np.where(rng.random(k.shape) < 0.4, np.nextafter(k, np.float32(np.inf)), k)
    x[:, ::32] = 8.0
    for im in imatrices(512, seed=6):
        check_imatrix_equal_c(x.astype(np.float32), fmt, im)


@needs_ggml
@settings(max_examples=25)
@given(fmt=st.sampled_from(FORMATS[1:]), seed=st.integers(0, 2**31),
       scale_exp=st.integers(-30, 10))
def test_imatrix_bytes_equal_ggml_property(fmt, seed, scale_exp):
    """Oracle: ggml's C quantizer with a random importance matrix on scaled normals."""
    x = (stress_tensor("normal", (2, 128), seed) * np.float32(2.0**scale_exp)).astype(np.float32)
    check_imatrix_equal_c(x, fmt, imatrices(128, seed % 1000)[seed % 2])


@functools.lru_cache(maxsize=None)
def real_weights(tensor: str, rows: int) -> np.ndarray:
    """The first ``rows`` rows of a tensor of the bundled SmolLM2-135M GGUF, decoded by gguf."""
    from refquant.models.resources import bundled_model_path
    reader = gguf.GGUFReader(str(bundled_model_path()))
    t = next(t for t in reader.tensors if t.name == tensor)
    w = gguf.quants.dequantize(t.data[:rows], t.tensor_type).astype(np.float32)
    w.setflags(write=False)
    return w


@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tensor, rows", [("blk.0.attn_q.weight", 48), ("token_embd.weight", 32),
                                          ("blk.5.ffn_down.weight", 24),
                                          ("blk.29.attn_v.weight", 24)])
def test_imatrix_bytes_equal_ggml_real_weights(fmt, tensor, rows):
    """Oracle: ggml's C quantizer and decoder on real SmolLM2-135M weights (the bundled GGUF's
    tensors decoded by gguf), with a random and a zero-holding importance matrix."""
    w = real_weights(tensor, rows)
    for im in imatrices(w.shape[1], seed=4):
        check_imatrix_equal_c(w, fmt, im)


def test_imatrix_changes_q4_but_not_q8_0():
    """Oracle: the definitions -- Q8_0's bytes do not depend on the imatrix (ggml discards it);
    Q4_0's and Q4_1's weighted search gives a smaller weighted squared error, with ggml's
    weights imatrix_j sqrt(sigma^2 + x_j^2) computed here in float64, than the reference
    quantizer, summed over a whole tensor (the search minimizes each block's weighted error, up
    to the float16 rounding of its scales). The tensor is a real SmolLM2 weight moved off its
    stored Q4_1 grid by a little noise (on the grid both Q4_1 paths are exact)."""
    w = np.asarray(real_weights("blk.0.attn_q.weight", 48), np.float64)
    rng = np.random.default_rng(2)
    x = (w + 0.1 * w.std() * rng.standard_normal(w.shape)).astype(np.float32)
    im = imatrices(x.shape[1], seed=9)[0]
    assert np.array_equal(ggml.quantize(x, "Q8_0", im), ggml.quantize(x, "Q8_0"))
    x64 = x.astype(np.float64)
    sigma2 = np.mean(x64 ** 2, axis=1, keepdims=True)
    weight = im * np.sqrt(sigma2 + x64 ** 2)
    for fmt in ("Q4_0", "Q4_1"):
        err = {}
        for name, imatrix in (("imatrix", im), ("reference", None)):
            x_hat = ggml.dequantize(ggml.quantize(x, fmt, imatrix), fmt).astype(np.float64)
            err[name] = float(np.sum(weight * (x_hat - x64) ** 2))
        assert err["imatrix"] < 0.9 * err["reference"], (fmt, err)


def test_all_zero_block_with_imatrix():
    # hand case (ggml's make_qx_quants / make_qkx3_quants on a block of zeros): d = 0 and every
    # code 0 -- for Q4_0 that is nibble 0, not the reference path's 8 -- and Q4_1's m = +0
    x = np.zeros((1, 64), np.float32)
    x[0, 32:] = np.linspace(-1, 1, 32, dtype=np.float32)
    im = np.ones(64, np.float32)
    b0 = ggml.quantize_blocks(x, "Q4_0", im)
    assert float(b0.d[0, 0]) == 0.0 and (b0.q[0, 0] == 0).all()
    assert (ggml.quantize_blocks(x, "Q4_0").q[0, 0] == 8).all()
    b1 = ggml.quantize_blocks(x, "Q4_1", im)
    assert float(b1.d[0, 0]) == 0.0 and (b1.q[0, 0] == 0).all() and float(b1.m[0, 0]) == 0.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_imatrix_raises(fmt):
    x = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError, match=r"shape \(64,\); got shape \(32,\)"):
        ggml.quantize(x, fmt, np.ones(32))
    with pytest.raises(ValueError, match="entry 3 is -1.0"):
        ggml.quantize_blocks(x, fmt, np.where(np.arange(64) == 3, -1.0, 1.0))
    with pytest.raises(ValueError, match="entry 0 is nan"):
        ggml.quantize_blocks(x, fmt, np.full(64, np.nan))
