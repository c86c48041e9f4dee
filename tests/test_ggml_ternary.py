"""Tests of refquant.formats.ggml.ternary (TQ1_0, TQ2_0).

Oracles:
1. hand calculations (worked out in the comments) and Python's own base-3 digits;
2. ggml's own C quantizer and decoder (``ggml_quantize_chunk`` / ``dequantize_row_tq*`` of the
   ``libggml-python`` wheel through ctypes, ``tests/ggml_oracle.py``), bytes compared exactly;
3. the ``gguf`` package's quantizer and decoder (``gguf.quants``).
"""

import gguf
import numpy as np
import pytest

import ggml_oracle
from refquant.formats import ggml
from refquant.formats.ggml import ternary
from refquant.testing import STRESS_KINDS, assert_ggml_equal, stress_tensor

FORMATS = ("TQ1_0", "TQ2_0")
GGUF_TYPE = {f: getattr(gguf.GGMLQuantizationType, f) for f in FORMATS}
needs_ggml = ggml_oracle.needs_ggml


def test_layout_sizes():
    # TQ1_0: 48 + 4 + 2 bytes per 256 values; TQ2_0: 64 + 2
    assert [ggml.block_bytes(f) for f in FORMATS] == [54, 66]
    assert [ggml.bits_per_weight(f) for f in FORMATS] == [1.6875, 2.0625]
    for fmt in FORMATS:
        t = ggml.block_type(fmt)
        assert (t.block_size, t.type_size) == gguf.GGML_QUANT_SIZES[GGUF_TYPE[fmt]]
        assert not t.uses_imatrix


def hand_block():
    # d = max|x| = 1 (float16 0x3C00), id = 1; trits by lroundf: 1 -> 1, -1 -> -1,
    # 0.5 -> 1 and -0.5 -> -1 (half away from zero), 0.49 -> 0; the rest 0
    x = np.zeros((1, 256), np.float32)
    x[0, [0, 32, 64, 96, 128]] = [1.0, -1.0, 0.5, -0.5, 0.49]
    return x


def test_tq2_0_hand_block():
    # byte 0 holds u = t + 1 of values 0, 32, 64, 96 in bits 0-1, 2-3, 4-5, 6-7:
    #   2 | 0 << 2 | 2 << 4 | 0 << 6 = 0x22; a byte of zeros is 1 | 4 | 16 | 64 = 0x55
    b = ggml.quantize(hand_block(), "TQ2_0")
    assert b[0, 0] == 0x22 and (b[0, 1:64] == 0x55).all() and b[0, 64:].tolist() == [0x00, 0x3C]
    x_hat = ggml.dequantize(b, "TQ2_0")
    assert x_hat[0, [0, 32, 64, 96, 128, 1]].tolist() == [1.0, -1.0, 1.0, -1.0, 0.0, 0.0]


def test_tq1_0_hand_block():
    # byte 0 holds values 0, 32, 64, 96, 128: u = 2, 0, 2, 0, 1 -> U = 162 + 18 + 1 = 181,
    # stored ceil(256 * 181 / 243) = 191. A byte of five zeros: U = 121 -> 128; a qh byte of
    # four zeros: U = 81 + 27 + 9 + 3 = 120 -> ceil(126.4) = 127.
    b = ggml.quantize(hand_block(), "TQ1_0")
    assert b[0, 0] == 191 and (b[0, 1:48] == 128).all() and (b[0, 48:52] == 127).all()
    assert b[0, 52:].tolist() == [0x00, 0x3C]
    x_hat = ggml.dequantize(b, "TQ1_0")
    assert x_hat[0, [0, 32, 64, 96, 128, 1]].tolist() == [1.0, -1.0, 1.0, -1.0, 0.0, 0.0]


def test_tq1_0_every_base3_byte_decodes_to_its_digits():
    # Oracle: Python's base-3 digits of U = 0 ... 242; the stored byte ceil(256 U / 243) must
    # give back digit n (most significant first) as (3 * (byte * 3^n mod 256)) >> 8
    U = np.arange(243)
    byte = (U * 256 + 242) // 243
    digits = ternary._decode_base3(byte.astype(np.uint8)[None, :], 5)[0]          # [5, 243]
    expected = [[(u // 3 ** (4 - n)) % 3 for u in U] for n in range(5)]
    assert digits.tolist() == expected


@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_bytes_equal_ggml_and_gguf(fmt, kind):
    """Oracles: ggml's C (ggml_quantize_chunk, tests/ggml_oracle.py) and gguf.quants.quantize;
    an importance matrix changes nothing (ggml ignores it); decoding equals ggml's
    dequantize_row_* and gguf.quants.dequantize."""
    x = stress_tensor(kind, (6, 512), seed=5)
    expected = ggml_oracle.quantize(x, fmt)
    got = ggml.quantize(x, fmt)
    assert_ggml_equal(got, expected, fmt, x=x)
    np.testing.assert_array_equal(ggml.quantize(x, fmt, imatrix=np.arange(512.0)), expected)
    np.testing.assert_array_equal(ggml_oracle.quantize(x, fmt, np.arange(512.0)), expected)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(gguf.quants.quantize(x, GGUF_TYPE[fmt]), expected)
    x_hat = ggml.dequantize(expected, fmt)
    np.testing.assert_array_equal(x_hat, ggml_oracle.dequantize(expected, fmt, 512))
    np.testing.assert_array_equal(x_hat, gguf.quants.dequantize(expected, GGUF_TYPE[fmt]))


@needs_ggml
@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_equal_ggml_real_weights_and_subnormal_blocks(fmt):
    """Oracle: ggml's C quantizer, on real SmolLM2-135M weights (the bundled GGUF's Q4_1 tensor
    decoded by gguf) and on a super-block of float32 subnormals, whose 1/d overflows (refquant
    uses id = 0; x86-64 C's lroundf(inf or NaN) + 1 gives the same trit)."""
    from refquant.models.resources import bundled_model_path
    reader = gguf.GGUFReader(str(bundled_model_path()))
    t = next(t for t in reader.tensors if t.name == "blk.2.ffn_down.weight")
    w = gguf.quants.dequantize(t.data, t.tensor_type)[:64].astype(np.float32)
    assert_ggml_equal(ggml.quantize(w, fmt), ggml_oracle.quantize(w, fmt), fmt, x=w)
    x = np.full((1, 256), 1e-40, np.float32)
    x[0, 1::3] = -3e-41
    assert_ggml_equal(ggml.quantize(x, fmt), ggml_oracle.quantize(x, fmt), fmt, x=x)
    assert (ggml.dequantize(ggml.quantize(x, fmt), fmt) == 0).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_input_raises(fmt):
    with pytest.raises(ValueError, match="length 288 is not a positive multiple of 256"):
        ggml.quantize(np.ones((2, 288), np.float32), fmt)
    with pytest.raises(ValueError, match=r"shape \(256,\); got shape \(255,\)"):
        ggml.quantize(np.ones((2, 256), np.float32), fmt, imatrix=np.ones(255))
    with pytest.raises(ValueError, match="d = 100000.0 overflows float16"):
        ggml.quantize(np.full((1, 256), 1e5, np.float32), fmt)
    with pytest.raises(ValueError, match="multiple of"):
        ggml.dequantize(np.zeros((1, ggml.block_bytes(fmt) - 1), np.uint8), fmt)
