"""Numba W4 GEMV/GEMM ``y = x W_hat^T`` with 4-bit group-quantized weights unpacked inside the
kernel; equal to :func:`refquant.kernels.reference.w4_matmul` within
:func:`refquant.kernels.w4_tolerance` (float32 sums in another order).

Nothing is compiled at import: each kernel is built by its own cached builder on first call.

Symbols
-------
====  ==================================================================================
x     [M, K] float32 activations
q     [N, K] 4-bit codes, packed 8 per int32 word (code ``8w + i`` at bits ``4i..4i+3``)
s, z  [N, G] per-group scales (float32) and zero points, ``g(k) = k // group_size``
====  ==================================================================================

Whole-word groups (``group_size % 8 == 0``)
-------------------------------------------
Per output ``n`` and group ``g`` the zero point is taken out of the inner loop,

.. math::  \\sum_{k \\in g} x_k\\, s_{ng} (q_{nk} - z_{ng})
           = s_{ng} \\Big(\\sum_{k \\in g} x_k q_{nk} - z_{ng} \\sum_{k \\in g} x_k\\Big),

so a row is ``sum_g s_ng (sum_{k in g} x_k q_nk) - sum_g s_ng z_ng (sum_{k in g} x_k)``, the
second sum from per-group sums of ``x`` computed once. The first is LLVM vector IR
(:func:`w4_row`): each int32 word is broadcast to 8 lanes, lane ``i`` shifted right by ``4i``
and masked, converted to float and multiply-added with ``x[8w : 8w + 8]``; a group's sum is
scaled into one row accumulator and the row ends with one horizontal sum. The weight is never
expanded.

Other group sizes
-----------------
A group may split a word: :func:`w4_gemm_general` takes one code at a time,
``y_mn = sum_k x_mk (s_{n,g(k)} (q_nk - z_{n,g(k)}))`` in float32.

Many rows (``M >= BLAS_ROWS``: prefill, perplexity windows)
-----------------------------------------------------------
The kernels above decode every weight once per row of ``x``, so their cost grows with ``M`` at
the GEMV's rate, while a float32 BLAS GEMM reuses each weight across rows from cache. From
``BLAS_ROWS`` rows on, :func:`w4_matmul_blocked` dequantizes ``BLAS_BLOCK_BYTES`` of ``W_hat``
rows at a time (:func:`dequantize_rows`, equal to
:func:`refquant.kernels.reference.dequantize_w4` bit for bit) into one reused buffer and hands
each block to BLAS: the specification's own arithmetic, block by block, with the weight still
held packed (the buffer is a few MiB, not the float32 weight). The dequantization runs on the
calling thread only, so no Numba worker pool is left spinning on the cores that BLAS's threads
need next.
"""

from __future__ import annotations

import functools

import numpy as np

from refquant.kernels import _llvm, cpu_features, cpu_w4_avx512
from refquant.kernels.cpu_int8 import NJIT_OPTIONS
from refquant.schemes._jit import stable


def _horizontal_sum(builder, acc):
    """The sum of the 8 lanes of ``acc``: (0+4, 1+5, 2+6, 3+7) -> (.+.) -> ., a fixed order."""
    lo = builder.shuffle_vector(acc, acc, _llvm.i32_constant([0, 1, 2, 3]))
    hi = builder.shuffle_vector(acc, acc, _llvm.i32_constant([4, 5, 6, 7]))
    s4 = builder.fadd(lo, hi)
    s2 = builder.fadd(builder.shuffle_vector(s4, s4, _llvm.i32_constant([0, 1])),
                      builder.shuffle_vector(s4, s4, _llvm.i32_constant([2, 3])))
    return builder.fadd(builder.extract_element(s2, _llvm.i32_const(0)),
                        builder.extract_element(s2, _llvm.i32_const(1)))


