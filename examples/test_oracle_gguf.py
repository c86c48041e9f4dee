"""Worked example: refquant as the oracle for an implementation this project does not own.

The subject is the ``gguf`` package's NumPy port of llama.cpp's Q8_0 / Q4_0 / Q4_1 quantizers
(``gguf.quants.quantize``). The oracle is refquant: ``refquant.formats.ggml`` (the same formats,
written independently from the C reference and itself tested against an exact Fraction oracle,
see refquant/testing/golden/PROVENANCE.md) and refquant's generic round-to-nearest quantizer.

Run it:  python -m pytest examples/test_oracle_gguf.py -q

What it found (gguf 0.19.0, NumPy 2.4; each finding is a test below):

1. Bit-exact. On every stress tensor (heavy tails, outlier channels, constant rows, subnormals,
   values piled at the clip edges, signed zeros, exact and near rounding ties), on the golden
   vectors and on the real SmolLM2-135M weights, gguf's bytes equal refquant's for all three
   formats (``np.array_equal``).
2. Q8_0 is *not* refquant's round-to-nearest at the same settings (int8 symmetric restricted,
   groups of 32, ties away from zero) at exact ties: gguf multiplies by the float32 reciprocal
   ``id = 1/d``, and ``x * id`` lands just below ``k + 1/2`` for about 1 in 16 ties, which
   ``roundf`` then rounds down. Off by one code, only at verified ties.
3. Q4_0 and Q4_1 do not round to nearest either: ``trunc(x * id + 8.5)`` rounds ties UP
   (towards +inf, so Q4_0 sends -2.5 to -2 where ``roundf`` gives -3), and the float32 addition
   rounds a value within half an ulp below a tie up to the tie first (0.49999997 -> code for 1).
4. Q4_0's scale is ``d = max / -8`` with the SIGNED largest-magnitude value: ``d`` is negative
   whenever that value is positive, so ``d`` is not a positive scale as refquant's QParams
   requires; the block uses all 16 codes and the extreme value always gets code 0.
5. Scales are computed in float32 but stored in float16: codes are chosen on a grid that is then
   moved. For small blocks the stored ``d`` is a float16 subnormal (relative error up to 2^-1)
   or flushes to 0 (a block with max |x| < 127 * 2^-25 ~ 3.8e-6 dequantizes to all zeros for
   Q8_0) -- refquant's uniform quantizer keeps a float32 scale >= 2^-126 instead.
6. All-zero blocks: gguf's Q4_0 takes the sign of ``d`` from the block's first element
   (``x[argmax |x|] = x[0]``), so a block of zeros starting with -0.0 stores d = +0.0 while the C
   reference (whose ``max`` starts at 0.0f) stores -0.0. Dequantized values agree (all zero);
   the bytes of gguf and of the C reference differ. refquant follows gguf.
7. Silent garbage where refquant raises: NaN/Inf input and scales that overflow float16
   (max |x| >~ 8.3e6 for Q8_0) are written by gguf as NaN/Inf scales without an error.
"""

import gguf
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refquant as rq
from refquant.schemes.spec import expand
from refquant.formats import ggml
from refquant.models.layout import scan_gguf
from refquant.models.resources import bundled_model_path
from refquant.testing import (STRESS_KINDS, assert_ggml_equal, assert_quantized_close,
                              reference_case, stress_tensor, stress_tensors, tie_tensor)

FORMATS = ("Q8_0", "Q4_0", "Q4_1")
QTYPE = {f: getattr(gguf.GGMLQuantizationType, f) for f in FORMATS}


def gguf_quantize(x, fmt):
    with np.errstate(all="ignore"):                  # gguf warns on its own 1/0 and inf casts
        return gguf.quants.quantize(np.asarray(x, np.float32), QTYPE[fmt])


# --- 1. bit-exact ---------------------------------------------------------------------------------

@settings(max_examples=60)
@given(fmt=st.sampled_from(FORMATS),
       x=stress_tensors(shape=st.tuples(st.integers(1, 8), st.integers(1, 6).map(lambda n: 32 * n))))
def test_gguf_bytes_equal_refquant_on_stress_tensors(fmt, x):
    assert_ggml_equal(gguf_quantize(x, fmt), ggml.quantize(x, fmt), fmt, x=x,
                      err_msg=f"gguf.quants.quantize disagrees with refquant ({fmt})")


