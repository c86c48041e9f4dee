"""Tests of refquant.schemes.mx (OCP MX formats, NVFP4, FP4 packing).

Oracles:
1. hand calculations (in the comments);
2. a scalar loop in this file for the OCP rule: per block, the exponent from ``math.frexp``,
   ``x / 2^E`` in Python floats (exact), clamped to the element's max and cast by ``ml_dtypes``
   (float8_e4m3fn, float8_e5m2, float6_e2m3fn, float6_e3m2fn, float4_e2m1fn: round half to
   even); MXINT8 by Python's ``round`` (half to even on the exact value); the exact "rceil"
   exponent by ``fractions.Fraction``;
3. torchao's ``to_mx`` (FLOOR, RCEIL) and ``nvfp4_quantize`` transcribed in float32 torch
   operations (torch's own float8_e4m3fn cast; torchao is not a dependency), where torch is
   installed (crosscheck extra).
"""

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refquant.schemes import mx
from refquant.testing import STRESS_KINDS, stress_tensor

FP_FORMATS = {"mxfp8_e4m3": (ml_dtypes.float8_e4m3fn, 448.0, 8),
              "mxfp8_e5m2": (ml_dtypes.float8_e5m2, 57344.0, 15),
              "mxfp6_e2m3": (ml_dtypes.float6_e2m3fn, 7.5, 2),
              "mxfp6_e3m2": (ml_dtypes.float6_e3m2fn, 28.0, 4),
              "mxfp4": (ml_dtypes.float4_e2m1fn, 6.0, 2)}
ALL = tuple(FP_FORMATS) + ("mxint8",)


# --- scalar oracle ------------------------------------------------------------------------------

def oracle_exponent(amax: float, fmt: str, rule: str) -> int:
    if amax == 0:
        return -127
    if fmt == "mxint8":
        m, emax = Fraction(127, 64), 0
    else:
        m, emax = Fraction(FP_FORMATS[fmt][1]), FP_FORMATS[fmt][2]
    if rule == "ocp":
        E = math.frexp(amax)[1] - 1 - emax
    else:                                               # smallest E with amax <= m 2^E
        E = -300
        while Fraction(amax) > m * Fraction(2) ** E:
            E += 1
    return max(-127, min(127, E))