@functools.lru_cache(maxsize=None)
def w4_row():
    """The intrinsic ``w4_row(Q, q_off, X, x_off, S, s_off, n_words, wpg)`` (float32):

    ``sum_g S[s_off + g] * sum_{w in group g} sum_{i < 8} X[x_off + 8w + i] * ((Q[q_off + w] >> 4i) & 15)``

    over the ``n_words`` words of one row in groups of ``wpg`` words (the last may be
    shorter). One 8-lane vector per word: broadcast the word, shift lane i right by 4i,
    mask, convert to float and multiply-add (contracted to an FMA where the CPU has one)
    with the 8 contiguous x; four vector accumulators take turns over a group's words, the
    group's sum is scaled into one row accumulator, and a single horizontal sum ends the
    row (a fixed float32 summation order).
    """
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.extending import intrinsic

    @intrinsic
    def _w4_row(typingctx, Q, q_off, X, x_off, S, s_off, n_words, wpg):
        v8i32, v8f32 = _llvm.vector("i32", 8), _llvm.vector("f32", 8)
        shifts = _llvm.i32_constant([4 * i for i in range(8)])
        mask15 = _llvm.i32_constant([15] * 8)
        zero8 = ir.Constant(v8f32, [0.0] * 8)
        c = _llvm.i64_const

        sig = types.float32(Q, q_off, X, x_off, S, s_off, n_words, wpg)

        def codegen(context, builder, signature, args):
            pq, px, ps = _llvm.data_pointers(context, builder, signature, args, (0, 2, 4))
            q_off_, x_off_, s_off_, n_, wpg_ = _llvm.to_i64(builder, *(args[i] for i in (1, 3, 5, 6, 7)))
            accs = [cgutils.alloca_once(builder, v8f32) for _ in range(4)]
            row = cgutils.alloca_once(builder, v8f32)
            builder.store(zero8, row)

            def word_step(w, slot):
                word = builder.load(builder.gep(pq, [builder.add(q_off_, w)]), align=4)
                codes = builder.and_(builder.lshr(_llvm.broadcast(builder, word, v8i32), shifts), mask15)
                fc = builder.sitofp(codes, v8f32)
                xv = _llvm.load_vector(builder, px, builder.add(x_off_, builder.mul(w, c(8))), v8f32, align=4)
                prod = builder.fmul(xv, fc, flags=("contract",))
                builder.store(builder.fadd(builder.load(slot), prod, flags=("contract",)), slot)

            n_groups = builder.sdiv(builder.sub(builder.add(n_, wpg_), c(1)), wpg_)
            with cgutils.for_range(builder, n_groups) as gl:
                g = gl.index
                w0 = builder.mul(g, wpg_)
                rest = builder.sub(n_, w0)
                nw = builder.select(builder.icmp_signed("<", rest, wpg_), rest, wpg_)
                for a in accs:
                    builder.store(zero8, a)
                quarter = builder.lshr(nw, c(2))
                with cgutils.for_range(builder, quarter) as loop:
                    w = builder.add(w0, builder.mul(loop.index, c(4)))
                    for u in range(4):
                        word_step(builder.add(w, c(u)), accs[u])
                done = builder.add(w0, builder.mul(quarter, c(4)))
                with cgutils.for_range(builder, builder.and_(nw, c(3))) as loop:
                    word_step(builder.add(done, loop.index), accs[0])
                gacc = builder.fadd(builder.fadd(builder.load(accs[0]), builder.load(accs[1])),
                                    builder.fadd(builder.load(accs[2]), builder.load(accs[3])))
                sc = builder.load(builder.gep(ps, [builder.add(s_off_, g)]), align=4)
                sv = _llvm.broadcast(builder, sc, v8f32)
                builder.store(builder.fadd(builder.load(row), builder.fmul(sv, gacc, flags=("contract",)),
                                           flags=("contract",)), row)
            return _horizontal_sum(builder, builder.load(row))

        return sig, codegen

    return stable(_w4_row)


