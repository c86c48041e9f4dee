"""Pack b-bit integer codes (b in 2, 3, 4, 8) densely into uint8 bytes or int32 words.

Bit order
---------
Codes are packed along the last axis into one little-endian bit stream: code ``i`` occupies
stream bits ``[i*b, (i+1)*b)``, its least significant bit first. Byte ``j`` holds stream bits
``[8j, 8j+8)`` and int32 word ``j`` holds stream bits ``[32j, 32j+32)`` (bit 0 = least
significant). So for 4-bit codes in bytes, code ``2j`` is the low nibble of byte ``j``; in
int32 words, code ``8j + k`` sits at bits ``4k .. 4k+3`` of word ``j`` (the GPTQ ``qweight``
layout along the input dimension). 3-bit codes cross word boundaries: 32 codes fill exactly
three words, and code 10 is split over words 0 and 1, as in the GPTQ reference's 3-bit packing.

Signed codes are stored as their low ``b`` bits (two's complement) and sign-extended on
``unpack(..., signed=True)``. ``n`` codes take ``ceil(n b / 8)`` bytes or ``ceil(n b / 32)``
words; unused high bits of the last byte or word are zero.
"""

from __future__ import annotations

import numpy as np

from refquant.schemes.numerics import check_positive_int

PACK_BITS = (2, 3, 4, 8)
CONTAINERS = ("uint8", "int32")


def _check(bits, container):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in PACK_BITS:
        raise ValueError(f"bits must be one of {PACK_BITS} for packing, got {bits!r}")
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {CONTAINERS}, got {container!r}")


def packed_length(n: int, bits: int, container: str = "uint8") -> int:
    """Number of bytes (``uint8``) or words (``int32``) holding ``n`` codes of ``bits`` bits."""
    _check(bits, container)
    width = 8 if container == "uint8" else 32
    return -(-int(n) * bits // width)


def pack(codes, bits: int, container: str = "uint8") -> np.ndarray:
    """Pack integer ``codes`` (any shape, packed along the last axis) into ``container``.

    Raises ``ValueError`` if a code does not fit in ``bits`` bits as an unsigned value
    (``[0, 2^b - 1]``) or, for signed input dtypes, as a signed value (``[-2^(b-1), 2^(b-1) - 1]``).

    Examples
    --------
    >>> pack(np.array([1, 2, 3, 15], np.uint8), 4)
    array([ 33, 243], dtype=uint8)
    """
    _check(bits, container)
    codes = np.asarray(codes)
    if codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be an integer array, got dtype {codes.dtype}")
    if codes.ndim == 0:
        raise ValueError("codes must have at least one axis")
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if codes.dtype.kind == "i" else (0, 2**bits - 1)
    if codes.size and (codes.min() < lo or codes.max() > hi):
        raise ValueError(f"codes must lie in [{lo}, {hi}] for {bits}-bit packing of dtype "
                         f"{codes.dtype}, found {codes.min()}..{codes.max()}")
    lead, n = codes.shape[:-1], codes.shape[-1]
    if codes.dtype == np.uint8:                                                # checked: < 2^b
        u = codes                                                              # [..., n]
    else:                                                                      # the low b bits
        u = codes.astype(np.uint8) & np.uint8(2**bits - 1)                     # (two's complement)
    nbytes = packed_length(n, bits, "uint8") if container == "uint8" else 4 * packed_length(n, bits, "int32")
    if 8 % bits == 0:                  # 2, 4, 8 bits: whole codes per byte, the same stream
        out = _pack_bytes(u, bits, nbytes)
    else:
        bitstream = np.unpackbits(u[..., None], axis=-1, count=bits, bitorder="little")  # [..., n, b]
        bitstream = bitstream.reshape(lead + (n * bits,))
        pad = nbytes * 8 - n * bits
        if pad:
            bitstream = np.concatenate([bitstream, np.zeros(lead + (pad,), np.uint8)], axis=-1)
        out = np.packbits(bitstream, axis=-1, bitorder="little")               # [..., nbytes]
    if container == "uint8":
        return out
    return np.ascontiguousarray(out).view("<u4").astype(np.uint32).view(np.int32)


def unpack(packed, bits: int, n: int, signed: bool = False) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``n`` codes of each row of ``packed``.

    The container is taken from ``packed.dtype`` (uint8 or int32). Returns uint8 codes, or
    int8 codes sign-extended from ``bits`` bits when ``signed``.

    Examples
    --------
    Eleven 3-bit codes take two int32 words; code 10 is split over them:

    >>> codes = np.array([[1, 7, 3, 5, 2, 6, 0, 4, 7, 1, 6]], np.uint8)
    >>> packed = pack(codes, 3, "int32")
    >>> packed.shape, bool((unpack(packed, 3, 11) == codes).all())
    ((1, 2), True)
    >>> unpack(pack(np.array([-2, 1, -1], np.int8), 2), 2, 3, signed=True)
    array([-2,  1, -1], dtype=int8)
    """
    packed = np.asarray(packed)
    container = {np.dtype(np.uint8): "uint8", np.dtype(np.int32): "int32",
                 np.dtype(np.uint32): "int32"}.get(packed.dtype)
    if container is None:
        raise ValueError(f"packed must be uint8 or int32, got dtype {packed.dtype}")
    _check(bits, container)
    n = check_positive_int(n, "n")
    need = packed_length(n, bits, container)
    if packed.ndim == 0 or packed.shape[-1] < need:
        raise ValueError(f"{n} codes of {bits} bits need {need} {container} elements per row, "
                         f"got shape {packed.shape}")
    lead = packed.shape[:-1]
    as_bytes = np.ascontiguousarray(packed).astype(packed.dtype.newbyteorder("<")).view(np.uint8)
    if 8 % bits == 0:
        codes = _unpack_bytes(as_bytes, bits, n)
    else:
        bitstream = np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., : n * bits]
        codes = np.packbits(bitstream.reshape(lead + (n, bits)), axis=-1, bitorder="little")[..., 0]
    if not signed:
        return codes
    return ((codes.astype(np.int16) ^ (1 << (bits - 1))) - (1 << (bits - 1))).astype(np.int8)


def _pack_bytes(u: np.ndarray, bits: int, nbytes: int) -> np.ndarray:
    """The stream of :func:`pack` for ``bits`` dividing 8, without a bit per byte: byte ``j``
    is ``sum_e u[..., per j + e] << (e bits)`` (``per = 8 / bits`` codes per byte), zero past
    the last code. ``u`` [..., n] uint8 codes below ``2^bits``; returns [..., nbytes] uint8."""
    per = 8 // bits
    lead, n = u.shape[:-1], u.shape[-1]
    full = np.zeros(lead + (nbytes * per,), np.uint8)
    full[..., :n] = u
    full = full.reshape(lead + (nbytes, per))
    out = full[..., 0].copy()
    for e in range(1, per):
        out |= full[..., e] << np.uint8(e * bits)
    return out


def _unpack_bytes(as_bytes: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`_pack_bytes`: the first ``n`` codes of the bytes [..., nbytes]."""
    per = 8 // bits
    mask = np.uint8(2**bits - 1)
    lead = as_bytes.shape[:-1]
    out = np.empty(as_bytes.shape + (per,), np.uint8)
    for e in range(per):
        out[..., e] = (as_bytes >> np.uint8(e * bits)) & mask
    return np.ascontiguousarray(out.reshape(lead + (-1,))[..., :n])
