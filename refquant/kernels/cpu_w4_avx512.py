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

Instruction sequence per 32 codes (16 bytes, one block ``b``)
-------------------------------------------------------------
With GPTQ packing (little-endian words) byte ``c`` of a block holds codes ``2c`` (low nibble)
and ``2c + 1`` (high nibble). ``vpmovzxbd`` widens the 16 bytes to 16 int32 lanes; ``vpermps``
with ``T`` reads only the low 4 bits of each index, so it looks up the even codes directly, and
after one ``vpsrld`` by 4 the odd ones (no mask, no int-to-float conversion, no zero-point term);
two ``vfmadd`` with ``x`` pre-arranged once per call as ``xp[32b + 16h + c] = x[32b + 2c + h]``
(:func:`arrange_x`). A table costs one load and one multiply per group: ``IZ[z] * s`` with the
16 exact vectors ``IZ[z] = (0 - z, ..., 15 - z)`` built once per call (a broadcast, conversion
and subtraction per group cost as much as the lookups they feed at group size 32). Four
accumulators take turns (two per block, alternating blocks) and one horizontal sum ends a row.
Every second block also issues a ``prefetcht1`` :data:`PREFETCH_BYTES` ahead in the codes: at
shapes whose weights come from DRAM the hardware prefetcher alone left the loop waiting.

