"""Tests of refquant.formats.ggml's Q5_0, Q5_1 (q5), Q4_K, Q5_K (kquants), Q6_K, Q8_K
(kquants_sym) and of the scale searches they share (_search).

Oracles:
1. hand calculations (worked out in the comments);
2. ggml's own C quantizer and decoder (``ggml_quantize_chunk``, which runs
   ``quantize_row_*_ref`` without an importance matrix and ``quantize_row_*_impl`` with one;
   ``quantize_row_q8_K_ref`` for Q8_K, which ``ggml_quantize_chunk`` does not take;
   ``dequantize_row_*``; all from the ``libggml-python`` wheel through ctypes,
   ``tests/ggml_oracle.py``), bytes compared exactly;
3. the ``gguf`` package: its decoders (``gguf.quants.dequantize``) and its NumPy port of the
   Q5_0/Q5_1 reference quantizers;
4. NumPy's ``rint`` for ``nearest_int`` in its asserted range.
"""

import functools

import gguf
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ggml_oracle
from refquant.formats import ggml
from refquant.formats.ggml import _search, q5
from refquant.testing import STRESS_KINDS, assert_ggml_equal, stress_tensor

FORMATS = ("Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q8_K")
IMATRIX_FORMATS = FORMATS[:-1]                   # Q8_K has no importance-matrix quantizer
needs_ggml = ggml_oracle.needs_ggml


def c_quantize(x, fmt, imatrix=None):
    """ggml's bytes: ggml_quantize_chunk, or Q8_K's exported reference quantizer."""
    if fmt == "Q8_K":
        return ggml_oracle.quantize_row_ref(x, fmt)
    return ggml_oracle.quantize(x, fmt, imatrix)


def imatrices(K, seed):
    return ggml_oracle.imatrices(K, seed, zero_first_block=True)


def q5_0_reciprocal_overflow(x):
    """Q5_0 blocks [n_rows * nb] whose float32 scale d is nonzero but 1/d overflows float32."""
    d, _, _ = q5.quantize_q5_blocks(x, "Q5_0")
    with np.errstate(all="ignore"):
        return ((d != 0) & ~np.isfinite(np.float32(1) / d)).reshape(-1)


def assert_equal_q5_0_ref(got, expected, x, decoded_expected):
    """Byte equality of Q5_0 reference bytes, except for the one documented difference
    (refquant.formats.ggml.q5, as legacy's Q4_0): where 1/d overflows float32 the reference
    converts inf/NaN to an integer (undefined behaviour; code 0 on x86-64) and refquant takes
    id = 0 (codes 16). There the scale bytes and the decoded values must agree."""
    over = q5_0_reciprocal_overflow(x)
    g, e = got.reshape(-1, 22), expected.reshape(-1, 22)
    assert np.array_equal(g[over, :2], e[over, :2]) and (g[over, 2:6] == 0xFF).all()
    np.testing.assert_array_equal(ggml.dequantize(got, "Q5_0"), decoded_expected)
    assert_ggml_equal(g[~over], e[~over], "Q5_0", x=x.reshape(-1, 32)[~over])


def check_equal_c(x, fmt, imatrix=None):
    got = ggml.quantize(x, fmt, imatrix)
    expected = c_quantize(x, fmt, imatrix)
    if fmt == "Q5_0" and imatrix is None:
        assert_equal_q5_0_ref(got, expected, x, ggml_oracle.dequantize(expected, fmt, x.shape[-1]))
    else:
        assert_ggml_equal(got, expected, fmt, x=x, err_msg=f"imatrix={'no' if imatrix is None else 'yes'}")
    return expected


# --- layout and hand-calculated cases -----------------------------------------------------------

def test_layout_sizes_match_ggml_and_gguf():
    # Q5_0: 2 + 4 + 16 bytes per 32; Q5_1: 2 + 2 + 4 + 16; Q4_K: 2 + 2 + 12 + 128 per 256;
    # Q5_K: + 32 bytes of fifth bits; Q6_K: 128 + 64 + 16 + 2; Q8_K: 4 + 256 + 32
    sizes = {f: (ggml.block_bytes(f), ggml.bits_per_weight(f)) for f in FORMATS}
    assert sizes == {"Q5_0": (22, 5.5), "Q5_1": (24, 6.0), "Q4_K": (144, 4.5),
                     "Q5_K": (176, 5.5), "Q6_K": (210, 6.5625), "Q8_K": (292, 9.125)}
    for fmt in FORMATS:
        t = ggml.block_type(fmt)
        assert (t.block_size, t.type_size) == gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, fmt)]
        assert t.type_id == int(getattr(gguf.GGMLQuantizationType, fmt))
        assert t.uses_imatrix == (fmt != "Q8_K")
        if ggml_oracle.available():
            assert (t.block_size, t.type_size) == (ggml_oracle.block_size(fmt), ggml_oracle.type_size(fmt))


