"""numba.cuda kernels (the ``numba-cuda`` package) with the signatures of the reference.

The kernels are defined and compiled on first use (:func:`kernels`), so importing this module
needs neither a GPU nor a CUDA toolkit. They run on a real device or, with
``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported, on Numba's CUDA simulator (every thread
a Python thread: slow, for tests on tiny shapes only).

int8 GEMM
---------
The classic shared-memory tiling [1]_: a ``T x T`` block of threads owns a ``T x T`` tile of
``C``; for each slice of ``T`` columns of ``A`` and rows of ``B`` the block stages both tiles in
shared memory (widened to int32), synchronizes, and each thread accumulates its dot product in
int32 (exact under the ``K <= 131071`` bound). Out-of-range elements are staged as zeros, so
``M``, ``N``, ``K`` need not be multiples of ``T``.

W4 GEMV/GEMM
------------
One block of ``W4_THREADS`` threads per output ``(m, n)``: thread ``t`` walks the packed words
``t, t + W4_THREADS, ...`` of row ``n``, unpacks the eight nibbles of each word with shifts and
masks, and accumulates ``x_k s_{n,g} (q_k - z_{n,g})`` in float32; a tree reduction in shared
memory sums the threads' partial sums. The weight is read once, 4 bits per value, and never
expanded in memory.

References
----------
.. [1] NVIDIA, "CUDA C++ Programming Guide", section "Shared Memory" (matrix multiplication
   with shared memory).
"""

from __future__ import annotations

import functools

import numpy as np

cuda = None          # numba.cuda, bound by kernels() on first use

TILE = 16            # int8 GEMM tile (threads per block: TILE x TILE)
W4_THREADS = 64      # threads per output of the W4 kernel (a power of two)


@functools.lru_cache(maxsize=None)
def kernels():
    """Define (once) and return the CUDA kernels; compilation happens at their first launch."""
    # ``cuda`` must be a module global: the simulator swaps it in the kernels' globals
    global cuda
    from numba import cuda, float32, int32

    T = TILE

    @cuda.jit
    def int8_gemm(A, B, C):
        # A int8 [M, K], B int8 [K, N] -> C int32 [M, N]
        sA = cuda.shared.array((T, T), int32)
        sB = cuda.shared.array((T, T), int32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.y * T + ty
        col = cuda.blockIdx.x * T + tx
        M, K = A.shape
        N = B.shape[1]
        acc = int32(0)
        for k0 in range(0, K, T):
            ka = k0 + tx
            kb = k0 + ty
            sA[ty, tx] = int32(A[row, ka]) if (row < M and ka < K) else int32(0)
            sB[ty, tx] = int32(B[kb, col]) if (kb < K and col < N) else int32(0)
            cuda.syncthreads()
            for kk in range(T):
                acc = int32(acc + sA[ty, kk] * sB[kk, tx])
            cuda.syncthreads()
        if row < M and col < N:
            C[row, col] = acc

    @cuda.jit
    def w4_gemm(x, packed, scales, zeros, group_size, y):
        # x f32 [M, K], packed i32 [N, W], scales f32 [N, G], zeros i32 [N, G] -> y f32 [M, N]
        part = cuda.shared.array(W4_THREADS, float32)
        n = cuda.blockIdx.x
        m = cuda.blockIdx.y
        t = cuda.threadIdx.x
        K = x.shape[1]
        W = packed.shape[1]
        acc = float32(0.0)
        for w in range(t, W, W4_THREADS):
            q = packed[n, w]
            for i in range(8):
                k = 8 * w + i
                if k < K:
                    g = k // group_size
                    code = (q >> (4 * i)) & 15
                    acc += x[m, k] * (scales[n, g] * float32(code - zeros[n, g]))
        part[t] = acc
        cuda.syncthreads()
        stride = W4_THREADS // 2
        while stride > 0:
            if t < stride:
                part[t] += part[t + stride]
            cuda.syncthreads()
            stride //= 2
        if t == 0:
            y[m, n] = part[0]

    return dict(int8_gemm=int8_gemm, w4_gemm=w4_gemm)


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CUDA ``C = A B`` (int8 x int8 -> int32), equal to the reference; operands pre-checked."""
    k = kernels()
    M, K = a.shape
    N = b.shape[1]
    d_a = cuda.to_device(np.ascontiguousarray(a))
    d_b = cuda.to_device(np.ascontiguousarray(b))
    d_c = cuda.device_array((M, N), np.int32)
    grid = (-(-N // TILE), -(-M // TILE))
    k["int8_gemm"][grid, (TILE, TILE)](d_a, d_b, d_c)
    return d_c.copy_to_host()


def w4_matmul(x, packed, scales, zeros, group_size: int) -> np.ndarray:
    """CUDA ``x W_hat^T`` with on-the-fly 4-bit dequantization; operands pre-checked."""
    k = kernels()
    M = x.shape[0]
    N = packed.shape[0]
    d_y = cuda.device_array((M, N), np.float32)
    args = [cuda.to_device(np.ascontiguousarray(v)) for v in
            (x, packed, np.asarray(scales, np.float32), np.asarray(zeros, np.int32))]
    k["w4_gemm"][(N, M), W4_THREADS](*args, np.int32(group_size), d_y)
    return d_y.copy_to_host()
