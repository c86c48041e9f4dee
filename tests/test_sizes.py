"""Size reports (refquant/sizes.py): every expected byte count below is worked out by hand in
the comment next to it, not by the code under test."""

import doctest

import numpy as np
import pytest

import refquant as rq
from refquant.schemes import sizes
from refquant.schemes.nonuniform import LogSpec, nf4_quantize
from refquant.schemes.sizes import CodebookSpec, SizeReport, size_report


def test_int8_per_channel_4096_square_saves_75_percent():
    r = size_report((4096, 4096), rq.QuantSpec(bits=8, granularity="channel"))
    # codes: 4096 * 4096 * 1 byte = 16,777,216; scales: 4096 float32 = 16,384; no zero points
    assert (r.code_bytes, r.scale_bytes, r.zero_bytes, r.table_bytes) == (16_777_216, 16_384, 0, 0)
    assert r.total_bytes == 16_793_600
    assert r.float_bytes == 67_108_864                    # 4096^2 * 4
    assert r.bits_per_weight == 8 + 32 / 4096             # 8.0078125
    assert r.saving == 1 - 16_793_600 / 67_108_864        # 0.749755859375
    assert abs(r.saving - 0.75) < 3e-4 and r.ratio == 67_108_864 / 16_793_600


def test_int4_asym_group128_on_hidden_576_short_group():
    # 1536 x 576 (the bundled model's up_proj transposed); 576 = 4 * 128 + 64 -> 5 groups per row
    r = size_report((1536, 576), rq.QuantSpec(bits=4, symmetric=False, granularity="group",
                                              group_size=128), scale_bits=16)
    assert r.code_bytes == 1536 * 288                      # 576 codes * 4 bits = 288 bytes per row
    assert r.scale_bytes == 1536 * 5 * 2                   # 7680 fp16 scales
    assert r.zero_bytes == 1536 * 5 // 2                   # 7680 zero points * 4 bits = 3840 bytes
    assert r.total_bytes == 442_368 + 15_360 + 3_840
    assert r.bits_per_weight == 8 * 461_568 / (1536 * 576)  # 4.1736...
    r8 = size_report((1536, 576), rq.QuantSpec(bits=4, symmetric=False, granularity="group",
                                               group_size=128), scale_bits=16, zero_bits=8)
    assert r8.zero_bytes == 7680


def test_3bit_rows_are_byte_aligned_and_per_tensor():
    # 10 codes of 3 bits = 30 bits -> 4 bytes per row, 3 rows -> 12 bytes; one float32 scale
    r = size_report((3, 10), rq.QuantSpec(bits=3))
    assert (r.code_bytes, r.scale_bytes, r.zero_bytes) == (12, 4, 0)
    assert r.code_bytes == 3 * rq.packed_length(10, 3)     # agrees with the packer's length
    assert size_report((7,), rq.QuantSpec(bits=2)).code_bytes == 2   # 14 bits -> 2 bytes
    assert size_report((), rq.QuantSpec(bits=8)).total_bytes == 1 + 4  # a 0-d tensor


def test_casts_nf4_log_and_codebooks():
    shape = (256, 128)                                     # 32,768 elements, 131,072 float32 bytes
    for name in ("fp16", "bf16"):
        r = size_report(shape, name)
        assert (r.total_bytes, r.bits_per_weight, r.saving) == (65_536, 16.0, 0.5)
    assert size_report(shape, "fp32").saving == 0.0
    # NF4, blocks of 64: codes 32,768 / 2 = 16,384 bytes; 512 float32 absmax = 2,048 bytes
    nf4 = size_report(shape, "nf4")
    assert (nf4.code_bytes, nf4.scale_bytes, nf4.table_bytes, nf4.total_bytes) == (16_384, 2_048, 0, 18_432)
    assert nf4.bits_per_weight == 4.5                      # 4 + 32 / 64
    codes, absmax = nf4_quantize(np.ones(shape, np.float32))
    assert absmax.size * 4 == nf4.scale_bytes              # agrees with what nf4_quantize returns
    # log-scale, 7 levels -> codes -7..7 -> 4 bits; per-channel axis 0: 256 scales
    lg = size_report(shape, LogSpec(levels=7, granularity="channel"))
    assert (lg.code_bytes, lg.scale_bytes) == (16_384, 1_024)
    # Lloyd-Max table of 8 levels stored with the tensor: 3-bit codes, 8 float32 levels, 1 scale
    cb = size_report(shape, CodebookSpec(8))
    assert (cb.code_bytes, cb.scale_bytes, cb.table_bytes) == (256 * 48, 4, 32)   # 128*3/8 = 48


def test_addition_sums_layers():
    a = size_report((4, 8), rq.QuantSpec(bits=8))         # 32 + 4
    b = size_report((2, 16), rq.QuantSpec(bits=4, granularity="channel"))  # 2*8 + 2*4
    t = a + b
    assert (t.n_elements, t.code_bytes, t.scale_bytes, t.total_bytes) == (64, 48, 12, 60)
    assert t.float_bytes == 256 and t.shape is None and t.label == "mixed"
    assert sum([a, b]) == t
    assert sum([a, a]).label == a.label
    with pytest.raises(TypeError):
        a + 1


def test_str_and_row():
    r = size_report((4096, 4096), rq.QuantSpec(bits=8, granularity="channel"))
    s = str(r)
    assert "16,793,600 bytes" in s and "74.98%" in s and "8.008 bits/weight" in s
    row = r.as_row()
    assert row["total_bytes"] == 16_793_600 and row["label"] == "int8 sym per-channel(axis=0)"
    assert set(row) >= {"code_bytes", "scale_bytes", "zero_bytes", "bits_per_weight", "saving"}


@pytest.mark.parametrize("args, kw, match", [
    (((0, 4), rq.QuantSpec()), {}, "no elements"),
    (((-1, 4), rq.QuantSpec()), {}, "negative"),
    ((4, rq.QuantSpec()), {}, "tuple of integers"),
    (((4,), "int8"), {}, "unknown scheme"),
    (((4,), 8), {}, "spec must be"),
    (((4,), rq.QuantSpec()), {"zero_bits": 8}, "stores no zero points"),
    (((4,), rq.QuantSpec()), {"scale_bits": 0}, "scale_bits"),
    (((4,), "nf4"), {"block_size": 0}, "block_size"),
    (((4, 4), rq.QuantSpec(granularity="channel", axis=3)), {}, "out of range"),
])
def test_bad_input(args, kw, match):
    with pytest.raises(ValueError, match=match):
        size_report(*args, **kw)


def test_codebookspec_validation():
    with pytest.raises(ValueError, match="n_levels"):
        CodebookSpec(1)
    with pytest.raises(ValueError, match="block_size"):
        CodebookSpec(16, block_size=-2)
    assert CodebookSpec(16).bits == 4 and CodebookSpec(17).bits == 5


def test_module_docstring_examples():
    assert doctest.testmod(sizes).failed == 0
    assert isinstance(rq.size_report((2,), "fp16"), SizeReport)