def test_nearest_int_ties_to_even_and_bit_trick_edges():
    # 0.5 -> 0, 1.5 -> 2, -2.5 -> -2 (ties to even); the magic-number trick's NaN -> 0,
    # +-inf -> -4194304 (mantissa bits of inf are 0, minus 2^22)
    v = np.array([0.5, 1.5, -2.5, 2.4999998, np.nan, np.inf, -np.inf], np.float32)
    assert _search.nearest_int(v).tolist() == [0, 2, -2, 2, 0, -4194304, -4194304]


@settings(max_examples=50)
@given(seed=st.integers(0, 2**31), scale=st.sampled_from([1e-3, 1.0, 100.0, 4e6]))
def test_nearest_int_is_rint_in_range(seed, scale):
    """Oracle: np.rint (round half to even) for |v| <= 4194303, ggml's asserted range."""
    v = (np.random.default_rng(seed).uniform(-1, 1, 200) * scale).astype(np.float32)
    v = np.clip(v, -4194303, 4194303)
    assert np.array_equal(_search.nearest_int(v), np.rint(v).astype(np.int32))


def test_sum_f32_is_left_to_right():
    # 1 + 2^-24 + 2^-24 ... : left to right each tiny term is lost (1 + 2^-24 rounds to 1, ties
    # to even), pairwise summation would add the tiny terms first and keep them
    t = np.full((1, 17), 2.0**-24, np.float32)
    t[0, 0] = 1.0
    assert _search.sum_f32(t)[0] == np.float32(1.0)
    assert np.float32(np.sum(t[0, 1:])) + np.float32(1) > 1       # the other order differs


def test_q8_k_hand_case():
    # x_max = 127 (first largest |x|) -> iscale = -127/127 = -1, d = 1/iscale = -1.0 (float32,
    # bytes 00 00 80 bf); codes nearest_int(-x): 2.5 -> -2 (tie to even), -3.5 -> 4, 127 -> -127
    x = np.zeros((1, 256), np.float32)
    x[0, :4] = [127.0, 2.5, -3.5, -127.0]
    b = ggml.quantize(x, "Q8_K")
    assert b[0, :4].tolist() == [0x00, 0x00, 0x80, 0xBF]
    assert b[0, 4:8].view(np.int8).tolist() == [-127, -2, 4, 127]
    assert b[0, 260:262].view("<i2")[0] == -127 - 2 + 4 + 127         # bsums[0]
    assert ggml.dequantize(b, "Q8_K")[0, :4].tolist() == [127.0, 2.0, -4.0, -127.0]


def test_q6_k_all_zero_super_block_is_zero_bytes():
    # largest sub-block scale below GROUP_MAX_EPS: ggml memsets the whole block (d = +0.0)
    x = np.zeros((2, 256), np.float32)
    x[1, ::7] = 1e-20
    assert (ggml.quantize(x, "Q6_K") == 0).all()


def test_q4_k_scale_bytes_roundtrip():
    # 6-bit codes 0..63 for the 8 scales and 8 minimums survive the 12-byte packing
    from refquant.formats.ggml.kquants import _pack_scales, _unpack_scales
    rng = np.random.default_rng(0)
    sc, mn = rng.integers(0, 64, (50, 8)), rng.integers(0, 64, (50, 8))
    b = _pack_scales(sc, mn)
    assert b.shape == (50, 12)
    s2, m2 = _unpack_scales(b)
    assert np.array_equal(s2, sc) and np.array_equal(m2, mn)
    # byte 0 = sc_0 | top 2 bits of sc_4 in bits 6-7; byte 8 = low nibbles of sc_4, mn_4
    one = _pack_scales(np.array([[5, 0, 0, 0, 0b110011, 0, 0, 0]]),
                       np.array([[9, 0, 0, 0, 0b100001, 0, 0, 0]]))[0]
    assert one[0] == 5 | (0b11 << 6) and one[4] == 9 | (0b10 << 6) and one[8] == 0b0011 | (0b0001 << 4)


