"""Tests of refquant.formats.ggml.mxfp (GGML MXFP4 and NVFP4).

Oracles:
1. hand calculations (worked out in the comments);
2. ggml's own C quantizer and decoder (``ggml_quantize_chunk`` / ``dequantize_row_*`` of the
   ``libggml-python`` wheel through ctypes, ``tests/ggml_oracle.py``), bytes compared with
   ``np.array_equal``; the wheel's ``log2f`` (glibc, through ctypes) for the E8M0 exponent;
3. the ``gguf`` package's decoder (``gguf.quants.dequantize``), which knows both types in
   gguf 0.19.
"""

import ctypes
import ctypes.util

import gguf
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ggml_oracle
from refquant.formats import ggml
from refquant.formats.ggml import mxfp
from refquant.testing import STRESS_KINDS, stress_tensor

TYPES = ("MXFP4", "NVFP4")
needs_ggml = ggml_oracle.needs_ggml


def assert_bytes_equal(got, expected, fmt, x=None):
    """np.array_equal on GGUF bytes; on failure name the first differing block and its input."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if np.array_equal(got, expected):
        return
    nb, qk = ggml.block_bytes(fmt), ggml.block_type(fmt).block_size
    bad = np.nonzero((got.reshape(-1, nb) != expected.reshape(-1, nb)).any(axis=1))[0]
    i = int(bad[0])
    msg = (f"{fmt}: {len(bad)} blocks differ; block {i}:\n  got      {got.reshape(-1, nb)[i]}"
           f"\n  expected {expected.reshape(-1, nb)[i]}")
    if x is not None:
        msg += f"\n  input    {np.asarray(x, np.float32).reshape(-1, qk)[i].tolist()}"
    raise AssertionError(msg)


def check_against_c(x, fmt):
    """Bytes equal to ggml's C quantizer; values equal to ggml's C decoder and to gguf's."""
    x = np.asarray(x, np.float32)
    expected = ggml_oracle.quantize(x, fmt)
    got = ggml.quantize(x, fmt)
    assert_bytes_equal(got, expected, fmt, x=x)
    x_hat = ggml.dequantize(got, fmt)
    c_hat = ggml_oracle.dequantize(expected, fmt, x.shape[-1])
    assert np.array_equal(x_hat.view(np.uint32), c_hat.view(np.uint32))
    g_hat = gguf.quants.dequantize(expected, getattr(gguf.GGMLQuantizationType, fmt))
    assert np.array_equal(x_hat, g_hat)


# --- hand-calculated cases ----------------------------------------------------------------------

def test_sizes_match_ggml():
    """Oracle: hand count (1 + 16 bytes per 32; 4 + 32 per 64) and ggml_type_size/blck_size."""
    assert (ggml.block_bytes("MXFP4"), ggml.bits_per_weight("MXFP4")) == (17, 4.25)
    assert (ggml.block_bytes("NVFP4"), ggml.bits_per_weight("NVFP4")) == (36, 4.5)
    for fmt in TYPES:
        t = ggml.block_type(fmt)
        assert t.type_id == ggml_oracle.type_id(fmt)
        if ggml_oracle.available():
            assert (t.block_size, t.type_size) == (ggml_oracle.block_size(fmt),
                                                   ggml_oracle.type_size(fmt))


def test_mxfp4_hand_case_ties_go_to_smaller_magnitude():
    # amax = 4 -> floor(log2 4) = 2 -> e = 2 - 2 + 127 = 127, X = 1, d = 1/2.
    # x = 0.75: between 0.5 (code 1) and 1.0 (code 2), a tie -> code 1 (half-even gives 1.0);
    # 1.75 -> 1.5 (code 3); 3.5 -> 3 (code 5); -3.5 -> -3 (code 13); 5 -> 4 (code 6: 4 and 6
    # tie, the smaller wins); 0.25 -> 0 (code 0); -0.25 -> +0 (code 0, never -0 = code 8).
    x = np.zeros((1, 32), np.float32)
    x[0, :8] = [4.0, 0.75, 1.75, 3.5, -3.5, 5.0, 0.25, -0.25]
    b = ggml.quantize(x, "MXFP4")
    assert b[0, 0] == 127
    q = mxfp.unpack_halves(b[0, 1:])
    assert q[:8].tolist() == [6, 1, 3, 5, 13, 6, 0, 0] and (q[8:] == 0).all()
    # nibble order: byte 1 + j holds code j (low) and code j + 16 (high)
    x[0, 16] = -4.0                                        # code 14 in the high nibble of byte 1
    assert ggml.quantize(x, "MXFP4")[0, 1] == (6 | 14 << 4)
    assert ggml.dequantize(b, "MXFP4")[0, :8].tolist() == [4, 0.5, 1.5, 3, -3, 4, 0, 0]