@pytest.mark.parametrize("fmt", FORMATS)
def test_gguf_bytes_equal_refquant_on_ties(fmt):
    # exact ties of a uniform grid and their float32 neighbours
    spec = rq.QuantSpec(bits=8 if fmt == "Q8_0" else 4, symmetric=fmt != "Q4_1",
                        granularity="group", group_size=32)
    x = tie_tensor(spec, (32, 256), seed=1)
    x[::2] = np.nextafter(x[::2], np.float32(np.inf))
    assert_ggml_equal(gguf_quantize(x, fmt), ggml.quantize(x, fmt), fmt, x=x)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gguf_reproduces_the_golden_vectors(fmt):
    case = reference_case(f"ggml_{fmt.lower()}")
    assert_ggml_equal(gguf_quantize(case.x, fmt), case.blocks, fmt, x=case.x)
    np.testing.assert_array_equal(gguf.quants.dequantize(case.blocks, QTYPE[fmt]), case.dequantized)


@pytest.fixture(scope="module")
def smollm2_weights():
    # the tensors' bytes, memory-mapped at the offsets of the GGUF header (refquant's header scan
    # is much faster than gguf.GGUFReader, which parses the 49k-token vocabulary into arrays)
    path = bundled_model_path()
    spans = {s.name: s for s in scan_gguf(path)[0]}
    mm = np.memmap(path, np.uint8, mode="r")

    def rows(name, n_rows):
        s = spans[name]
        data = mm[s.start:s.start + s.n_bytes].reshape(s.shape[0], -1)
        return s.type_name, np.asarray(data[:n_rows])

    return {"blk.0.attn_q.weight": rows("blk.0.attn_q.weight", 576),
            "blk.29.ffn_down.weight": rows("blk.29.ffn_down.weight", 576),
            "token_embd.weight[:4096]": rows("token_embd.weight", 4096)}


def test_gguf_equals_refquant_on_real_weights(smollm2_weights):
    for label, (stored_fmt, data) in smollm2_weights.items():
        w = ggml.dequantize(data, stored_fmt)                      # the model's float weights
        np.testing.assert_array_equal(w, gguf.quants.dequantize(data, QTYPE[stored_fmt]))
        for fmt in FORMATS:
            assert_ggml_equal(gguf_quantize(w, fmt), ggml.quantize(w, fmt), fmt, x=w,
                              err_msg=f"{label} requantized to {fmt}")
        # the stored blocks are a fixed point of the reference quantizer
        assert_ggml_equal(ggml.quantize(w, stored_fmt), data, stored_fmt, x=w)


# --- 2.-4. rounding and scale conventions vs refquant's round-to-nearest --------------------------

def test_q8_0_differs_from_rtn_half_away_only_at_exact_ties():
    spec = rq.QuantSpec(bits=8, symmetric=True, restricted=True, granularity="group",
                        group_size=32, rounding="half_away")
    x = tie_tensor(spec, (64, 256), seed=0)
    qp = rq.calibrate(x, spec)
    ours = rq.quantize(x, qp, spec)
    blocks = ggml.unpack_blocks(gguf_quantize(x, "Q8_0"), "Q8_0")
    theirs = blocks.q.reshape(x.shape)
    # same scale (before gguf rounds it to float16)
    np.testing.assert_array_equal(qp.scale.astype(np.float16).view(np.uint16), blocks.d.view(np.uint16))
    n = int((ours != theirs).sum())
    assert 100 < n < x.size // 8, n                                # a minority of the ties
    # every disagreement is one code at an exact tie (tie_tol=0: x == (k + 1/2) s exactly) ...
    assert_quantized_close(theirs, ours, spec, qparams=qp, x=x, max_tie_mismatches=n)
    # ... and the cause is the float32 reciprocal: x * fl32(1/s) lands below k + 1/2
    s = expand(qp.scale, x.shape, spec)                    # [64, 256] float32
    prod = (x * (np.float32(1) / s).astype(np.float32)).astype(np.float32)
    differ = ours != theirs
    assert (np.abs(prod[differ]) < np.abs(x[differ].astype(np.float64) / s[differ])).all()
    # on data without exact ties the codes agree completely
    w = stress_tensor("normal", (64, 256), seed=0)
    qpw = rq.calibrate(w, spec)
    np.testing.assert_array_equal(ggml.unpack_blocks(gguf_quantize(w, "Q8_0"), "Q8_0").q.reshape(w.shape),
                                  rq.quantize(w, qpw, spec))