def test_assert_ggml_equal_names_block_of_new_types():
    x = stress_tensor("normal", (2, 512), seed=1)
    b = ggml.quantize(x, "Q4_K")
    c = b.copy()
    c[1, 144 + 20] ^= 1                                                # block 3, byte 20
    assert_ggml_equal(b, b.copy(), "Q4_K")
    with pytest.raises(AssertionError, match=r"Q4_K bytes differ in 1 / 4 blocks .* worst block 3, "
                                             r"differing byte offsets \[20\]"):
        assert_ggml_equal(c, b, "Q4_K", x=x)


# --- ggml's C quantizer -------------------------------------------------------------------------

@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_bytes_equal_ggml_stress(fmt, kind):
    """Oracle: ggml's C quantizer (reference without an imatrix, impl with a positive one and
    with one holding zeros) and ggml's C decoder."""
    x = stress_tensor(kind, (6, 512), seed=11)
    for im in imatrices(512, seed=3):
        expected = check_equal_c(x, fmt, im)
        np.testing.assert_array_equal(ggml.dequantize(expected, fmt),
                                      ggml_oracle.dequantize(expected, fmt, 512))


@needs_ggml
@settings(max_examples=30)
@given(fmt=st.sampled_from(FORMATS), seed=st.integers(0, 2**31), scale_exp=st.integers(-30, 10),
       with_imatrix=st.booleans())
def test_bytes_equal_ggml_property(fmt, seed, scale_exp, with_imatrix):
    """Oracle: ggml's C quantizer on scaled normal rows, from tiny to large magnitudes."""
    x = (stress_tensor("heavy_tail" if seed % 2 else "normal", (2, 256), seed)
         * np.float32(2.0**scale_exp)).astype(np.float32)
    x = np.clip(x, -2e4, 2e4)                    # Q5_1 stores the block minimum in float16
    im = imatrices(256, seed)[1] if with_imatrix else None
    check_equal_c(x, fmt, im)


@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_equal_ggml_near_ties(fmt):
    """Oracle: ggml's C quantizer on half-integers and their float32 neighbours (ties of every
    rounding step, and sub-blocks whose extremes repeat)."""
    rng = np.random.default_rng(5)
    k = rng.integers(-16, 17, (4, 512)).astype(np.float32) / 2
    x = np.where(rng.random(k.shape) < 0.4, np.nextafter(k, np.float32(np.inf)), k)
    x[:, ::32] = 8.0
    for im in imatrices(512, seed=6):
        check_equal_c(x.astype(np.float32), fmt, im)


@functools.lru_cache(maxsize=None)
def real_weights(tensor: str, rows: int) -> np.ndarray:
    """The first ``rows`` rows of a tensor of the bundled SmolLM2-135M GGUF, decoded by gguf."""
    from refquant.models.resources import bundled_model_path
    reader = _reader(str(bundled_model_path()))
    t = next(t for t in reader.tensors if t.name == tensor)
    w = gguf.quants.dequantize(t.data[:rows], t.tensor_type).astype(np.float32)
    w.setflags(write=False)
    return w


@functools.lru_cache(maxsize=1)
def _reader(path):
    return gguf.GGUFReader(path)


# SmolLM2's hidden size 576 is not a multiple of 256: its K-quant tensors are those with 1536
# input columns (ffn_down); the 32-blocks take the others too
REAL_CASES = ([(f, "blk.0.attn_q.weight", 48) for f in ("Q5_0", "Q5_1")]
              + [(f, "token_embd.weight", 32) for f in ("Q5_0", "Q5_1")]
              + [(f, t, 24) for f in FORMATS for t in ("blk.5.ffn_down.weight", "blk.29.ffn_down.weight")])


@needs_ggml
@pytest.mark.parametrize("fmt, tensor, rows", REAL_CASES)
def test_bytes_equal_ggml_real_weights(fmt, tensor, rows):
    """Oracle: ggml's C quantizer and decoder on real SmolLM2-135M weights (the bundled GGUF's
    tensors decoded by gguf), with and without importance matrices."""
    w = real_weights(tensor, rows)
    for im in imatrices(w.shape[1], seed=4):
        expected = check_equal_c(w, fmt, im)
    np.testing.assert_array_equal(ggml.dequantize(expected, fmt),
                                  ggml_oracle.dequantize(expected, fmt, w.shape[1]))