def test_mxfp4_saturates_above_six_x():
    # amax = 7.5 -> floor(log2 7.5) = 2 -> X = 1: 7.5 and 6.9 clamp to 6 (code 7)
    x = np.zeros((1, 32), np.float32)
    x[0, :2] = [7.5, -6.9]
    q = mxfp.unpack_halves(ggml.quantize(x, "MXFP4")[0, 1:])
    assert q[:2].tolist() == [7, 15]


def test_e8m0_exponent_matches_log2f_near_powers_of_two():
    """Oracle: the C library's log2f (through ctypes), floor and + 125 as ggml's C; every
    float32 within 7 ulps below each power of two 2^-149 ... 2^127, and the powers."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.log2f.restype = ctypes.c_float
    libm.log2f.argtypes = [ctypes.c_float]
    amax = []
    for k in range(-149, 128):
        a = np.float32(2.0 ** k)
        amax.append(a)
        for _ in range(7):
            a = np.nextafter(a, np.float32(0))
            amax.append(a)
    amax = np.array([a for a in amax if a > 0], np.float32)
    expected = [(int(np.floor(libm.log2f(float(a)))) + 125) % 256 for a in amax]
    assert mxfp.ggml_e8m0(amax).tolist() == expected
    # hand: amax 1 -> 125; the float below 1 -> 124; 2^-126 -> -1 wraps to 255 (x86-64 C)
    assert mxfp.ggml_e8m0(np.float32([1.0, np.nextafter(np.float32(1), np.float32(0)), 2.0**-126, 0.0])).tolist() == \
        [125, 124, 255, 0]


def test_ue4m3_hand_cases():
    # v = 1 -> exponent 0 + 7 = 7, mantissa 0 -> 0x38;  1.0625 (= 1 + 1/16, the tie between
    # 1 and 1.125) rounds half UP -> 0x39;  v = 250 -> exponent 7 + 7 = 14, mantissa bits 111 +
    # round bit 1 -> carry to exponent 15 -> 0x7E (448);  256 and 300 -> exponent 15 -> 0x7E;
    # 1000 clamps to 448 -> 0x7E;  2^-7 = 4/512 -> subnormal code 4;  7.6/512 -> trunc(8.1) = 8,
    # clamped to 7 (not the normal 2^-6 = 0x08);  0.4/512 -> trunc(0.9) = 0;  0 -> 0
    v = np.float32([1.0, 1.0625, 250.0, 256.0, 300.0, 1000.0, 2.0**-7, 7.6 / 512, 0.4 / 512, 0.0])
    assert mxfp.ggml_fp32_to_ue4m3(v).tolist() == [0x38, 0x39, 0x7E, 0x7E, 0x7E, 0x7E, 4, 7, 0, 0]
    # decode (half the E4M3 value): 0x38 -> 0.5, 0x7E -> 224, 0x07 -> 7/512/2, 0x7F -> 0
    assert mxfp.ue4m3_to_fp32_half(np.uint8([0x38, 0x7E, 0x07, 0x7F, 0])).tolist() == \
        [0.5, 224.0, 7 / 1024, 0.0, 0.0]


def test_nvfp4_hand_case_layout():
    # sub-block 0: amax 6 -> v = 1 -> u = 0x38, d = 1/2, codes = E2M1 of x (exact grid values);
    # sub-block 1: zeros -> u = 0, codes 0;  byte 4 + 8s + j = code j | code j + 8 << 4
    x = np.zeros((1, 64), np.float32)
    x[0, :16] = [6, -6, 0.5, 1, 1.5, 2, 3, 4, -0.5, -1, -1.5, -2, -3, -4, 0, 6]
    b = ggml.quantize(x, "NVFP4")
    assert b[0, :4].tolist() == [0x38, 0, 0, 0]
    codes = [7, 15, 1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14, 0, 7]
    assert b[0, 4:12].tolist() == [codes[j] | codes[j + 8] << 4 for j in range(8)]
    assert (b[0, 12:] == 0).all()
    assert np.array_equal(ggml.dequantize(b, "NVFP4"), x)


def test_imatrix_is_ignored():
    x = stress_tensor("normal", (4, 128), seed=2)
    w = np.linspace(0.1, 5, 128).astype(np.float32)
    for fmt in TYPES:
        assert not ggml.block_type(fmt).uses_imatrix
        assert np.array_equal(ggml.quantize(x, fmt, imatrix=w), ggml.quantize(x, fmt))


# --- ggml's C quantizer -------------------------------------------------------------------------

@needs_ggml
@pytest.mark.parametrize("fmt", TYPES)
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_bytes_equal_ggml_c_on_stress(fmt, kind):
    """Oracle: ggml's C quantizer and decoder (tests/ggml_oracle.py), gguf's decoder."""
    check_against_c(stress_tensor(kind, (8, 256), seed=11), fmt)


@needs_ggml
@pytest.mark.parametrize("fmt", TYPES)
def test_bytes_equal_ggml_c_on_ties(fmt):
    """Oracle: ggml's C. Every value sits on a midpoint of two E2M1 neighbours (or one ulp
    off it) at the block scale; the block maximum fixes the scale to a power of two."""
    rng = np.random.default_rng(7)
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)
    X = np.float32(2.0) ** rng.integers(-20, 20, (16, 1)).astype(np.float32)
    v = rng.choice(mids, (16, 256)) * rng.choice([-1, 1], (16, 256)).astype(np.float32) * X
    v = np.where(rng.random(v.shape) < 0.2, np.nextafter(v, np.float32(np.inf)), v)
    v = np.where(rng.random(v.shape) < 0.2, np.nextafter(v, np.float32(-np.inf)), v)
    v[:, ::16] = np.float32(6.0) * X                     # amax = 6 X in every (sub-)block
    check_against_c(v.astype(np.float32), fmt)


@needs_ggml
@pytest.mark.parametrize("fmt", TYPES)
def test_bytes_equal_ggml_c_on_scale_boundaries(fmt):
    """Oracle: ggml's C. Block maxima on and next to every power of two and every E4M3 code
    times 6 (MXFP4's exponent steps, NVFP4's UE4M3 rounding, its subnormal and exp-15 cases)."""
    u = np.arange(1, 0x7F, dtype=np.uint8)
    e4m3 = mxfp.ue4m3_to_fp32_half(u) * np.float32(2)                  # the E4M3 values
    mid = (e4m3[:-1] + e4m3[1:]) / np.float32(2)
    amax = np.concatenate([e4m3 * 6, mid * 6, np.float32(2.0) ** np.arange(-130, 128)])
    amax = np.concatenate([amax, np.nextafter(amax, np.float32(0)),
                           np.nextafter(amax, np.float32(np.inf))]).astype(np.float32)
    amax = amax[np.isfinite(amax)]
    qk = ggml.block_type(fmt).block_size
    n = -(-len(amax) // 4) * 4
    amax = np.resize(amax, n)
    rng = np.random.default_rng(3)
    x = (rng.uniform(-1, 1, (n, qk)) * amax[:, None]).astype(np.float32)
    x[:, 0] = amax
    sub = 16 if fmt == "NVFP4" else qk
    x[:, ::sub] = amax[:, None]
    check_against_c(x.reshape(n // 4, 4 * qk), fmt)


@needs_ggml
@settings(max_examples=30)
@given(fmt=st.sampled_from(TYPES), seed=st.integers(0, 2**31), scale_exp=st.integers(-40, 40))
def test_bytes_equal_ggml_c_property(fmt, seed, scale_exp):
    """Oracle: ggml's C, on normal tensors scaled by 2^-40 ... 2^40."""
    x = stress_tensor("normal", (2, 192), seed) * np.float32(2.0 ** scale_exp)
    check_against_c(x.astype(np.float32), fmt)