def test_q4_0_rounds_ties_up_and_uses_the_signed_max():
    # block: max |x| = 8 at x = -8 -> d = 1; x = -2.5 and 2.5 are ties
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [-8.0, -2.5, 2.5, np.float32(0.5) - np.float32(2**-25)]
    blk = ggml.unpack_blocks(gguf_quantize(x, "Q4_0"), "Q4_0")
    assert float(blk.d[0, 0]) == 1.0
    values = blk.q[0, 0, :4].astype(int) - 8
    assert values.tolist() == [-8, -2, 3, 1]                       # roundf would give -3 and 0
    rtn = rq.quantize(x[0, :4], rq.QParams(1.0), rq.QuantSpec(bits=4, rounding="half_away"))
    assert rtn.tolist() == [-8, -3, 3, 0]
    # flip the sign of the block: d becomes -1 (negative scale), the codes mirror
    blk = ggml.unpack_blocks(gguf_quantize(-x, "Q4_0"), "Q4_0")
    assert float(blk.d[0, 0]) == -1.0 and blk.q[0, 0, 0] == 0


def test_q4_1_ties_up_with_float32_double_rounding():
    x = np.zeros((1, 32), np.float32)
    x[0, :3] = [15.0, 2.5, np.float32(0.5) - np.float32(2**-25)]  # min 0, max 15 -> d = 1
    blk = ggml.unpack_blocks(gguf_quantize(x, "Q4_1"), "Q4_1")
    assert blk.q[0, 0, :3].tolist() == [15, 3, 1]                  # nearest integer of the last: 0


# --- 5.-7. float16 scales, zero blocks, bad input -------------------------------------------------

def test_float16_scale_underflow():
    # max |x| = 1e-6: d = 7.9e-9 flushes to float16 0 -> the block dequantizes to zeros
    x = np.linspace(-1e-6, 1e-6, 32, dtype=np.float32)[None]
    b = gguf_quantize(x, "Q8_0")
    assert float(ggml.unpack_blocks(b, "Q8_0").d[0, 0]) == 0.0
    assert (gguf.quants.dequantize(b, QTYPE["Q8_0"]) == 0).all()
    # refquant's uniform quantizer at the same settings keeps a float32 scale: error <= s/2
    spec = rq.QuantSpec(bits=8, symmetric=True, restricted=True, granularity="group", group_size=32)
    err = np.abs(rq.fake_quantize(x, spec) - x).max()
    assert err <= 1e-6 / 127 / 2 * 1.0001
    # max |x| = 1e-3: d = 7.9e-6 is a float16 subnormal: 10 significant bits become 7
    x = (np.linspace(-1, 1, 32, dtype=np.float32) * np.float32(1e-3))[None]
    blk = ggml.unpack_blocks(gguf_quantize(x, "Q8_0"), "Q8_0")
    d32 = np.float32(1e-3) / np.float32(127)
    rel = abs(float(blk.d[0, 0]) - float(d32)) / float(d32)
    assert 2**-11 < rel < 2**-7                                    # worse than a normal float16


def test_all_zero_q4_0_block_sign_of_d():
    x = np.zeros((2, 32), np.float32)
    x[1, 0] = -0.0
    b = gguf_quantize(x, "Q4_0")
    # first element +0.0 -> d = -0.0 (as the C reference); first element -0.0 -> d = +0.0
    # (the C reference would store -0.0: its max starts at 0.0f and is never replaced)
    assert b[0, :2].tolist() == [0x00, 0x80] and b[1, :2].tolist() == [0x00, 0x00]
    # refquant follows ggml's C here (the oracle of tests/test_ggml.py), so it differs from gguf
    # exactly in the sign bit of the second block's d
    ours = ggml.quantize_q4_0(x)
    assert np.array_equal(ours[0], b[0]) and ours[1, :2].tolist() == [0x00, 0x80]
    assert np.array_equal(ours[1, 2:], b[1, 2:])
    assert (gguf.quants.dequantize(b, QTYPE["Q4_0"]) == 0).all()


def test_gguf_writes_garbage_where_refquant_raises():
    big = np.full((1, 32), 1e7, np.float32)
    nan = np.zeros((1, 32), np.float32)
    nan[0, 3] = np.nan
    b = gguf_quantize(big, "Q8_0")
    assert np.isinf(ggml.unpack_blocks(b, "Q8_0").d.astype(np.float32)).all()   # silent inf
    with pytest.raises(ValueError, match="overflows float16"):
        ggml.quantize_q8_0(big)
    b = gguf_quantize(nan, "Q8_0")
    assert np.isnan(ggml.unpack_blocks(b, "Q8_0").d.astype(np.float32)).all()   # silent NaN
    with pytest.raises(ValueError, match="NaN"):
        ggml.quantize_q8_0(nan)


@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_dequantize_equal(kind):
    x = stress_tensor(kind, (8, 128), seed=9)
    for fmt in FORMATS:
        b = ggml.quantize(x, fmt)
        np.testing.assert_array_equal(gguf.quants.dequantize(b, QTYPE[fmt]), ggml.dequantize(b, fmt))

