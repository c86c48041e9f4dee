"""The table of GGML block types refquant can write and read.

Every block type (Q8_0, Q4_0, ... the K-quants, MXFP4 ...) lives in a module of this package and
registers one :class:`BlockType` here: its GGML type id, how many values a block holds, how many
bytes it takes, and the two functions that turn float32 rows into the block bytes and back. The
public :func:`refquant.formats.ggml.quantize` / :func:`~refquant.formats.ggml.dequantize` check
their input once and then call the registered pair, so every format gets the same input checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from refquant.schemes.numerics import as_float_array


@dataclass(frozen=True)
class BlockType:
    """One GGML block type.

    Attributes
    ----------
    name : str
        llama.cpp's name, e.g. ``"Q4_K"``.
    type_id : int
        ``enum ggml_type`` value (``ggml.h``), also ``gguf.GGMLQuantizationType``.
    block_size : int
        Values per block (32, or 256 for the K-quants' super-blocks).
    type_size : int
        Bytes per block.
    quantize_rows : callable
        ``(x, imatrix) -> bytes``: ``x`` float32 ``[n_rows, K]`` (``K % block_size == 0``,
        finite), ``imatrix`` float32 ``[K]`` or None -> uint8 ``[n_rows, K // block_size *
        type_size]``.
    dequantize_rows : callable
        ``data -> x_hat``: uint8 ``[n_rows, n_bytes]`` -> float32 ``[n_rows, K]``.
    uses_imatrix : bool
        Whether ``quantize_rows`` reads the importance matrix (False: it is accepted and ignored,
        as ggml's quantizers of these types ignore it).
    """

    name: str
    type_id: int
    block_size: int
    type_size: int
    quantize_rows: Callable[[np.ndarray, np.ndarray | None], np.ndarray]
    dequantize_rows: Callable[[np.ndarray], np.ndarray]
    uses_imatrix: bool = False

    @property
    def bits_per_weight(self) -> float:
        """Storage per weight, scales included: ``8 * type_size / block_size``."""
        return 8.0 * self.type_size / self.block_size


#: name -> BlockType, filled by the modules of this package as they are imported
TYPES: dict[str, BlockType] = {}


def check_imatrix(imatrix, K: int, fmt: str) -> np.ndarray | None:
    """``imatrix`` as float32 ``[K]`` after checking it (None stays None): one entry per input
    column, finite and non-negative; a ``ValueError`` names the first bad entry."""
    if imatrix is None:
        return None
    w = np.asarray(imatrix)
    if w.dtype.kind not in "fiu":
        raise ValueError(f"{fmt}: imatrix must be a float array, got dtype {w.dtype}")
    w = w.astype(np.float32)
    if w.shape != (K,):
        raise ValueError(f"{fmt}: imatrix must have one entry per input column, shape ({K},); "
                         f"got shape {w.shape}")
    bad = ~np.isfinite(w) | (w < 0)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"{fmt}: imatrix entries must be finite and >= 0; entry {i} is "
                         f"{float(np.asarray(imatrix).reshape(-1)[i])!r}")
    return w


def register(block_type: BlockType) -> BlockType:
    """Add ``block_type`` to :data:`TYPES` (a name registered twice is a programming error)."""
    if block_type.name in TYPES:
        raise ValueError(f"GGML block type {block_type.name!r} is registered twice")
    TYPES[block_type.name] = block_type
    return block_type


def finite_rows(x, fmt: str, block_size: int) -> np.ndarray:
    """``x`` as a float32 array ``[..., K]`` (as llama.cpp's converter reads it) after the checks
    every block type shares: at least one axis, ``K`` a positive multiple of ``block_size``, every
    value finite in float32; ``ValueError`` naming the offending length or index otherwise."""
    x = as_float_array(x)
    if x.ndim == 0:
        raise ValueError(f"{fmt} needs an array with at least one axis, got a scalar")
    K = x.shape[-1]
    if K == 0 or K % block_size != 0:
        raise ValueError(f"{fmt} quantizes blocks of {block_size} along the last axis; its "
                         f"length {K} is not a positive multiple of {block_size}")
    with np.errstate(over="ignore"):                      # checked on the next line
        x32 = x.astype(np.float32)
    if not np.all(np.isfinite(x32)):
        bad = np.argwhere(~np.isfinite(x32))[0]
        raise ValueError(f"x overflows float32 at index {tuple(int(i) for i in bad)}: "
                         f"{x[tuple(bad)]!r}")
    return x32
