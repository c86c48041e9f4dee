"""ggml's own CPU matmul through the ``libggml-python`` wheel (ctypes): the anchor that
``benchmarks/w4_gemv.py`` times beside refquant's kernels in the same run.

``ggml_mul_mat`` of a quantized weight ``[N, K]`` (ggml's ``ne0 = K``, ``ne1 = N``) and one float32
activation row, computed by ``ggml_graph_compute_with_ctx`` with ``n_threads`` threads. For the
quantized types ggml first quantizes the activation row to its ``vec_dot_type`` (Q8_0 for Q4_0,
Q8_K for the K-quants) and then runs integer dot products: its arithmetic is W4A8.

Time it in bursts of back-to-back calls: ggml's OpenMP pool sleeps after ~50 ms idle and then costs
milliseconds to wake (see the issue text of #17).
"""

from __future__ import annotations

import ctypes
import os

import numpy as np


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]


def _libs():
    import libggml
    root = os.path.join(os.path.dirname(libggml.__file__), "lib64")
    base = ctypes.CDLL(os.path.join(root, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(os.path.join(root, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    vp = ctypes.c_void_p
    base.ggml_init.restype = vp
    base.ggml_init.argtypes = [_InitParams]
    base.ggml_new_tensor_2d.restype = vp
    base.ggml_new_tensor_2d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    base.ggml_get_data.restype = vp
    base.ggml_get_data.argtypes = [vp]
    base.ggml_mul_mat.restype = vp
    base.ggml_mul_mat.argtypes = [vp, vp, vp]
    base.ggml_new_graph.restype = vp
    base.ggml_new_graph.argtypes = [vp]
    base.ggml_build_forward_expand.argtypes = [vp, vp]
    base.ggml_free.argtypes = [vp]
    base.ggml_row_size.restype = ctypes.c_size_t
    base.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    cpu.ggml_graph_compute_with_ctx.restype = ctypes.c_int
    cpu.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]
    cpu.ggml_cpu_init.argtypes = []
    cpu.ggml_cpu_init()
    return base, cpu


class GGMLMatVec:
    """``y = W x`` by ggml for a weight already in ggml's bytes (``type_id``, ``[N, row_bytes]``).

    ``__call__(x)`` copies float32 ``x[K]`` into ggml's input tensor, computes the graph and
    returns a view of ggml's float32 output ``[N]`` (valid until the next call).
    """

    def __init__(self, weight_bytes: np.ndarray, type_id: int, K: int, n_threads: int):
        self._base, self._cpu = _libs()
        N = weight_bytes.shape[0]
        need = weight_bytes.nbytes + 4 * (K + N) + 64 * 1024 * 1024
        self._ctx = self._base.ggml_init(_InitParams(need, None, False))
        self.w = self._base.ggml_new_tensor_2d(self._ctx, type_id, K, N)
        self.x = self._base.ggml_new_tensor_2d(self._ctx, 0, K, 1)          # GGML_TYPE_F32 = 0
        row = self._base.ggml_row_size(type_id, K)
        if row != weight_bytes.shape[1]:
            raise ValueError(f"ggml expects {row} bytes per row, got {weight_bytes.shape[1]}")
        ctypes.memmove(self._base.ggml_get_data(self.w), weight_bytes.ctypes.data, weight_bytes.nbytes)
        self.y = self._base.ggml_mul_mat(self._ctx, self.w, self.x)
        self.graph = self._base.ggml_new_graph(self._ctx)
        self._base.ggml_build_forward_expand(self.graph, self.y)
        self.n_threads, self.K, self.N = n_threads, K, N
        self._xbuf = (ctypes.c_float * K).from_address(self._base.ggml_get_data(self.x))
        self._ybuf = (ctypes.c_float * N).from_address(self._base.ggml_get_data(self.y))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        np.frombuffer(self._xbuf, np.float32)[:] = x
        status = self._cpu.ggml_graph_compute_with_ctx(self._ctx, self.graph, self.n_threads)
        if status != 0:
            raise RuntimeError(f"ggml_graph_compute_with_ctx returned {status}")
        return np.frombuffer(self._ybuf, np.float32)

    def close(self):
        if self._ctx:
            self._base.ggml_free(self._ctx)
            self._ctx = None