The bound: per block three shuffles (``vpmovzxbd``, two ``vpermps``), one shift and two FMAs,
each a 512-bit instruction that Zen 4 runs as two 256-bit halves; measured ~5.5 cycles per
block with the codes in L2, i.e. issue-bound on the shuffle and FMA pipes, not memory-bound.
"""

from __future__ import annotations

import functools

import numpy as np

from refquant.kernels import _llvm
from refquant.kernels.cpu_int8 import NJIT_OPTIONS
from refquant.schemes._jit import stable

PERMPS = "llvm.x86.avx512.permvar.sf.512"
#: How far ahead of the block being read the codes are prefetched into L2, in bytes (two rows at
#: K = 4096; a thread reads its rows back to back, so this is its own stream). Measured on a
#: Zen 4 class EPYC, paired calls with and without, median of 300 per-pair ratios, over 1, 2 and
#: 4 KB ahead, ``prefetcht0`` / ``t1`` / ``t2``, every block or every second one. Kept: ``t1``
#: every second block, 4 KB ahead: 1.22-1.35x at 11008 x 4096 (weights from DRAM), 0.98-1.12x at
#: 4096 x 4096 (weights in L3), groups of 32 and 128, 1 and 2 threads.
PREFETCH_BYTES = 4096


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
    blocks of one row (bytes ``q_off + 16b`` to ``q_off + 16b + 15`` of ``Q``, ``q_off`` in
    bytes), ``bpg`` blocks per group,
    ``T_g = IZ[16 Z[sz_off + g] : +16] * S[sz_off + g]`` (``IZ[16z + c] = c - z``, float32
    [256]); see the module docstring.
    """
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.extending import intrinsic

    @intrinsic
    def _w4_row_table(typingctx, Q, q_off, XP, x_off, S, Z, sz_off, n_blocks, bpg, IZ):
        v16i8, v16i32, v16f = _llvm.vector("i8", 16), _llvm.vector("i32", 16), _llvm.vector("f32", 16)
        four = _llvm.i32_constant([4] * 16)
        zero16 = ir.Constant(v16f, [0.0] * 16)
        c = _llvm.i64_const

        sig = types.float32(Q, q_off, XP, x_off, S, Z, sz_off, n_blocks, bpg, IZ)

        def codegen(context, builder, signature, args):
            pq, px, ps, pz, piz = _llvm.data_pointers(context, builder, signature, args, (0, 2, 4, 5, 9))
            pb = builder.bitcast(pq, ir.IntType(8).as_pointer())     # the codes as bytes
            q_off_, x_off_, sz_off_, nb_, bpg_ = _llvm.to_i64(builder, *(args[i] for i in (1, 3, 6, 7, 8)))
            accs = [cgutils.alloca_once(builder, v16f) for _ in range(4)]
            for a in accs:
                builder.store(zero16, a)

            def block(b, table, pair):
                at = builder.add(q_off_, builder.mul(b, c(16)))      # byte offset of the block
                if pair == 0:                                        # once per 32 bytes
                    _llvm.prefetch(builder, pb, builder.add(at, c(PREFETCH_BYTES)))
                raw = _llvm.load_vector(builder, pb, at, v16i8, align=1)
                wv = builder.zext(raw, v16i32)                       # lane c: byte c = codes 2c, 2c+1
                for h in range(2):
                    idx = wv if h == 0 else builder.lshr(wv, four)
                    w_hat = _permps(builder, table, idx)
                    xoff = builder.add(x_off_, builder.add(builder.mul(b, c(32)), c(16 * h)))
                    xv = _llvm.load_vector(builder, px, xoff, v16f, align=4)
                    slot = accs[2 * pair + h]
                    builder.store(builder.fadd(builder.load(slot), builder.fmul(xv, w_hat, flags=("contract",)),
                                               flags=("contract",)), slot)

            def table_of(g):                                         # IZ[z_g] * s_g
                sc = builder.load(builder.gep(ps, [builder.add(sz_off_, g)]), align=4)
                zc = builder.sext(builder.load(builder.gep(pz, [builder.add(sz_off_, g)]), align=4),
                                  ir.IntType(64))
                iz = _llvm.load_vector(builder, piz, builder.mul(zc, c(16)), v16f, align=4)
                return builder.fmul(iz, _llvm.broadcast(builder, sc, v16f))

            def pairs(n, first, table_for):                          # blocks first .. first + n - 1
                half = builder.lshr(n, c(1))
                with cgutils.for_range(builder, half) as loop:
                    b = builder.add(first, builder.mul(loop.index, c(2)))
                    block(b, table_for(b), 0)
                    b1 = builder.add(b, c(1))
                    block(b1, table_for(b1), 1)
                with cgutils.if_unlikely(builder, builder.trunc(builder.and_(n, c(1)), ir.IntType(1))):
                    b = builder.add(first, builder.mul(half, c(2)))
                    block(b, table_for(b), 0)

            with builder.if_else(builder.icmp_signed("==", bpg_, c(1))) as (one, many):
                with one:                                            # a group per block
                    pairs(nb_, c(0), table_of)
                with many:
                    n_groups = builder.sdiv(builder.sub(builder.add(nb_, bpg_), c(1)), bpg_)
                    with cgutils.for_range(builder, n_groups) as gl:
                        g = gl.index
                        table = table_of(g)
                        b0 = builder.mul(g, bpg_)
                        rest = builder.sub(nb_, b0)
                        nb = builder.select(builder.icmp_signed("<", rest, bpg_), rest, bpg_)
                        pairs(nb, b0, lambda b: table)
            total = builder.fadd(builder.fadd(builder.load(accs[0]), builder.load(accs[1])),
                                 builder.fadd(builder.load(accs[2]), builder.load(accs[3])))
            return _hsum16(builder, total)

        return sig, codegen

    return stable(_w4_row_table)


def arrange_x(x: np.ndarray) -> np.ndarray:
    """``xp[m, 32b + 16h + c] = x[m, 32b + 2c + h]`` (float32 [M, K], K % 32 == 0): per block the
    even ``k`` (low nibbles), then the odd ``k`` (high nibbles), the order in which the kernel's
    lanes meet the codes (see the module docstring)."""
    M, K = x.shape
    # [M, b, c, h] -> [M, b, h, c]
    return np.ascontiguousarray(x.reshape(M, K // 32, 16, 2).transpose(0, 1, 3, 2)).reshape(M, K)


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
        iz = np.empty(256, np.float32)                      # IZ[z, c] = c - z, exact
        for z in range(16):
            for c in range(16):
                iz[16 * z + c] = np.float32(c - z)
        xf = xp.reshape(M * K)
        pf = packed.reshape(N * W)
        sf = scales.reshape(N * G)
        zf = zeros.reshape(N * G)
        y = np.empty((M, N), np.float32)
        for n in prange(N):
            for m in range(M):
                y[m, n] = _row(pf, 4 * n * W, xf, m * K, sf, zf, n * G, nb, bpg, iz)
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
