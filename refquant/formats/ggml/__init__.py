"""llama.cpp's GGML block formats, byte for byte as stored in GGUF files.

One module per family of block types, each registering its types in
:data:`refquant.formats.ggml._registry.TYPES`:

==========================================  ===================================================
module                                      block types
==========================================  ===================================================
:mod:`refquant.formats.ggml.legacy`         Q8_0, Q4_0, Q4_1 (blocks of 32, float16 scale)
:mod:`refquant.formats.ggml.iq4`            IQ4_NL, IQ4_XS (16 non-uniform levels)
:mod:`refquant.formats.ggml.mxfp`           MXFP4, NVFP4 (E2M1 codes; E8M0 / UE4M3 scales)
:mod:`refquant.formats.ggml.ternary`        TQ1_0, TQ2_0 (trits -1, 0, 1, one scale per 256)
:mod:`refquant.formats.ggml.kquants_low`    Q2_K, Q3_K (the 2- and 3-bit K-quants)
:mod:`refquant.formats.ggml.q5`             Q5_0, Q5_1 (blocks of 32, 5-bit codes)
:mod:`refquant.formats.ggml.kquants`        Q4_K, Q5_K (super-blocks of 256: 6-bit scales, mins)
:mod:`refquant.formats.ggml.kquants_sym`    Q6_K, Q8_K (super-blocks of 256, symmetric)
:mod:`refquant.formats.ggml.gptq_grid`      GPTQ onto 12 of these grids (:func:`gptq_ggml`)
==========================================  ===================================================

:func:`quantize` and :func:`dequantize` are the entry points for every type: they check the
input once (finite float values, a row length that is a multiple of the type's block, an
importance matrix of the right length with finite, non-negative entries) and call the type's
quantizer, which reproduces ggml's reference C quantizer (``ggml-quants.c``) bit for bit. The
oracle of the tests is ggml itself (``ggml_quantize_chunk`` of the ``libggml-python`` wheel
through ctypes, ``tests/ggml_oracle.py``) and the ``gguf`` package's decoder.
"""

from __future__ import annotations

import numpy as np

from refquant.formats.ggml._registry import TYPES, BlockType, check_imatrix, finite_rows
from refquant.formats.ggml import iq4  # noqa: F401  (registers IQ4_NL, IQ4_XS)
from refquant.formats.ggml import kquants, kquants_sym, q5  # noqa: F401  (register their types)
from refquant.formats.ggml.legacy import (FORMATS, QK, GGMLBlocks, dequantize_blocks,
                                          dequantize_q4_0, dequantize_q4_1, dequantize_q8_0,
                                          pack_blocks, quantize_blocks, quantize_q4_0,
                                          quantize_q4_1, quantize_q8_0, unpack_blocks)
from refquant.formats.ggml import mxfp  # noqa: F401  (registers MXFP4, NVFP4)
from refquant.formats.ggml import ternary  # noqa: F401  (registers TQ1_0, TQ2_0)
from refquant.formats.ggml import kquants_low  # noqa: F401  (registers Q2_K, Q3_K)
from refquant.formats.ggml.gptq_grid import GGMLGPTQResult, gptq_ggml


def block_type(fmt: str) -> BlockType:
    """The registered :class:`BlockType` called ``fmt`` (e.g. ``"Q4_K"``)."""
    if fmt not in TYPES:
        raise ValueError(f"unknown GGML block format {fmt!r}; choose from {sorted(TYPES)}")
    return TYPES[fmt]


def block_bytes(fmt: str) -> int:
    """Bytes per block of ``fmt``: 34 (Q8_0), 18 (Q4_0), 20 (Q4_1), ..."""
    return block_type(fmt).type_size


def bits_per_weight(fmt: str) -> float:
    """Storage per weight of ``fmt``, its scales included: 8.5 (Q8_0), 4.5 (Q4_0), ..."""
    return block_type(fmt).bits_per_weight


def quantize(x, fmt: str, imatrix=None) -> np.ndarray:
    """GGUF bytes of ``x`` in block format ``fmt``.

    Parameters
    ----------
    x : array_like of float, shape ``[..., K]``
        Read as float32 (as llama.cpp's converter does); must be finite; ``K`` a positive
        multiple of the format's block size (32, or 256 for the K-quants).
    fmt : str
        A registered block type (``sorted(refquant.formats.ggml.TYPES)``).
    imatrix : array_like of float, shape ``[K]``, optional
        llama.cpp's importance matrix for this tensor (one non-negative weight per input
        column); types whose ggml quantizer ignores it ignore it here too.

    Returns
    -------
    numpy.ndarray of uint8, shape ``[..., K // block_size * type_size]``
    """
    t = block_type(fmt)
    x32 = finite_rows(x, fmt, t.block_size)
    K = x32.shape[-1]
    w = check_imatrix(imatrix, K, fmt)
    rows = x32.reshape(-1, K)
    data = t.quantize_rows(rows, w)                                # [n_rows, n_bytes]
    return np.ascontiguousarray(data.reshape(x32.shape[:-1] + (data.shape[-1],)))


def dequantize(data, fmt: str) -> np.ndarray:
    """Float32 values ``[..., n_bytes // type_size * block_size]`` of GGUF bytes ``data``
    (uint8 ``[..., n_bytes]``, ``n_bytes`` a positive multiple of the type's block bytes)."""
    t = block_type(fmt)
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise ValueError(f"{fmt} data must be uint8 bytes, got dtype {data.dtype}")
    if data.ndim == 0 or data.shape[-1] == 0 or data.shape[-1] % t.type_size != 0:
        raise ValueError(f"{fmt} rows must hold a positive multiple of {t.type_size} bytes, "
                         f"got shape {data.shape}")
    rows = data.reshape(-1, data.shape[-1])
    x_hat = t.dequantize_rows(rows)
    return x_hat.reshape(data.shape[:-1] + (x_hat.shape[-1],))


__all__ = ["QK", "FORMATS", "TYPES", "BlockType", "GGMLBlocks", "block_type", "block_bytes",
           "bits_per_weight", "quantize_blocks", "pack_blocks", "unpack_blocks",
           "dequantize_blocks", "quantize", "dequantize",
           "quantize_q8_0", "quantize_q4_0", "quantize_q4_1",
           "dequantize_q8_0", "dequantize_q4_0", "dequantize_q4_1",
           "gptq_ggml", "GGMLGPTQResult"]
