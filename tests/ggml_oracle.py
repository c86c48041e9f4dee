"""ggml's own C quantizers, called through ctypes: the oracle for every GGML block format.

The ``libggml-python`` wheel (test extra) ships ggml's prebuilt ``libggml-base.so``. Its
``ggml_quantize_chunk(type, src, dst, start, nrows, n_per_row, imatrix)`` is what llama.cpp's
``llama-quantize`` calls: with ``imatrix=NULL`` it runs each type's reference quantizer
(``quantize_row_*_ref``), with an importance matrix the weighted search of ``quantize_*``.
``dequantize_row_*`` are ggml's decoders. Nothing here is refquant code: tests compare
refquant's NumPy against these bytes.

Use :func:`available` to skip where the wheel is missing (it is in the ``test`` extra, so CI has
it).
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np
import pytest


@functools.lru_cache(maxsize=1)
def _lib():
    try:
        import libggml
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(libggml.__file__), "lib64", "libggml-base.so")
    lib = ctypes.CDLL(path)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_blck_size.argtypes = [ctypes.c_int]
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_type_size.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def available() -> bool:
    """Whether the ``libggml-python`` wheel is importable."""
    return _lib() is not None


#: pytest mark: skip where the oracle's wheel is missing
needs_ggml = pytest.mark.skipif(not available(), reason="libggml-python (test extra) missing")


def imatrices(K: int, seed: int, *, with_none: bool = True, zero_first_block: bool = False):
    """Importance matrices for the comparisons: (``None``,) a random positive one (gamma), and
    one with zeros at every 5th column (and, with ``zero_first_block``, over the whole first
    block of 32, whose weights are then all 0)."""
    rng = np.random.default_rng(seed)
    pos = rng.gamma(0.5, 2.0, K).astype(np.float32) + np.float32(1e-3)
    zeros = pos.copy()
    zeros[::5] = 0
    if zero_first_block:
        zeros[:32] = 0
    return ([None] if with_none else []) + [pos, zeros]


def type_id(name: str) -> int:
    """ggml's type id of block type ``name`` (from the ``gguf`` package's enum, which mirrors
    ``enum ggml_type``)."""
    import gguf
    return int(getattr(gguf.GGMLQuantizationType, name))


def block_size(name: str) -> int:
    """ggml's values per block (``ggml_blck_size``)."""
    return int(_lib().ggml_blck_size(type_id(name)))


def type_size(name: str) -> int:
    """ggml's bytes per block (``ggml_type_size``)."""
    return int(_lib().ggml_type_size(type_id(name)))


def quantize(x, name: str, imatrix=None) -> np.ndarray:
    """ggml's bytes of float32 rows ``x`` (``[n_rows, K]``) in type ``name``:
    uint8 ``[n_rows, ggml_row_size(type, K)]``, from ``ggml_quantize_chunk``."""
    lib = _lib()
    src = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if src.ndim == 1:
        src = src[None, :]
    n_rows, K = src.shape
    t = type_id(name)
    row = int(lib.ggml_row_size(t, K))
    dst = np.zeros((n_rows, row), dtype=np.uint8)
    im = None
    if imatrix is not None:
        im = np.ascontiguousarray(np.asarray(imatrix, dtype=np.float32))
        assert im.shape == (K,)
    written = lib.ggml_quantize_chunk(t, src.ctypes.data, dst.ctypes.data, 0, n_rows, K,
                                      None if im is None else im.ctypes.data)
    assert written == n_rows * row, (written, n_rows * row)
    return dst


def dequantize(data, name: str, K: int) -> np.ndarray:
    """ggml's float32 values of one type-``name`` row set ``data`` (uint8 ``[n_rows, bytes]``)
    through ``dequantize_row_<type>`` (lower-case type name, e.g. ``dequantize_row_q4_K``)."""
    lib = _lib()
    fn = getattr(lib, "dequantize_row_" + name.lower().replace("_k", "_K"))
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    data = np.ascontiguousarray(np.asarray(data, dtype=np.uint8))
    if data.ndim == 1:
        data = data[None, :]
    out = np.zeros((data.shape[0], K), dtype=np.float32)
    for r in range(data.shape[0]):
        fn(data[r].ctypes.data, out[r].ctypes.data, K)
    return out


def quantize_row_ref(x, name: str) -> np.ndarray:
    """ggml's bytes of float32 rows ``x`` (``[n_rows, K]``) from the exported reference quantizer
    ``quantize_row_<type>_ref`` (e.g. ``quantize_row_q8_K_ref``: Q8_K is not a case of
    ``ggml_quantize_chunk``). The destination starts zeroed."""
    lib = _lib()
    fn = getattr(lib, "quantize_row_" + name.lower().replace("_k", "_K") + "_ref")
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    src = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if src.ndim == 1:
        src = src[None, :]
    n_rows, K = src.shape
    dst = np.zeros((n_rows, int(lib.ggml_row_size(type_id(name), K))), dtype=np.uint8)
    for r in range(n_rows):
        fn(src[r].ctypes.data, dst[r].ctypes.data, K)
    return dst
