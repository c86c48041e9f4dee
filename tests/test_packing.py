"""Tests of refquant.schemes.packing: round trips, lengths, and the documented bit order.

Oracles: a naive packer written here that builds the little-endian bit stream as one Python
integer (code i at bits [i b, (i+1) b)) and cuts it into bytes / 32-bit words; hand-built bit
patterns (3-bit code 10 split across words 0 and 1, 4-bit nibbles, 2-bit fields).
"""

import doctest
import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import refquant.schemes.packing as packing
from refquant.schemes.packing import pack, packed_length, unpack

WIDTHS = (2, 3, 4, 8)
CONTAINERS = ("uint8", "int32")


def _naive_pack_row(codes, bits, container):
    stream = 0
    for i, c in enumerate(codes):
        stream |= (int(c) & (2**bits - 1)) << (i * bits)
    width = 8 if container == "uint8" else 32
    n_out = math.ceil(len(codes) * bits / width)
    out = [(stream >> (width * j)) & (2**width - 1) for j in range(n_out)]
    if container == "int32":
        out = [v - 2**32 if v >= 2**31 else v for v in out]     # two's complement view
        return np.array(out, np.int32)
    return np.array(out, np.uint8)


@st.composite
def code_arrays(draw):
    bits = draw(st.sampled_from(WIDTHS))
    signed = draw(st.booleans())
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    n = draw(st.integers(1, 70))
    if signed:
        elems = st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        codes = draw(arrays(np.int8, lead + (n,), elements=elems))
    else:
        codes = draw(arrays(np.uint8, lead + (n,), elements=st.integers(0, 2**bits - 1)))
    return codes, bits, signed


@given(code_arrays(), st.sampled_from(CONTAINERS))
def test_round_trip_and_length(case, container):
    codes, bits, signed = case
    n = codes.shape[-1]
    packed = pack(codes, bits, container)
    assert packed.dtype == (np.uint8 if container == "uint8" else np.int32)
    expected_len = math.ceil(n * bits / 8) if container == "uint8" else math.ceil(n * bits / 32)
    assert packed.shape == codes.shape[:-1] + (expected_len,)
    assert packed_length(n, bits, container) == expected_len
    back = unpack(packed, bits, n, signed=signed)
    assert back.dtype == (np.int8 if signed else np.uint8)
    assert np.array_equal(back, codes)


@given(code_arrays(), st.sampled_from(CONTAINERS))
def test_matches_naive_bit_stream(case, container):
    codes, bits, _ = case
    packed = pack(codes, bits, container)
    for idx in np.ndindex(*codes.shape[:-1]):
        assert np.array_equal(packed[idx], _naive_pack_row(codes[idx], bits, container))


def test_3bit_32_codes_fill_exactly_three_words():
    codes = np.zeros(32, np.uint8)
    codes[10] = 0b101
    # stream bits 30, 31, 32 hold code 10 (LSB first): 1, 0, 1
    # -> word 0 bit 30 = 1 (0x40000000), word 1 bit 0 = 1
    packed = pack(codes, 3, "int32")
    assert packed.tolist() == [0x40000000, 1, 0]
    codes[10] = 0b110
    # bits 30, 31, 32 = 0, 1, 1 -> word 0 = 0x80000000 (int32: -2**31), word 1 = 1
    assert pack(codes, 3, "int32").tolist() == [-(2**31), 1, 0]
    assert np.array_equal(unpack(pack(codes, 3, "int32"), 3, 32), codes)


def test_3bit_gptq_layout_by_hand():
    # GPTQ's 3-bit qweight: word 0 = codes 0..9 at bits 3i, low 2 bits of code 10 at 30..31;
    # word 1 = code 10 >> 2 at bit 0, codes 11..20 at bits 1 + 3 (i - 11), low bit of code 21
    # at bit 31; word 2 = code 21 >> 1 at bits 0..1, codes 22..31 at bits 2 + 3 (i - 22).
    rng = np.random.default_rng(3)
    c = [int(v) for v in rng.integers(0, 8, 32)]
    w0 = sum(c[i] << (3 * i) for i in range(10)) | ((c[10] & 0b11) << 30)
    w1 = (c[10] >> 2) | sum(c[i] << (1 + 3 * (i - 11)) for i in range(11, 21)) | ((c[21] & 1) << 31)
    w2 = (c[21] >> 1) | sum(c[i] << (2 + 3 * (i - 22)) for i in range(22, 32))
    expected = np.array([w0, w1, w2], np.uint32).view(np.int32)
    assert np.array_equal(pack(np.array(c, np.uint8), 3, "int32"), expected)


