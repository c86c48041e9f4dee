"""Numba W4 GEMV/GEMM ``y = x W_hat^T`` for AVX-512: a 16-entry table per (row, group) looked up
with ``vpermps``; equal to :func:`refquant.kernels.reference.w4_matmul` within
:func:`refquant.kernels.w4_tolerance`.

Selected by :func:`refquant.kernels.cpu_features.w4_path` on a CPU with ``avx512f`` for
``K % 32 == 0`` and ``group_size % 32 == 0`` (the last group may be shorter); other shapes and
CPUs run :mod:`refquant.kernels.cpu_w4`. Nothing is compiled at import.

Symbols
-------
====  ==================================================================================
x     [M, K] float32 activations
q     [N, K] 4-bit codes, packed 8 per int32 word (code ``8w + i`` at bits ``4i..4i+3``)
s, z  [N, G] per-group scales (float32) and zero points, ``g(k) = k // group_size``
T     [16] float32, per (n, g): ``T_ng[c] = fl32(s_ng * fl32(c - z_ng))``, c = 0..15
====  ==================================================================================

The table is the specification's dequantized value: ``W_hat[n, k] = T_{n,g(k)}[q_nk]`` bit for
bit (:func:`refquant.kernels.reference.dequantize_w4` computes the same float32 product), so

.. math::  y_{mn} = \\sum_k x_{mk}\\, T_{n,g(k)}[q_{nk}]

differs from the specification only in the order of the float32 sum (the bound of
:func:`refquant.kernels.w4_tolerance` holds).

Instruction sequence per 32 codes (4 words, one block ``b``)
------------------------------------------------------------
``vbroadcasti32x4`` the 4 words into all four 128-bit lanes (element ``4a + j`` = word ``j``);
for ``h`` in 0, 1: ``vpsrlvd`` by ``4(a + 4h)`` (element ``4a + j`` now holds code
``8j + a + 4h`` in its low 4 bits), ``vpermps`` with ``T`` (which reads only the low 4 bits of
each index: no mask, no int-to-float conversion, no zero-point term), ``vfmadd`` with ``x``
pre-arranged once per call as ``xp[32b + 16h + 4a + j] = x[32b + 8j + a + 4h]``
(:func:`arrange_x`). A table costs two vector ops per group (``(iota - z) * s``). Four
accumulators take turns (two per block, alternating blocks) and one horizontal sum ends a row.
"""

from __future__ import annotations

import functools

import numpy as np

from refquant.kernels import _llvm
from refquant.kernels.cpu_int8 import NJIT_OPTIONS

PERMPS = "llvm.x86.avx512.permvar.sf.512"


def _permps(builder, table, idx):
    """``<16 x float>`` ``table[idx & 15]`` lane by lane: ``vpermps`` (the LLVM intrinsic)."""
    from llvmlite import ir
    v16f, v16i = _llvm.vector("f32", 16), _llvm.vector("i32", 16)
    fn = builder.module.globals.get(PERMPS) or ir.Function(
        builder.module, ir.FunctionType(v16f, [v16f, v16i]), name=PERMPS)
    return builder.call(fn, [table, idx])


