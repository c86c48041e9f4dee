"""Tests of refquant.formats.ggml.iq4 (IQ4_NL, IQ4_XS).

Oracles:
1. hand calculations (worked out in the comments);
2. ggml's own C quantizer and decoder (``ggml_quantize_chunk`` / ``dequantize_row_iq4_*`` of the
   ``libggml-python`` wheel through ctypes, ``tests/ggml_oracle.py``), bytes compared exactly;
3. the ``gguf`` package's decoder (``gguf.quants.dequantize``).
"""

import gguf
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ggml_oracle
from refquant.formats import ggml
from refquant.formats.ggml import iq4
from refquant.formats.ggml._search import sum_f32
from refquant.testing import STRESS_KINDS, assert_ggml_equal, stress_tensor

FORMATS = ("IQ4_NL", "IQ4_XS")
needs_ggml, imatrices = ggml_oracle.needs_ggml, ggml_oracle.imatrices




# --- hand-calculated cases ----------------------------------------------------------------------

def test_layout_sizes_match_ggml_and_gguf():
    # IQ4_NL: 2 + 16 bytes per 32 values; IQ4_XS: 2 + 2 + 4 + 128 bytes per 256
    assert (ggml.block_bytes("IQ4_NL"), ggml.bits_per_weight("IQ4_NL")) == (18, 4.5)
    assert (ggml.block_bytes("IQ4_XS"), ggml.bits_per_weight("IQ4_XS")) == (136, 4.25)
    for fmt in FORMATS:
        t = ggml.block_type(fmt)
        gtype = getattr(gguf.GGMLQuantizationType, fmt)
        assert (t.block_size, t.type_size) == gguf.GGML_QUANT_SIZES[gtype]
        assert t.type_id == int(getattr(gguf.GGMLQuantizationType, fmt)) and t.uses_imatrix
        if ggml_oracle.available():
            c_sizes = (ggml_oracle.block_size(fmt), ggml_oracle.type_size(fmt))
            assert (t.block_size, t.type_size) == c_sizes


def test_best_index_midpoints_go_up():
    # levels -127, -104, ...: the midpoint of -127 and -104 is -115.5; of -10 and 1, -4.5
    x = np.array([-115.5, np.nextafter(np.float32(-115.5), np.float32(-200)), -4.5, -4.0, 0.0,
                  -0.0, 200.0, -200.0, 112.0, 101.0, np.nan], np.float32)
    assert iq4.best_index(x).tolist() == [1, 0, 8, 8, 8, 8, 15, 0, 15, 15, 0]


def test_all_zero_blocks():
    # IQ4_NL: d_b = 0 -> float16 +0, codes best_index(0 * x) = 8 (level 1), bytes 0x88.
    # IQ4_XS: max_scale = 0 -> d = -0 / 32 = -0.0 (float16 bits 0x8000), ls = 0 + 32 = 32:
    #   scales_h = 0b10 in every 2-bit field = 0xAAAA, scales_l nibbles 0, codes 8.
    x = np.zeros((2, 256), np.float32)
    x[1, :7] = 1e-16                                           # below GROUP_MAX_EPS = 1e-15
    nl = ggml.quantize(x, "IQ4_NL").reshape(-1, 18)
    assert (nl[:, :2] == 0).all() and (nl[:, 2:] == 0x88).all()
    xs = ggml.quantize(x, "IQ4_XS").reshape(-1, 136)
    assert xs[:, :8].tolist() == [[0x00, 0x80, 0xAA, 0xAA, 0, 0, 0, 0]] * 2
    assert (xs[:, 8:] == 0x88).all()
    for fmt in FORMATS:
        assert (ggml.dequantize(ggml.quantize(x, fmt), fmt) == 0).all()