@needs_ggml
def test_q8_k_ignores_the_imatrix():
    """Oracle: ggml's Q8_K reference quantizer (there is no other)."""
    x = stress_tensor("outlier_channels", (3, 512), seed=2)
    assert np.array_equal(ggml.quantize(x, "Q8_K", imatrices(512, 1)[1]), c_quantize(x, "Q8_K"))


# --- gguf ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS[:-1])
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_decode_equals_gguf(fmt, kind):
    """Oracle: gguf.quants.dequantize (gguf has no Q8_K decoder; ggml's is tested above)."""
    x = stress_tensor(kind, (4, 512), seed=7)
    for im in imatrices(512, seed=8)[:2]:
        data = ggml.quantize(x, fmt, im)
        ref = gguf.quants.dequantize(data, getattr(gguf.GGMLQuantizationType, fmt))
        np.testing.assert_array_equal(ggml.dequantize(data, fmt), ref)


@pytest.mark.parametrize("fmt", ("Q5_0", "Q5_1"))
@pytest.mark.parametrize("kind", [k for k in STRESS_KINDS if k != "signed_zeros"])
def test_q5_reference_equals_gguf_port(fmt, kind):
    """Oracle: gguf's NumPy port of quantize_row_q5_*_ref (it differs from ggml's C only in the
    sign of a zero scale or minimum, as for Q4_0/Q4_1, hence no signed_zeros here; where 1/d
    overflows it casts inf/NaN to uint8, as C converts them, see assert_equal_q5_0_ref)."""
    x = stress_tensor(kind, (6, 512), seed=11)
    gtype = getattr(gguf.GGMLQuantizationType, fmt)
    with np.errstate(all="ignore"):
        ref = gguf.quants.quantize(x, gtype)
    if fmt == "Q5_0":
        assert_equal_q5_0_ref(ggml.quantize(x, fmt), ref, x, gguf.quants.dequantize(ref, gtype))
    else:
        assert_ggml_equal(ggml.quantize(x, fmt), ref, fmt, x=x)


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_input_raises(fmt):
    block = ggml.block_type(fmt).block_size
    x = np.ones((2, 512), np.float32)
    with pytest.raises(ValueError, match=f"{fmt} quantizes blocks of {block} along the last axis; "
                                         f"its length {block + block // 2} is not a positive multiple"):
        ggml.quantize(np.ones((2, block + block // 2), np.float32), fmt)
    with pytest.raises(ValueError, match=r"shape \(512,\); got shape \(256,\)"):
        ggml.quantize(x, fmt, imatrix=np.ones(256, np.float32))
    im = np.ones(512, np.float32)
    im[3] = -1
    with pytest.raises(ValueError, match=f"{fmt}: imatrix entries must be finite and >= 0; entry 3 is -1.0"):
        ggml.quantize(x, fmt, imatrix=im)
    im[3] = np.inf
    with pytest.raises(ValueError, match="entry 3 is inf"):
        ggml.quantize(x, fmt, imatrix=im)
    with pytest.raises(ValueError, match="NaN or Inf|overflows float32"):
        ggml.quantize(np.full((1, 512), 1e39), fmt)
    with pytest.raises(ValueError, match="multiple of"):
        ggml.dequantize(np.zeros((1, ggml.block_bytes(fmt) + 1), np.uint8), fmt)


@pytest.mark.parametrize("fmt", ("Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"))
def test_float16_overflow_raises(fmt):
    # a scale (or minimum) beyond float16's range: ggml would store inf; refquant refuses
    x = np.linspace(-3e9, 3e9, 512, dtype=np.float32).reshape(1, 512)
    with pytest.raises(ValueError, match=f"{fmt} block .* overflows float16"):
        ggml.quantize(x, fmt)


@pytest.mark.parametrize("fmt", ("Q4_K", "Q5_K", "Q6_K", "Q8_K"))
def test_k_quants_refuse_smollm2_hidden_size(fmt):
    # a real SmolLM2 attention weight has 576 = 2.25 * 256 input columns: no K-quant can hold
    # its rows (llama.cpp's llama-quantize falls back to another type for such tensors; choosing
    # that type is the GGUF-file writer's job, the block quantizer refuses)
    w = real_weights("blk.0.attn_q.weight", 4)
    with pytest.raises(ValueError, match=f"{fmt} quantizes blocks of 256 along the last axis; its "
                                         "length 576 is not a positive multiple of 256"):
        ggml.quantize(w, fmt)