def oracle_mx(x: np.ndarray, fmt: str, rule: str = "ocp", k: int = 32):
    """(codes, E8M0 codes) of x (2-D, blocks along the last axis), one block at a time."""
    codes = np.zeros(x.shape, np.uint8)
    scales = np.zeros((x.shape[0], x.shape[1] // k), np.uint8)
    for r in range(x.shape[0]):
        for b in range(x.shape[1] // k):
            blk = [float(v) for v in x[r, b * k:(b + 1) * k]]
            E = oracle_exponent(max(abs(v) for v in blk), fmt, rule)
            scales[r, b] = E + 127
            for j, v in enumerate(blk):
                P = v / 2.0**E                          # exact: a power-of-two division
                if fmt == "mxint8":
                    q = max(-127, min(127, round(P * 64)))
                    codes[r, b * k + j] = q & 0xFF
                else:
                    dt, m, _ = FP_FORMATS[fmt]
                    P = max(-m, min(m, P))
                    codes[r, b * k + j] = np.array(P).astype(dt).view(np.uint8)
    return codes, scales


def oracle_dequant(codes, scales, fmt, k=32):
    X = scales.view(ml_dtypes.float8_e8m0fnu).astype(np.float64).repeat(k, axis=-1)
    if fmt == "mxint8":
        P = codes.view(np.int8).astype(np.float64) / 64
    else:
        P = codes.view(FP_FORMATS[fmt][0]).astype(np.float64)
    return (P * X).astype(np.float32)


# --- hand-calculated cases ----------------------------------------------------------------------

def test_hand_case_mxfp8_e4m3():
    # amax = 1000 -> floor(log2) = 9 -> E = 9 - 8 = 1, X = 2, code 128; 1000 / 2 = 500 clamps
    # to 448 (0x7E); 3 / 2 = 1.5 -> 0x3C; -0.25 / 2 = -0.125 = -2^-3 -> 0xA0
    x = np.zeros((1, 32))
    x[0, :3] = [1000.0, 3.0, -0.25]
    q = mx.mx_quantize(x, "mxfp8_e4m3")
    assert q.scales.tolist() == [[128]] and q.codes[0, :3].tolist() == [0x7E, 0x3C, 0xA0]
    assert mx.mx_dequantize(q)[0, :3].tolist() == [896.0, 3.0, -0.25]
    # rceil: smallest E with 1000 <= 448 2^E is E = 2 (1792): X = 4, nothing clips;
    # 1000 / 4 = 250 rounds to 256 (E4M3 step 16 in [128, 256)) -> 1024
    r = mx.mx_quantize(x, "mxfp8_e4m3", scale_rule="rceil")
    assert r.scales.tolist() == [[129]] and mx.mx_dequantize(r)[0, 0] == 1024.0


def test_hand_case_mxint8_and_zero_block():
    # amax = 1.5 -> E = 0 - 0 = 0, X = 1: q = round(64 x): 1.5 -> 96, -0.01 -> -0.64 -> -1
    # (0xFF); an all-zero block gets E8M0 code 0 (2^-127) and codes 0
    x = np.zeros((2, 32))
    x[0, :2] = [1.5, -0.01]
    q = mx.mx_quantize(x, "mxint8")
    assert q.scales.tolist() == [[127], [0]]
    assert q.codes[0, :2].tolist() == [96, 0xFF] and (q.codes[1] == 0).all()


def test_axis_and_block_size():
    x = stress_tensor("normal", (64, 6), seed=1)
    a = mx.mx_quantize(x, "mxfp4", axis=0, block_size=16)
    b = mx.mx_quantize(x.T, "mxfp4", axis=-1, block_size=16)
    assert a.scales.shape == (4, 6) and np.array_equal(a.scales, b.scales.T)
    assert np.array_equal(mx.mx_dequantize(a), mx.mx_dequantize(b).T)


# --- the scalar oracle --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ALL)
@pytest.mark.parametrize("rule", mx.SCALE_RULES)
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_matches_scalar_oracle(fmt, rule, kind):
    """Oracle: the scalar loop above (frexp / Fraction exponent, ml_dtypes casts)."""
    x = stress_tensor(kind, (3, 64), seed=5)
    q = mx.mx_quantize(x, fmt, scale_rule=rule)
    codes, scales = oracle_mx(x, fmt, rule)
    assert np.array_equal(q.scales, scales)
    assert np.array_equal(q.codes, codes)
    assert np.array_equal(mx.mx_dequantize(q), oracle_dequant(codes, scales, fmt))


@pytest.mark.parametrize("fmt", ALL)
def test_ties_match_scalar_oracle(fmt):
    """Oracle: the scalar loop; inputs on exact midpoints of the element grid at scale X."""
    rng = np.random.default_rng(2)
    x = stress_tensor("normal", (4, 64), seed=3).astype(np.float64)
    q0 = mx.mx_quantize(x, fmt)
    grid = mx.mx_dequantize(q0).astype(np.float64)
    nxt = np.roll(np.sort(np.abs(grid), axis=-1), -1, axis=-1)
    x = np.where(rng.random(x.shape) < 0.5, (np.abs(grid) + nxt) / 2 * np.sign(x), x)
    x[:, ::32] = np.abs(x).max() * 1.01
    q = mx.mx_quantize(x, fmt)
    codes, scales = oracle_mx(x, fmt)
    assert np.array_equal(q.codes, codes) and np.array_equal(q.scales, scales)


@settings(max_examples=40)
@given(fmt=st.sampled_from(ALL), seed=st.integers(0, 2**31), e=st.integers(-130, 120))
def test_matches_scalar_oracle_at_all_scales(fmt, seed, e):
    """Oracle: the scalar loop, on normal data scaled by 2^e (E8M0 clamps at both ends)."""
    x = stress_tensor("normal", (1, 64), seed).astype(np.float64) * 2.0**e
    q = mx.mx_quantize(x, fmt)
    codes, scales = oracle_mx(x, fmt)
    assert np.array_equal(q.codes, codes) and np.array_equal(q.scales, scales)


# --- properties ---------------------------------------------------------------------------------

@settings(max_examples=30)
@given(fmt=st.sampled_from(ALL), rule=st.sampled_from(mx.SCALE_RULES), seed=st.integers(0, 2**31))
def test_idempotent_and_sign_symmetric(fmt, rule, seed):
    x = stress_tensor("heavy_tail", (2, 64), seed)
    x_hat = mx.mx_dequantize(mx.mx_quantize(x, fmt, scale_rule=rule))
    assert np.array_equal(mx.mx_dequantize(mx.mx_quantize(x_hat, fmt, scale_rule=rule)), x_hat)
    assert np.array_equal(mx.mx_dequantize(mx.mx_quantize(-x, fmt, scale_rule=rule)), -x_hat)


@pytest.mark.parametrize("fmt", ALL)
def test_rceil_never_clips_and_ocp_error_bound(fmt):
    """rceil: |x| <= max|P| X for every element, so the error is at most half a grid step;
    ocp: the largest element of each block may clip, but never by more than amax / 2."""
    x = stress_tensor("normal", (8, 256), seed=9)
    for rule in mx.SCALE_RULES:
        q = mx.mx_quantize(x, fmt, scale_rule=rule)
        X = np.ldexp(1.0, q.scales.astype(int) - 127).repeat(32, axis=-1)
        m = 127 / 64 if fmt == "mxint8" else FP_FORMATS[fmt][1]
        err = np.abs(mx.mx_dequantize(q) - x)
        if rule == "rceil":
            assert np.all(np.abs(x) <= m * X)
        amax = np.abs(x).reshape(8, -1, 32).max(-1).repeat(32, axis=-1)
        assert np.all(err <= amax / 2)


def test_rceil_differs_from_torchao_float32_just_above_a_power_of_two():
    """Oracle: hand calculation, and torchao's float32 RCEIL transcribed (torch ops)."""
    # amax = 448 2^16 (1 + 2^-23): amax / 448 = 2^16 (1 + 2^-23) exactly; its log2 is
    # 16 + 1.7e-7, which float32 (spacing 1.9e-6 at 16) rounds to 16, so torchao's RCEIL takes
    # X = 2^16 and clips amax by one part in 2^23; the exact rule (refquant) takes X = 2^17
    # (E8M0 code 144)
    a = float(np.float32(448.0 * 2**16) * (1 + np.float32(2.0**-23)))
    x = np.zeros((1, 32))
    x[0, 0] = a
    assert mx.mx_quantize(x, "mxfp8_e4m3", scale_rule="rceil").scales.tolist() == [[144]]
    assert torchao_to_mx_e4m3(x, "rceil")[1].tolist() == [[143]]


# --- torchao's rules transcribed ------------------------------------------------------------------

def torchao_to_mx_e4m3(x, rule):
    """torchao to_mx for float8_e4m3fn, block 32, float32 input (FLOOR and RCEIL)."""
    torch = pytest.importorskip("torch")
    d = torch.tensor(x, dtype=torch.float32).reshape(-1, 32)
    amax = d.abs().amax(1)
    if rule == "rceil":
        descale = amax / 448.0
        e = (torch.clamp(torch.ceil(torch.log2(descale)), min=-127, max=127) + 127).to(torch.uint8)
        mul = torch.where(e == 0, 1.0, torch.exp2(127 - e.to(torch.float32)))
        lp = torch.clamp(d * mul[:, None], -448.0, 448.0)
    else:
        bits = (amax + 2.0**-126 * (amax == 0)).view(torch.int32)
        e = torch.clamp(((bits >> 23) & 0xFF) - 127 - 8, -127, 128) + 127
        e = e.to(torch.uint8)
        scale = torch.clamp((e.to(torch.int32) << 23).view(torch.float32), min=2.0**-126)
        lp = torch.clamp(d / scale[:, None], -448.0, 448.0)
    return (lp.to(torch.float8_e4m3fn).view(torch.uint8).reshape(np.shape(x)).numpy(),
            e.numpy().reshape(np.shape(x)[0], -1))


@pytest.mark.parametrize("rule,ours", [("floor", "ocp"), ("rceil", "rceil")])
@pytest.mark.parametrize("kind", ["normal", "heavy_tail", "outlier_channels", "clip_edges"])
def test_matches_torchao_transcription(rule, ours, kind):
    """Oracle: torchao's to_mx (FLOOR = OCP, RCEIL) in float32 torch ops, torch's e4m3 cast."""
    x = stress_tensor(kind, (16, 256), seed=4)
    codes, scales = torchao_to_mx_e4m3(x, rule)
    q = mx.mx_quantize(x, "mxfp8_e4m3", scale_rule=ours)
    assert np.array_equal(q.scales, scales) and np.array_equal(q.codes, codes)


def torchao_nvfp4(x):
    """torchao nvfp4_quantize with a per-tensor scale (float32 torch ops; E2M1 by ml_dtypes)."""
    torch = pytest.importorskip("torch")
    d = torch.tensor(x, dtype=torch.float32)
    s_t = d.abs().amax().to(torch.float32) / (448.0 * 6.0)
    blk = d.reshape(d.shape[0], -1, 16)
    block_scale = blk.abs().amax(-1).to(torch.float32) / 6.0
    u = torch.clamp(block_scale / s_t, min=2.0**-6, max=448.0).to(torch.float8_e4m3fn)
    total = s_t * u.to(torch.float32)
    P = torch.clamp(blk / total[..., None], -6.0, 6.0).reshape(d.shape).numpy()
    return (P.astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0xF,
            u.view(torch.uint8).numpy(), float(s_t))


@pytest.mark.parametrize("kind", ["normal", "heavy_tail", "outlier_channels", "clip_edges"])
def test_nvfp4_matches_torchao_transcription(kind):
    """Oracle: torchao's nvfp4_quantize transcribed (float32 torch, torch's e4m3 cast)."""
    x = stress_tensor(kind, (8, 128), seed=6)
    codes, u, s_t = torchao_nvfp4(x)
    nv = mx.nvfp4_quantize(x)
    assert nv.tensor_scale == s_t
    assert np.array_equal(nv.scales, u) and np.array_equal(nv.codes, codes)


def test_nvfp4_hand_case():
    # amax(|x|) = 2688 -> s_t = 1. Block 1: amax 3 -> 3 / 6 = 0.5 -> E4M3 0x30, total 0.5;
    # 0.75 / 0.5 = 1.5 -> 0x3 (1.5); 1.25 / 0.5 = 2.5, a tie of 2 and 3 -> even 2 (0x4)
    x = np.zeros((1, 32))
    x[0, 0] = 2688.0
    x[0, 16:19] = [3.0, 0.75, 1.25]
    nv = mx.nvfp4_quantize(x)
    assert nv.tensor_scale == 1.0 and nv.scales.tolist() == [[0x7E, 0x30]]
    assert nv.codes[0, 16:19].tolist() == [7, 3, 4]
    assert mx.nvfp4_dequantize(nv)[0, 16:19].tolist() == [3.0, 0.75, 1.0]
    # an all-zero tensor: s_t = 1, scales clipped to 2^-6 (0x08), codes 0
    z = mx.nvfp4_quantize(np.zeros((2, 16)))
    assert z.tensor_scale == 1.0 and (z.scales == 0x08).all() and (z.codes == 0).all()


def test_nvfp4_error_bound_and_axis():
    x = stress_tensor("normal", (32, 48), seed=8)
    nv = mx.nvfp4_quantize(x, axis=0)
    assert nv.scales.shape == (2, 48)
    # every non-clipped block: error <= half the E2M1 step at 6, i.e. amax_b / 6 * 1 (step 2)
    # times (1 + 2^-4) for the E4M3 rounding of the scale
    amax = np.abs(x).reshape(2, 16, 48).max(1).repeat(16, axis=0)
    assert np.all(np.abs(mx.nvfp4_dequantize(nv) - x) <= amax / 6 * (1 + 2.0**-4) + 1e-6)


# --- packing ------------------------------------------------------------------------------------

def test_pack_fp4_nibble_order():
    # code 2j -> low nibble, 2j+1 -> high: [1, 2] -> 0x21, [15, 0] -> 0x0F
    assert mx.pack_fp4(np.array([[1, 2, 15, 0]], np.uint8)).tolist() == [[0x21, 0x0F]]
    c = mx.mx_quantize(stress_tensor("normal", (3, 64), seed=1), "mxfp4").codes
    assert np.array_equal(mx.unpack_fp4(mx.pack_fp4(c), 64), c)


# --- bad input ----------------------------------------------------------------------------------

def test_bad_input_raises():
    x = np.zeros((2, 32))
    with pytest.raises(ValueError, match="unknown MX format 'mxfp3'"):
        mx.mx_quantize(x, "mxfp3")
    with pytest.raises(ValueError, match="block_size 32 does not divide the length 48"):
        mx.mx_quantize(np.zeros((2, 48)), "mxfp4")
    with pytest.raises(ValueError, match="block_size 16 does not divide the length 24"):
        mx.nvfp4_quantize(np.zeros((2, 24)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        mx.mx_quantize(np.full((1, 32), np.nan), "mxfp4")
    with pytest.raises(ValueError, match="scale_rule"):
        mx.mx_quantize(x, "mxfp4", scale_rule="ceil")
    with pytest.raises(ValueError, match="axis 2"):
        mx.mx_quantize(x, "mxfp4", axis=2)
    with pytest.raises(ValueError, match="tensor_scale"):
        mx.nvfp4_quantize(np.zeros((1, 16)), tensor_scale=0.0)
    with pytest.raises(ValueError, match="FP4 code 16"):
        mx.pack_fp4(np.array([16, 0]))
    q = mx.mx_quantize(x, "mxfp4")
    bad = mx.MXArray(q.codes, np.full_like(q.scales, 0xFF), "mxfp4", q.shape, 1, 32)
    with pytest.raises(ValueError, match="0xff is e8m0fnu NaN"):
        mx.mx_dequantize(bad)
    bad = mx.MXArray(np.full_like(q.codes, 16), q.scales, "mxfp4", q.shape, 1, 32)
    with pytest.raises(ValueError, match="code 16 is out of range"):
        mx.mx_dequantize(bad)
    bad = mx.MXArray(q.codes, q.scales[:1], "mxfp4", q.shape, 1, 32)
    with pytest.raises(ValueError, match=r"scales must have shape \(2, 1\)"):
        mx.mx_dequantize(bad)
    bad = mx.MXArray(q.codes[:, :16], q.scales, "mxfp4", q.shape, 1, 32)
    with pytest.raises(ValueError, match=r"codes of shape \(2, 16\) do not fit"):
        mx.mx_dequantize(bad)
    nv = mx.nvfp4_quantize(np.ones((1, 16)))
    with pytest.raises(ValueError, match="tensor_scale must be positive"):
        mx.nvfp4_dequantize(mx.NVFP4Array(nv.codes, nv.scales, -1.0, nv.shape, 1))


# --- sizes --------------------------------------------------------------------------------------

def test_size_report_bits_per_weight():
    """Oracle: hand count for a (4096, 4096) matrix: MXFP4 codes 4096 * 2048 bytes + one E8M0
    byte per 32 = 524,288 -> 8,912,896 bytes = 4.25 bits/weight; NVFP4 one E4M3 byte per 16 =
    1,048,576 + 4 bytes of tensor scale -> 9,437,188 bytes; MXFP6 6.25, MXFP8 / MXINT8 8.25."""
    import refquant as rq
    r = rq.size_report((4096, 4096), "mxfp4")
    assert (r.code_bytes, r.scale_bytes, r.total_bytes, r.bits_per_weight) == \
        (8_388_608, 524_288, 8_912_896, 4.25)
    r = rq.size_report((4096, 4096), "nvfp4")
    assert (r.scale_bytes, r.total_bytes) == (1_048_580, 9_437_188)
    assert r.bits_per_weight == 4.5 + 32 / 4096**2
    assert rq.size_report((576, 1536), "mxfp6_e3m2").bits_per_weight == 6.25
    assert rq.size_report((576, 1536), "mxfp8_e5m2").bits_per_weight == 8.25
    assert rq.size_report((576, 1536), "mxint8").bits_per_weight == 8.25
    with pytest.raises(ValueError, match="multiple of its block 16"):
        rq.size_report((4, 24), "nvfp4")
    with pytest.raises(ValueError, match="stores no zero points"):
        rq.size_report((4, 32), "mxfp4", zero_bits=4)


def test_public_names():
    import refquant as rq
    x = stress_tensor("normal", (2, 64), seed=0)
    assert np.array_equal(rq.mx_dequantize(rq.mx_quantize(x, "mxfp4")),
                          mx.mx_dequantize(mx.mx_quantize(x, "mxfp4")))
    assert rq.nvfp4_quantize is mx.nvfp4_quantize and rq.NVFP4Array is mx.NVFP4Array
    assert rq.pack_fp4 is mx.pack_fp4 and "mxfp4" in rq.MX_FORMATS
