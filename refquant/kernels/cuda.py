"""numba.cuda kernels (the ``numba-cuda`` package) with the signatures of the reference.

Each kernel has its own builder (:func:`int8_gemm`, :func:`w4_gemm`) that defines it on first
use, and numba.cuda compiles it at its first launch, so importing this module
needs neither a GPU nor a CUDA toolkit. They run on a real device or, with
``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported, on Numba's CUDA simulator (every thread
a Python thread: slow, for tests on tiny shapes only).

int8 GEMM
---------
Shared-memory tiling [1]_ with register blocking: a ``T x T`` block of threads owns a
``4T x 4T`` tile of ``C`` and each thread ``4 x 4`` of its outputs (rows ``ty + T i``, columns
``tx + T j``, so a warp reads consecutive shared-memory words of ``B`` and one broadcast word of
``A``). For each slice of ``T`` columns of ``A`` and rows of ``B`` the block stages both tiles in
shared memory (widened to int32; global reads coalesced), synchronizes, and each thread
accumulates its 16 dot products in int32 registers (exact under the ``K <= 131071`` bound): 8
shared-memory reads per 16 multiply-adds instead of 2 per one. Out-of-range elements are staged as
zeros, so ``M``, ``N``, ``K`` need not be multiples of the tile.

W4 GEMV/GEMM
------------
One warp per ``W4_ROWS_PER_WARP`` (4) outputs ``(m, n0 .. n0 + 3)``, ``W4_WARPS`` warps to a block:
lane ``t`` walks the packed words ``t, t + 32, ...`` (consecutive lanes read consecutive words of
a row: coalesced), loads the word's 8 values of ``x`` once for all the warp's rows, unpacks the
eight nibbles of each row's word with shifts and masks and, when ``group_size`` is a multiple of 8
(a word then lies in one group), adds ``s_{n,g} (sum_i x_k q_k - z_{n,g} sum_i x_k)`` per word in
float32 (else ``x_k s_{n,g} (q_k - z_{n,g})`` per value); a tree reduction in shared memory sums
the lanes. The weight is read once, 4 bits per value, and never expanded in memory; ``x`` is read
once per 4 rows instead of once per row.

References
----------
.. [1] NVIDIA, "CUDA C++ Programming Guide", section "Shared Memory" (matrix multiplication
   with shared memory).
"""

from __future__ import annotations

import functools

import numpy as np

cuda = None          # numba.cuda, bound by a kernel builder on first use

TILE = 16            # int8 GEMM: threads per block TILE x TILE, and the k step
REG = 4              # int8 GEMM: each thread computes REG x REG outputs (block tile 64 x 64)
GEMM_TILE = TILE * REG
W4_WARPS = 4         # W4 kernel: warps (of 32 threads) per block
W4_ROWS_PER_WARP = 4 # W4 kernel: output rows per warp (sharing each word's 8 x values)
W4_ROWS = W4_WARPS * W4_ROWS_PER_WARP    # output rows per block
W4_BLOCK = (32, W4_WARPS)


def _bind_cuda():
    """Bind the module global ``cuda`` to ``numba.cuda`` (the simulator swaps it in the kernels'
    globals, so the kernels must read it as a module global, not a closure variable)."""
    global cuda
    from numba import cuda as numba_cuda
    cuda = numba_cuda
    return numba_cuda