def test_iq4_nl_hand_block():
    # One block, x = (113, -10, 0, ..., 0), no imatrix: w = x^2 = (12769, 100, 0 ...).
    # First trial id = 127/113 (d0 = 113/127): 113 * id = 127 -> level 113 (code 15);
    # -10 * id = -11.24 -> nearest level -10 (code 7). The fit d = (w v x) / (w v^2) = 1 exactly
    # (113*113*12769 + (-10)(-10)100 over the same sum), zero error: no later trial beats it
    # strictly. d = 1.0 is float16 0x3C00; codes are then best_index(x / 1): 15, 7, and 8 for the
    # zeros. Byte 0 = code 0 | code 16 << 4 = 0x8F, byte 1 = 0x87, the rest 0x88.
    x = np.zeros((1, 32), np.float32)
    x[0, :2] = [113.0, -10.0]
    b = ggml.quantize(x, "IQ4_NL")
    assert b[0, :4].tolist() == [0x00, 0x3C, 0x8F, 0x87] and (b[0, 4:] == 0x88).all()
    assert ggml.dequantize(b, "IQ4_NL")[0, :3].tolist() == [113.0, -10.0, 1.0]


def test_iq4_xs_block_scales_roundtrip():
    # ls - 32 = -32 ... 31 packed into scales_h / scales_l and read back
    raw = np.zeros((1, 136), np.uint8)
    ls = np.array([0, 63, 32, 17, 48, 1, 62, 31])
    scales_h = np.bitwise_or.reduce((ls >> 4) << (2 * np.arange(8)))
    raw[0, 2:4] = np.array([scales_h], "<u2").view(np.uint8)
    raw[0, 4:8] = (ls[0::2] & 15) | ((ls[1::2] & 15) << 4)
    assert iq4.iq4_xs_block_scales(raw).tolist() == [(ls - 32).tolist()]


# --- ggml's C quantizer -------------------------------------------------------------------------

@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_bytes_equal_ggml_stress(fmt, kind):
    """Oracle: ggml's C (ggml_quantize_chunk, tests/ggml_oracle.py) on refquant.testing's stress
    tensors, with no imatrix, a random positive one and one with zeros; decoded values equal
    ggml's dequantize_row_* and gguf.quants.dequantize."""
    x = stress_tensor(kind, (6, 512), seed=7)
    for im in imatrices(512, seed=1):
        expected = ggml_oracle.quantize(x, fmt, im)
        got = ggml.quantize(x, fmt, imatrix=im)
        assert_ggml_equal(got, expected, fmt, x=x)
    x_hat = ggml.dequantize(expected, fmt)
    np.testing.assert_array_equal(x_hat, ggml_oracle.dequantize(expected, fmt, 512))
    gtype = getattr(gguf.GGMLQuantizationType, fmt)
    np.testing.assert_array_equal(x_hat, gguf.quants.dequantize(expected, gtype))


@needs_ggml
@settings(max_examples=25)
@given(fmt=st.sampled_from(FORMATS), seed=st.integers(0, 2**31), scale_exp=st.integers(-40, 16),
       with_imatrix=st.booleans())
def test_bytes_equal_ggml_property(fmt, seed, scale_exp, with_imatrix):
    """Oracle: ggml's C quantizer, on normal values scaled by 2^-40 ... 2^16 (float16 scales from
    subnormal to near overflow)."""
    x = (stress_tensor("normal", (2, 256), seed) * np.float32(2.0**scale_exp)).astype(np.float32)
    im = imatrices(256, seed)[1] if with_imatrix else None
    assert_ggml_equal(ggml.quantize(x, fmt, im), ggml_oracle.quantize(x, fmt, im), fmt, x=x)