def _hsum16(builder, v):
    """The sum of the 16 lanes of ``v`` in a fixed order: halves added, four times."""
    for n in (8, 4, 2, 1):
        lo = builder.shuffle_vector(v, v, _llvm.i32_constant(list(range(n))))
        hi = builder.shuffle_vector(v, v, _llvm.i32_constant(list(range(n, 2 * n))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, _llvm.i32_const(0))


@functools.lru_cache(maxsize=None)
def w4_row_table():
    """The intrinsic ``w4_row_table(Q, q_off, XP, x_off, S, Z, sz_off, n_blocks, bpg)`` (float32):

    ``sum_b sum_{e < 32} XP[x_off + 32b + e] * T_{g(b)}[code]`` over the ``n_blocks`` 32-code
    blocks of one row (words ``Q[q_off + 4b : q_off + 4b + 4]``), ``bpg`` blocks per group,
    ``T_g = (iota - float(Z[sz_off + g])) * S[sz_off + g]``; see the module docstring.
    """
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.extending import intrinsic

    v4i32, v16i32, v16f = _llvm.vector("i32", 4), _llvm.vector("i32", 16), _llvm.vector("f32", 16)
    spread = _llvm.i32_constant([j for _ in range(4) for j in range(4)])   # 4 words to 4 lanes
    shifts = [_llvm.i32_constant([4 * (a + 4 * h) for a in range(4) for _ in range(4)])
              for h in range(2)]
    iota = ir.Constant(v16f, [float(c) for c in range(16)])
    zero16 = ir.Constant(v16f, [0.0] * 16)
    c = _llvm.i64_const

    @intrinsic
    def _w4_row_table(typingctx, Q, q_off, XP, x_off, S, Z, sz_off, n_blocks, bpg):
        sig = types.float32(Q, q_off, XP, x_off, S, Z, sz_off, n_blocks, bpg)

        def codegen(context, builder, signature, args):
            pq, px, ps, pz = _llvm.data_pointers(context, builder, signature, args, (0, 2, 4, 5))
            q_off_, x_off_, sz_off_, nb_, bpg_ = _llvm.to_i64(builder, *(args[i] for i in (1, 3, 6, 7, 8)))
            accs = [cgutils.alloca_once(builder, v16f) for _ in range(4)]
            for a in accs:
                builder.store(zero16, a)

            def block(b, table, pair):
                words = _llvm.load_vector(builder, pq, builder.add(q_off_, builder.mul(b, c(4))), v4i32, align=4)
                wv = builder.shuffle_vector(words, words, spread)
                for h in range(2):
                    idx = builder.lshr(wv, shifts[h])
                    w_hat = _permps(builder, table, idx)
                    xoff = builder.add(x_off_, builder.add(builder.mul(b, c(32)), c(16 * h)))
                    xv = _llvm.load_vector(builder, px, xoff, v16f, align=4)
                    slot = accs[2 * pair + h]
                    builder.store(builder.fadd(builder.load(slot), builder.fmul(xv, w_hat, flags=("contract",)),
                                               flags=("contract",)), slot)

            n_groups = builder.sdiv(builder.sub(builder.add(nb_, bpg_), c(1)), bpg_)
            with cgutils.for_range(builder, n_groups) as gl:
                g = gl.index
                sc = builder.load(builder.gep(ps, [builder.add(sz_off_, g)]), align=4)
                zc = builder.sitofp(builder.load(builder.gep(pz, [builder.add(sz_off_, g)]), align=4),
                                    ir.FloatType())
                zv = _llvm.broadcast(builder, zc, v16f)
                table = builder.fmul(builder.fsub(iota, zv), _llvm.broadcast(builder, sc, v16f))
                b0 = builder.mul(g, bpg_)
                rest = builder.sub(nb_, b0)
                nb = builder.select(builder.icmp_signed("<", rest, bpg_), rest, bpg_)
                half = builder.lshr(nb, c(1))
                with cgutils.for_range(builder, half) as loop:
                    b = builder.add(b0, builder.mul(loop.index, c(2)))
                    block(b, table, 0)
                    block(builder.add(b, c(1)), table, 1)
                with cgutils.if_unlikely(builder, builder.trunc(builder.and_(nb, c(1)), ir.IntType(1))):
                    block(builder.add(b0, builder.mul(half, c(2))), table, 0)
            total = builder.fadd(builder.fadd(builder.load(accs[0]), builder.load(accs[1])),
                                 builder.fadd(builder.load(accs[2]), builder.load(accs[3])))
            return _hsum16(builder, total)

        return sig, codegen

    return _w4_row_table


def arrange_x(x: np.ndarray) -> np.ndarray:
    """``xp[m, 32b + 16h + 4a + j] = x[m, 32b + 8j + a + 4h]`` (float32 [M, K], K % 32 == 0): the
    order in which the kernel's lanes meet the codes (see the module docstring)."""
    M, K = x.shape
    # [M, b, j, h, a] -> [M, b, h, a, j]
    return np.ascontiguousarray(x.reshape(M, K // 32, 4, 2, 4).transpose(0, 1, 3, 4, 2)).reshape(M, K)


@functools.lru_cache(maxsize=None)
def w4_gemm_table():
    """``w4_gemm_table(xp, packed, scales, zeros, group_size)``: ``xp`` from :func:`arrange_x`,
    ``packed`` i32 [N, K/8], ``scales`` f32 [N, G], ``zeros`` i32 [N, G] -> f32 [M, N], output
    rows in parallel."""
    from numba import njit, prange
    _row = w4_row_table()

    @njit(**NJIT_OPTIONS)
    def _w4_gemm_table(xp, packed, scales, zeros, group_size):
        M, K = xp.shape
        N, W = packed.shape
        G = scales.shape[1]
        nb, bpg = K // 32, group_size // 32
        xf = xp.reshape(M * K)
        pf = packed.reshape(N * W)
        sf = scales.reshape(N * G)
        zf = zeros.reshape(N * G)
        y = np.empty((M, N), np.float32)
        for n in prange(N):
            for m in range(M):
                y[m, n] = _row(pf, n * W, xf, m * K, sf, zf, n * G, nb, bpg)
        return y

    return _w4_gemm_table


def supports(K: int, group_size: int) -> bool:
    """Whether this kernel covers the shape: whole 32-code blocks, groups of whole blocks."""
    return K % 32 == 0 and group_size % 32 == 0


def w4_matmul(x, packed, scales, zeros, group_size: int) -> np.ndarray:
    """``x W_hat^T`` through the table kernel; operands pre-checked by
    :func:`refquant.kernels.reference.check_w4_operands`, shape covered by :func:`supports`."""
    xp = arrange_x(np.asarray(x, np.float32))
    return w4_gemm_table()(xp, np.ascontiguousarray(packed), np.ascontiguousarray(scales, np.float32),
                           np.ascontiguousarray(zeros, np.int32), int(group_size))
