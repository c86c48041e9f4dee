"""Tests of refquant.formats.ggml.kquants_low (Q2_K, Q3_K).

Oracles:
1. hand calculations (worked out in the comments);
2. ggml's own C quantizer and decoder (``ggml_quantize_chunk`` / ``dequantize_row_q*_K`` of the
   ``libggml-python`` wheel through ctypes, ``tests/ggml_oracle.py``), bytes compared exactly:
   with ``imatrix=NULL`` ggml runs ``quantize_row_q*_K_ref``, with one ``quantize_row_q*_K_impl``;
3. the ``gguf`` package's decoder (``gguf.quants.dequantize``).
"""

import gguf
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ggml_oracle
from refquant.formats import ggml
from refquant.formats.ggml import kquants_low
from refquant.testing import STRESS_KINDS, assert_ggml_equal, stress_tensor

FORMATS = ("Q2_K", "Q3_K")
GGUF_TYPE = {f: getattr(gguf.GGMLQuantizationType, f) for f in FORMATS}
needs_ggml, imatrices = ggml_oracle.needs_ggml, ggml_oracle.imatrices




# --- hand-calculated cases ----------------------------------------------------------------------

def test_layout_sizes():
    # Q2_K: 16 + 64 + 2 + 2 bytes per 256; Q3_K: 32 + 64 + 12 + 2
    assert [ggml.block_bytes(f) for f in FORMATS] == [84, 110]
    assert [ggml.bits_per_weight(f) for f in FORMATS] == [2.625, 3.4375]
    for fmt in FORMATS:
        t = ggml.block_type(fmt)
        assert (t.block_size, t.type_size) == gguf.GGML_QUANT_SIZES[GGUF_TYPE[fmt]]
        assert t.type_id == int(GGUF_TYPE[fmt]) and t.uses_imatrix


@pytest.mark.parametrize("fmt", FORMATS)
def test_all_zero_super_blocks_are_zero_bytes(fmt):
    # every sub-block search returns scale 0 and codes 0 (Q3_K: code 0, not the zero level 4:
    # ggml's all-zero branch writes L = 0); the scales of scales are 0; no code is chosen again
    x = np.zeros((2, 512), np.float32)
    x[1, 256:260] = 1e-16                          # below GROUP_MAX_EPS = 1e-15 (Q3_K)
    for im in imatrices(512, seed=0):
        b = ggml.quantize(x[:1], fmt, imatrix=im)
        assert (b == 0).all()
        assert (ggml.dequantize(b, fmt) == 0).all()


def test_q2_k_decode_by_hand():
    # d = 1, dmin = 0.5, every scale byte 0x23 (s = 3, m = 2): x_hat = 3 q - 1.
    # qs byte 0 = 0b11_10_01_00 holds the codes of values 0, 32, 64, 96: 0, 1, 2, 3
    raw = np.zeros((1, 84), np.uint8)
    raw[0, :16] = 0x23
    raw[0, 16] = 0b11100100
    raw[0, 80:84] = np.array([1.0, 0.5], "<f2").view(np.uint8)
    x_hat = ggml.dequantize(raw, "Q2_K")[0]
    assert x_hat[[0, 32, 64, 96, 1]].tolist() == [-1.0, 2.0, 5.0, 8.0, -1.0]


def test_q3_k_decode_by_hand():
    # d = 2, every 6-bit scale 33 (s - 32 = 1): x_hat = 2 (q - 4). hmask all set except bit 0 of
    # byte 0 (value 0): values 32, 64, 96 are 2 (low bits) and value 0 is 2 (0 - 4) = -8.
    raw = np.zeros((1, 110), np.uint8)
    raw[0, :32] = 0xFF
    raw[0, 0] = 0xFE
    raw[0, 32] = 0b11100100
    raw[0, 96:108] = kquants_low._pack_q3_scales(np.full((1, 16), 33))
    raw[0, 108:110] = np.array([2.0], "<f2").view(np.uint8)
    x_hat = ggml.dequantize(raw, "Q3_K")[0]
    assert x_hat[[0, 32, 64, 96, 1]].tolist() == [-8.0, 2.0, 4.0, 6.0, 0.0]