def test_4bit_and_2bit_by_hand():
    # 4-bit in a word: code 8j + k at bits 4k..4k+3 -> codes 0..7 give 0x76543210
    assert pack(np.arange(8, dtype=np.uint8), 4, "int32").tolist() == [0x76543210]
    # 4-bit in bytes: code 2j is the low nibble: [1, 2] -> 0x21, [3, 15] -> 0xF3
    assert pack(np.array([1, 2, 3, 15], np.uint8), 4).tolist() == [0x21, 0xF3]
    # 2-bit in bytes: [1, 2, 3, 0] -> 1 | 2<<2 | 3<<4 = 57
    assert pack(np.array([1, 2, 3, 0], np.uint8), 2).tolist() == [57]
    # 3-bit in bytes: [7, 1, 6] -> 7 | 1<<3 | (6 & 3)<<6 = 7 + 8 + 128 = 143, then 6 >> 2 = 1
    assert pack(np.array([7, 1, 6], np.uint8), 3).tolist() == [143, 1]
    # signed 4-bit: -1 is stored as 0xF, -8 as 0x8
    assert pack(np.array([-1, -8], np.int8), 4).tolist() == [0x8F]
    assert unpack(np.array([0x8F], np.uint8), 4, 2, signed=True).tolist() == [-1, -8]
    # 8-bit in a word: little-endian bytes
    assert pack(np.array([1, 2, 3, 4], np.uint8), 8, "int32").tolist() == [0x04030201]


def test_unused_high_bits_are_zero():
    assert pack(np.array([7], np.uint8), 3).tolist() == [7]
    assert pack(np.full(11, 7, np.uint8), 3, "int32").tolist() == [-1, 1]     # 33 bits set


@pytest.mark.parametrize("bits", [1, 5, 6, 7, 16, True, 4.0, np.float64(8), "4", None])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="got " + re.escape(repr(bits))):
        pack(np.zeros(4, np.uint8), bits)
    with pytest.raises(ValueError, match="got " + re.escape(repr(bits))):
        packed_length(4, bits)


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="'int64'"):
        pack(np.zeros(4, np.uint8), 4, "int64")
    with pytest.raises(ValueError, match=r"\[0, 15\].*0\.\.16"):
        pack(np.array([0, 16], np.uint8), 4)
    with pytest.raises(ValueError, match=r"\[-8, 7\] for 4-bit packing of dtype int64, found 0\.\.16"):
        pack(np.array([0, 16]), 4)             # signed dtype: checked as signed codes
    with pytest.raises(ValueError, match=r"\[-8, 7\].*-9\.\.0"):
        pack(np.array([-9, 0], np.int8), 4)
    with pytest.raises(ValueError, match="float64"):
        pack(np.array([1.0]), 4)
    with pytest.raises(ValueError, match="at least one axis"):
        pack(np.array(3, np.uint8), 4)
    with pytest.raises(ValueError, match=r"10 codes of 4 bits need 5 uint8 elements per row, got shape \(4,\)"):
        unpack(np.zeros(4, np.uint8), 4, 10)
    with pytest.raises(ValueError, match="float32"):
        unpack(np.zeros(4, np.float32), 4, 2)
    for n in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"n must be a positive integer, got {n!r}"):
            unpack(np.zeros(4, np.uint8), 4, n)


def test_doctests():
    result = doctest.testmod(packing, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("container", CONTAINERS)
def test_any_layout_and_dtype_matches_naive_bit_stream(bits, container):
    """Fortran-ordered, transposed and wide-integer codes (GPTQ's codes are Fortran arrays):
    the same stream as the naive packer, and unpack returns a C-contiguous copy."""
    rng = np.random.default_rng(bits)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    cases = [np.asfortranarray(rng.integers(0, 2**bits, (5, 37), dtype=np.uint8)),
             rng.integers(0, 2**bits, (37, 5), dtype=np.uint8).T,
             rng.integers(lo, hi + 1, (5, 37), dtype=np.int64),
             np.asfortranarray(rng.integers(0, 2**bits, (5, 37), dtype=np.uint16))]
    for codes in cases:
        packed = pack(codes, bits, container)
        for r in range(codes.shape[0]):
            assert np.array_equal(packed[r], _naive_pack_row(codes[r], bits, container))
        back = unpack(packed, bits, 37, signed=codes.dtype.kind == "i")
        assert back.flags.c_contiguous and np.array_equal(back, codes)