@needs_ggml
@pytest.mark.parametrize("fmt", TYPES)
def test_bytes_equal_ggml_c_on_smollm2_weights(fmt):
    """Oracle: ggml's C, on real weights of the bundled SmolLM2-135M (the dequantized Q4_1
    tensors of block 0 and the first 256 embedding rows)."""
    from refquant.models.loaders import load_model
    W = load_model().weights
    for name in ("layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
                 "layers.0.mlp.down_proj.weight"):
        check_against_c(W[name], fmt)
    check_against_c(W["embed_tokens.weight"][:256], fmt)


# --- bad input ----------------------------------------------------------------------------------

def test_bad_input_raises():
    with pytest.raises(ValueError, match="multiple of 64"):
        ggml.quantize(np.zeros((2, 32), np.float32), "NVFP4")
    with pytest.raises(ValueError, match="multiple of 32"):
        ggml.quantize(np.zeros((2, 48), np.float32), "MXFP4")
    with pytest.raises(ValueError, match="NaN or Inf"):
        ggml.quantize(np.full((1, 64), np.inf, np.float32), "NVFP4")
    with pytest.raises(ValueError, match="multiple of 17"):
        ggml.dequantize(np.zeros((1, 18), np.uint8), "MXFP4")
    with pytest.raises(ValueError, match="multiple of 36"):
        ggml.dequantize(np.zeros((1, 35), np.uint8), "NVFP4")