@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_equal_ggml_near_midpoints(fmt):
    """Oracle: ggml's C quantizer, on values whose trial codes sit on or next to the midpoints
    between levels (each block's largest value is 127, so the first trial scale is 1)."""
    rng = np.random.default_rng(3)
    mids = (iq4.KVALUES_IQ4NL[:-1].astype(np.float32) + iq4.KVALUES_IQ4NL[1:]) / 2
    x = rng.choice(mids, (8, 256)).astype(np.float32)
    step = rng.integers(-1, 2, x.shape)
    x = np.where(step > 0, np.nextafter(x, np.float32(np.inf)),
                 np.where(step < 0, np.nextafter(x, np.float32(-np.inf)), x)).astype(np.float32)
    x[:, ::32] = 127.0
    for im in imatrices(256, seed=2):
        assert_ggml_equal(ggml.quantize(x, fmt, im), ggml_oracle.quantize(x, fmt, im), fmt, x=x)


@needs_ggml
@pytest.mark.parametrize("fmt, tensor, rows", [("IQ4_NL", "blk.0.attn_k.weight", 192),
                                               ("IQ4_XS", "blk.3.ffn_down.weight", 48)])
def test_bytes_equal_ggml_real_weights(fmt, tensor, rows):
    """Oracle: ggml's C quantizer on real SmolLM2-135M weights (the bundled GGUF's Q4_1 tensors
    decoded by gguf), with and without an importance matrix."""
    from refquant.models.resources import bundled_model_path
    reader = gguf.GGUFReader(str(bundled_model_path()))
    t = next(t for t in reader.tensors if t.name == tensor)
    w = gguf.quants.dequantize(t.data, t.tensor_type)[:rows].astype(np.float32)
    for im in imatrices(w.shape[1], seed=4)[:2]:
        assert_ggml_equal(ggml.quantize(w, fmt, im), ggml_oracle.quantize(w, fmt, im), fmt, x=w)


def test_block_scales_loop_equals_trial_by_trial():
    """Oracle: the search written out trial by trial for one block, with Python's max over
    (objective, -trial index): the first trial that strictly improves the objective wins."""
    x = stress_tensor("heavy_tail", (1, 32), seed=9)[0]
    w = (x * x).astype(np.float32)
    m = x[np.argmax(np.abs(x))]
    trials = [np.float32(1) / ((-m) / np.float32(-127))]
    trials += [np.float32(t - 127) / m for t in range(-7, 8)]
    fits = []
    for inv in trials:
        q = iq4.KVALUES_IQ4NL[iq4.best_index(np.float32(inv) * x)].astype(np.float32)
        sqx, sq2 = sum_f32(w * q * x), sum_f32(w * q * q)
        fits.append((sqx, sq2))
    best_i, best = 0, fits[0][0] / fits[0][1] * fits[0][0]
    for i, (sqx, sq2) in enumerate(fits[1:], 1):
        if sq2 > 0 and sqx * sqx > best * sq2:
            best_i, best = i, np.float32(sqx / sq2) * sqx
    sqx, sq2 = fits[best_i]
    assert iq4.block_scales(x[None], w[None])[0] == np.float32(sqx / sq2)


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, block", [("IQ4_NL", 32), ("IQ4_XS", 256)])
def test_bad_input_raises(fmt, block):
    x = np.ones((2, 512), np.float32)
    bad_len = f"length {block + 16} is not a positive multiple of {block}"
    with pytest.raises(ValueError, match=bad_len):
        ggml.quantize(np.ones((2, block + 16), np.float32), fmt)
    with pytest.raises(ValueError, match=r"shape \(512,\); got shape \(256,\)"):
        ggml.quantize(x, fmt, imatrix=np.ones(256, np.float32))
    im = np.ones(512, np.float32)
    im[3] = -1
    with pytest.raises(ValueError, match="entry 3 is -1.0"):
        ggml.quantize(x, fmt, imatrix=im)
    im[3] = np.nan
    with pytest.raises(ValueError, match="entry 3 is nan"):
        ggml.quantize(x, fmt, imatrix=im)
    with pytest.raises(ValueError, match="overflows float16"):
        ggml.quantize(np.full((1, 512), 3e9, np.float32), fmt)
    with pytest.raises(ValueError, match="multiple of"):
        ggml.dequantize(np.zeros((1, ggml.block_bytes(fmt) + 1), np.uint8), fmt)