def test_q3_k_scale_packing_roundtrip_and_layout():
    # s_j = j + 40: low nibbles (j + 40) & 15 in bytes 0-7 (j < 8 low, j >= 8 high nibble);
    # byte 8 + k holds (s_{k+4g} >> 4) in bits 2g, 2g+1: s_{k+4g} is 40..47 (high bits 2) for
    # g = 0, 1 and 48..55 (high bits 3) for g = 2, 3, so every one of bytes 8-11 is 0b11_11_10_10
    ls = (np.arange(16) + 40)[None]
    b = kquants_low._pack_q3_scales(ls)
    assert b[0, :8].tolist() == [((40 + j) & 15) | (((48 + j) & 15) << 4) for j in range(8)]
    assert b[0, 8:].tolist() == [2 | 2 << 2 | 3 << 4 | 3 << 6] * 4
    every = np.arange(64)[:, None] * np.ones((1, 16), int)                 # all 64 codes
    assert np.array_equal(kquants_low._unpack_q3_scales(kquants_low._pack_q3_scales(every)), every)


# --- ggml's C quantizer -------------------------------------------------------------------------

@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_bytes_equal_ggml_stress(fmt, kind):
    """Oracle: ggml's C (ggml_quantize_chunk, tests/ggml_oracle.py) on refquant.testing's stress
    tensors, without an imatrix (ggml's _ref), with a random positive one and one with zeros
    (ggml's _impl); decoded values equal ggml's dequantize_row_* and gguf.quants.dequantize."""
    x = stress_tensor(kind, (6, 512), seed=7)
    for im in imatrices(512, seed=1):
        expected = ggml_oracle.quantize(x, fmt, im)
        assert_ggml_equal(ggml.quantize(x, fmt, imatrix=im), expected, fmt, x=x,
                          err_msg=f"imatrix: {'none' if im is None else 'given'}")
        x_hat = ggml.dequantize(expected, fmt)
        np.testing.assert_array_equal(x_hat, ggml_oracle.dequantize(expected, fmt, 512))
        np.testing.assert_array_equal(x_hat, gguf.quants.dequantize(expected, GGUF_TYPE[fmt]))


@needs_ggml
@settings(max_examples=25)
@given(fmt=st.sampled_from(FORMATS), seed=st.integers(0, 2**31), scale_exp=st.integers(-40, 16),
       with_imatrix=st.booleans())
def test_bytes_equal_ggml_property(fmt, seed, scale_exp, with_imatrix):
    """Oracle: ggml's C quantizer, on normal values scaled by 2^-40 ... 2^16 (float16 scales from
    subnormal to large)."""
    x = (stress_tensor("normal", (2, 256), seed) * np.float32(2.0**scale_exp)).astype(np.float32)
    im = imatrices(256, seed)[2] if with_imatrix else None
    assert_ggml_equal(ggml.quantize(x, fmt, im), ggml_oracle.quantize(x, fmt, im), fmt, x=x)


@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_equal_ggml_real_weights(fmt):
    """Oracle: ggml's C quantizer on real SmolLM2-135M weights (rows of the bundled GGUF's Q4_1
    ffn_down of block 4 decoded by gguf, 1536 columns), with and without an importance matrix."""
    from refquant.models.resources import bundled_model_path
    reader = gguf.GGUFReader(str(bundled_model_path()))
    t = next(t for t in reader.tensors if t.name == "blk.4.ffn_down.weight")
    w = gguf.quants.dequantize(t.data, t.tensor_type)[:48].astype(np.float32)
    for im in imatrices(w.shape[1], seed=4)[:2]:
        assert_ggml_equal(ggml.quantize(w, fmt, im), ggml_oracle.quantize(w, fmt, im), fmt, x=w)


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_input_raises(fmt):
    # the bundled model's hidden size, 576, is not a multiple of 256 (llama.cpp writes such
    # tensors as IQ4_NL instead; refquant's block quantizer refuses them, naming the length)
    with pytest.raises(ValueError, match="length 576 is not a positive multiple of 256"):
        ggml.quantize(np.ones((2, 576), np.float32), fmt)
    x = np.ones((2, 512), np.float32)
    with pytest.raises(ValueError, match=r"shape \(512,\); got shape \(576,\)"):
        ggml.quantize(x, fmt, imatrix=np.ones(576, np.float32))
    im = np.ones(512, np.float32)
    im[300] = -0.5
    with pytest.raises(ValueError, match="entry 300 is -0.5"):
        ggml.quantize(x, fmt, imatrix=im)
    im[300] = np.inf
    with pytest.raises(ValueError, match="entry 300 is inf"):
        ggml.quantize(x, fmt, imatrix=im)
    with pytest.raises(ValueError, match="overflows float16"):
        ggml.quantize(np.linspace(-3e7, 3e7, 512, dtype=np.float32)[None], fmt)
    with pytest.raises(ValueError, match="multiple of"):
        ggml.dequantize(np.zeros((1, ggml.block_bytes(fmt) + 2), np.uint8), fmt)