# --- the OCP / NVIDIA rules written as GGML bytes -----------------------------------------------

@needs_ggml
def test_mxfp4_ocp_bytes_decode_to_mx_dequantize():
    """Oracle: ggml's C decoder reads the OCP-rule bytes back to refquant.schemes.mx's values
    (OCP scalar oracle in tests/test_mx.py); hand case: the ties where the rules differ."""
    from refquant.schemes.mx import mx_dequantize, mx_quantize
    x = stress_tensor("heavy_tail", (8, 256), seed=4)
    b = mxfp.quantize_mxfp4_ocp(x)
    assert b.shape == (8, 8 * 17)
    want = mx_dequantize(mx_quantize(x, "mxfp4"))
    assert np.array_equal(ggml_oracle.dequantize(b, "MXFP4", 256), want)
    # X = 1: 0.75 -> 1 (ggml: 0.5), 1.75 -> 2 (ggml: 1.5), 3.5 -> 4 (ggml: 3), 5 -> 4 (both)
    t = np.zeros((1, 32), np.float32)
    t[0, :5] = [4.0, 0.75, 1.75, 3.5, 5.0]
    assert ggml.dequantize(mxfp.quantize_mxfp4_ocp(t), "MXFP4")[0, :5].tolist() == [4, 1, 2, 4, 4]
    assert ggml.dequantize(ggml.quantize(t, "MXFP4"), "MXFP4")[0, :5].tolist() == [4, .5, 1.5, 3, 4]


@needs_ggml
def test_nvfp4_nvidia_bytes_decode_to_nvfp4_dequantize():
    """Oracle: ggml's C decoder reads the NVIDIA-rule bytes back to refquant.schemes.mx's
    values (torchao transcription in tests/test_mx.py) at tensor scale 1."""
    from refquant.schemes.mx import mx_quantize, nvfp4_dequantize, nvfp4_quantize
    x = stress_tensor("normal", (4, 128), seed=2)
    b = mxfp.quantize_nvfp4_nvidia(x)
    want = nvfp4_dequantize(nvfp4_quantize(x, tensor_scale=1.0))
    assert np.array_equal(ggml_oracle.dequantize(b, "NVFP4", 128), want)
    with pytest.raises(ValueError, match="no field for a tensor scale"):
        mxfp.nvfp4_from_nv(nvfp4_quantize(x))
    with pytest.raises(ValueError, match="blocks of 32 along the last axis"):
        mxfp.mxfp4_from_mx(mx_quantize(x, "mxfp4", block_size=16))


@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_mxfp4_equals_gguf_quantizer(kind):
    """Oracle: the gguf package's own MXFP4 quantizer (gguf.quants.quantize; gguf 0.19 has no
    NVFP4 quantizer, only its decoder)."""
    x = stress_tensor(kind, (8, 256), seed=11)
    with np.errstate(all="ignore"):                       # gguf casts negative exponents
        ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType.MXFP4)
    assert_bytes_equal(ggml.quantize(x, "MXFP4"), ref, "MXFP4", x=x)