@functools.lru_cache(maxsize=None)
def int8_gemm():
    """Define (once) and return the int8 GEMM kernel ``int8_gemm[grid, (TILE, TILE)](A, B, C)``:
    ``A`` int8 [M, K], ``B`` int8 [K, N] -> ``C`` int32 [M, N], grid
    ``(ceil(N / GEMM_TILE), ceil(M / GEMM_TILE))``. Compilation happens at its first launch."""
    _bind_cuda()
    from numba import int32

    T, BM, BK, RT = TILE, GEMM_TILE, TILE, REG

    @cuda.jit
    def _int8_gemm(A, B, C):
        # block (T, T) owns a BM x BM tile of C, thread (tx, ty) its REG x REG outputs at rows
        # ty + T i, columns tx + T j
        sA = cuda.shared.array((BK, BM), int32)            # sA[kk, r] = A[row0 + r, k0 + kk]
        sB = cuda.shared.array((BK, BM), int32)            # sB[kk, c] = B[k0 + kk, col0 + c]
        acc = cuda.local.array((REG, REG), int32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * T + tx
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BM
        M, K = A.shape
        N = B.shape[1]
        for i in range(RT):
            for j in range(RT):
                acc[i, j] = 0
        for k0 in range(0, K, BK):
            for l in range(RT):                              # BM * BK elements, T * T threads
                e = tid + T * T * l
                r, kk = e // BK, e % BK                     # A: consecutive threads, consecutive k
                row, k = row0 + r, k0 + kk
                sA[kk, r] = int32(A[row, k]) if (row < M and k < K) else int32(0)
                kk2, c = e // BM, e % BM                    # B: consecutive threads, consecutive n
                k, col = k0 + kk2, col0 + c
                sB[kk2, c] = int32(B[k, col]) if (k < K and col < N) else int32(0)
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(RT):
                    a = sA[kk, ty + T * i]
                    for j in range(RT):
                        acc[i, j] = int32(acc[i, j] + a * sB[kk, tx + T * j])
            cuda.syncthreads()
        for i in range(RT):
            for j in range(RT):
                row, col = row0 + ty + T * i, col0 + tx + T * j
                if row < M and col < N:
                    C[row, col] = acc[i, j]

    return _int8_gemm


@functools.lru_cache(maxsize=None)
def w4_gemm():
    """Define (once) and return the W4 kernel
    ``w4_gemm[(ceil(N / W4_ROWS), M), W4_BLOCK](x, packed, scales, zeros, group_size, y)``:
    ``x`` f32 [M, K], ``packed`` i32 [N, W], ``scales`` f32 [N, G], ``zeros`` i32 [N, G] ->
    ``y`` f32 [M, N]. Compilation happens at its first launch."""
    _bind_cuda()
    from numba import float32

    WARPS, RW = W4_WARPS, W4_ROWS_PER_WARP

    @cuda.jit
    def _w4_gemm(x, packed, scales, zeros, group_size, y):
        # block (32, WARPS): warp r owns the RW output rows n0 + rr, n0 = (blockIdx.x WARPS + r) RW
        part = cuda.shared.array((W4_WARPS, W4_ROWS_PER_WARP, 32), float32)
        xw = cuda.local.array(8, float32)
        acc = cuda.local.array(W4_ROWS_PER_WARP, float32)
        lane = cuda.threadIdx.x
        r = cuda.threadIdx.y
        n0 = (cuda.blockIdx.x * WARPS + r) * RW
        m = cuda.blockIdx.y
        K = x.shape[1]
        W = packed.shape[1]
        N = packed.shape[0]
        for rr in range(RW):
            acc[rr] = float32(0.0)
        if group_size % 8 == 0:
            # a word lies in one group: s (sum x q - z sum x) per word and row; the word's 8 x
            # values are read once and serve the warp's RW rows
            for w in range(lane, W, 32):
                k0 = 8 * w
                xs = float32(0.0)
                for i in range(8):
                    xw[i] = x[m, k0 + i] if k0 + i < K else float32(0.0)
                    xs += xw[i]
                g = k0 // group_size
                for rr in range(RW):
                    n = n0 + rr
                    if n < N:
                        q = packed[n, w]
                        dot = float32(0.0)
                        for i in range(8):
                            dot += xw[i] * float32((q >> (4 * i)) & 15)
                        acc[rr] += scales[n, g] * (dot - float32(zeros[n, g]) * xs)
        else:
            for w in range(lane, W, 32):
                for rr in range(RW):
                    n = n0 + rr
                    if n < N:
                        q = packed[n, w]
                        for i in range(8):
                            k = 8 * w + i
                            if k < K:
                                g = k // group_size
                                code = (q >> (4 * i)) & 15
                                acc[rr] += x[m, k] * (scales[n, g] * float32(code - zeros[n, g]))
        for rr in range(RW):
            part[r, rr, lane] = acc[rr]
        cuda.syncthreads()
        stride = 16
        while stride > 0:
            if lane < stride:
                for rr in range(RW):
                    part[r, rr, lane] += part[r, rr, lane + stride]
            cuda.syncthreads()
            stride //= 2
        if lane < RW and n0 + lane < N:
            y[m, n0 + lane] = part[r, lane, 0]

    return _w4_gemm


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CUDA ``C = A B`` (int8 x int8 -> int32), equal to the reference; operands pre-checked."""
    kernel = int8_gemm()
    M = a.shape[0]
    N = b.shape[1]
    d_a = cuda.to_device(np.ascontiguousarray(a))
    d_b = cuda.to_device(np.ascontiguousarray(b))
    d_c = cuda.device_array((M, N), np.int32)
    grid = (-(-N // GEMM_TILE), -(-M // GEMM_TILE))
    kernel[grid, (TILE, TILE)](d_a, d_b, d_c)
    return d_c.copy_to_host()


def w4_matmul(x, packed, scales, zeros, group_size: int) -> np.ndarray:
    """CUDA ``x W_hat^T`` with on-the-fly 4-bit dequantization; operands pre-checked."""
    kernel = w4_gemm()
    M = x.shape[0]
    N = packed.shape[0]
    d_y = cuda.device_array((M, N), np.float32)
    args = [cuda.to_device(np.ascontiguousarray(v)) for v in
            (x, packed, np.asarray(scales, np.float32), np.asarray(zeros, np.int32))]
    kernel[(-(-N // W4_ROWS), M), W4_BLOCK](*args, np.int32(group_size), d_y)
    return d_y.copy_to_host()