@functools.lru_cache(maxsize=None)
def w4_gemm():
    """``w4_gemm(x, packed, scales, zeros, group_size)`` for ``group_size % 8 == 0`` (a group is
    a whole number of words): ``x`` f32 [M, K], ``packed`` i32 [N, W], ``scales`` f32 [N, G],
    ``zeros`` i32 [N, G] -> ``y`` f32 [M, N], output rows in parallel."""
    from numba import njit, prange
    _w4_row = w4_row()

    @njit(**NJIT_OPTIONS)
    def _w4_gemm(x, packed, scales, zeros, group_size):
        M, K = x.shape
        N, W = packed.shape
        G = scales.shape[1]
        wpg = group_size // 8                               # words per group
        xp = np.zeros((M, 8 * W), np.float32)               # x padded to whole words
        xs = np.zeros((M, G), np.float32)                   # per-group sums of x
        for m in range(M):
            for k in range(K):
                xp[m, k] = x[m, k]
                xs[m, k // group_size] += x[m, k]
        xf = xp.reshape(M * 8 * W)
        pf = packed.reshape(N * W)
        sf = scales.reshape(N * G)
        y = np.zeros((M, N), np.float32)
        for n in prange(N):
            for m in range(M):
                zterm = np.float32(0.0)                     # sum_g s_g z_g sum_{k in g} x_k
                for g in range(G):
                    zterm += scales[n, g] * (np.float32(zeros[n, g]) * xs[m, g])
                y[m, n] = _w4_row(pf, n * W, xf, m * 8 * W, sf, n * G, W, wpg) - zterm
        return y

    return _w4_gemm


@functools.lru_cache(maxsize=None)
def w4_gemm_general():
    """``w4_gemm_general(x, packed, scales, zeros, group_size)`` for any ``group_size``: one code
    at a time (groups may split a word), output rows in parallel."""
    from numba import njit, prange

    @njit(**NJIT_OPTIONS)
    def _w4_gemm_general(x, packed, scales, zeros, group_size):
        M, K = x.shape
        N = packed.shape[0]
        y = np.zeros((M, N), np.float32)
        for n in prange(N):
            for m in range(M):
                total = np.float32(0.0)
                for k in range(K):
                    g = k // group_size
                    q = (packed[n, k >> 3] >> (4 * (k & 7))) & 15
                    total += x[m, k] * (np.float32(scales[n, g])
                                        * np.float32(q - np.int32(zeros[n, g])))
                y[m, n] = total
        return y

    return _w4_gemm_general


BLAS_ROWS = 64                  # from this many rows of x on, dequantize blocks and use BLAS
BLAS_BLOCK_BYTES = 4 << 20      # float32 bytes of W_hat per block (stays in L2/L3 for BLAS)


@functools.lru_cache(maxsize=None)
def dequantize_rows():
    """``dequantize_rows(packed, scales, zeros, group_size, K, n0, out)``: ``out[r, k] =
    W_hat[n0 + r, k] = fl32(s (q - z))`` for the ``out.shape[0]`` rows from ``n0``, bit for bit
    :func:`refquant.kernels.reference.dequantize_w4` (``q - z`` is exact; one rounding). Per
    (row, group) a 16-entry table ``T[c] = s (c - z)`` is built and each code looked up; single
    threaded (see the module docstring)."""
    from numba import njit

    @njit(cache=True, nogil=True)
    def _dequantize_rows(packed, scales, zeros, group_size, K, n0, out):
        T = np.empty(16, np.float32)
        whole_words = group_size % 8 == 0
        for r in range(out.shape[0]):
            n = n0 + r
            o = out[r]
            pr = packed[n]
            for g in range(scales.shape[1]):
                s = np.float32(scales[n, g])
                z = np.int32(zeros[n, g])
                for c in range(16):
                    T[c] = s * np.float32(c - z)
                k0, k1 = g * group_size, min(K, (g + 1) * group_size)
                if whole_words and k1 % 8 == 0:
                    for w in range(k0 // 8, k1 // 8):
                        p = pr[w]
                        for i in range(8):
                            o[8 * w + i] = T[(p >> (4 * i)) & 15]
                else:                                    # a group splits a word, or K's tail
                    for k in range(k0, k1):
                        o[k] = T[(pr[k >> 3] >> (4 * (k & 7))) & 15]
        return out

    return _dequantize_rows


def w4_matmul_blocked(x, packed, scales, zeros, group_size: int) -> np.ndarray:
    """``x W_hat^T`` for many rows of ``x``: blocks of ``W_hat`` rows dequantized
    (:func:`dequantize_rows`) into one buffer and multiplied by BLAS (``x @ block.T``); operands
    pre-checked, any group size. Within :func:`refquant.kernels.w4_tolerance` of the
    specification (the same ``W_hat``; BLAS may sum in another order)."""
    x = np.ascontiguousarray(x, np.float32)
    M, K = x.shape
    N = packed.shape[0]
    packed, scales, zeros = (np.ascontiguousarray(packed), np.ascontiguousarray(scales, np.float32),
                             np.ascontiguousarray(zeros, np.int32))
    rows = max(16, min(N, BLAS_BLOCK_BYTES // (4 * max(K, 1))))
    buf = np.empty((rows, K), np.float32)
    y = np.empty((M, N), np.float32)
    deq = dequantize_rows()
    for n0 in range(0, N, rows):
        n1 = min(N, n0 + rows)
        block = deq(packed, scales, zeros, int(group_size), K, n0, buf[: n1 - n0])   # [n1-n0, K]
        y[:, n0:n1] = x @ block.T                                                     # [M, n1-n0]
    return y


def w4_matmul(x, packed, scales, zeros, group_size: int) -> np.ndarray:
    """Numba ``x W_hat^T`` with on-the-fly 4-bit dequantization; operands pre-checked by
    :func:`refquant.kernels.reference.check_w4_operands`. ``M >= BLAS_ROWS`` takes
    :func:`w4_matmul_blocked`; otherwise, on the ``avx512`` path of
    :func:`refquant.kernels.cpu_features.w4_path`, shapes that
    :func:`refquant.kernels.cpu_w4_avx512.supports` covers run its table kernel."""
    if x.shape[0] >= BLAS_ROWS:
        return w4_matmul_blocked(x, packed, scales, zeros, group_size)
    if cpu_features.w4_path()[0] == "avx512" and cpu_w4_avx512.supports(x.shape[1], group_size):
        return cpu_w4_avx512.w4_matmul(x, packed, scales, zeros, group_size)
    kernel = w4_gemm() if group_size % 8 == 0 else w4_gemm_general()
    return kernel(np.ascontiguousarray(x), np.ascontiguousarray(packed),
                  np.ascontiguousarray(scales, np.float32), np.ascontiguousarray(zeros, np.int32),
                  int(group_size))
