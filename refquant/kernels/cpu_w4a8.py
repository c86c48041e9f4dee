"""Numba W4A8 ``y = x W_hat^T`` with the activations quantized to int8 per block of 32 (ggml's
Q8_0) and integer dot products, equal to :func:`refquant.kernels.reference.w4a8_matmul`: the
integer dot products bit for bit, the result within :func:`refquant.kernels.w4a8_tolerance`.

Two paths (:func:`refquant.kernels.cpu_features.w4a8_path`); nothing is compiled at import.

Symbols
-------
=====  =========================  ==============================================================
a, d   [M, K] int8, [M, K/32]     ``reference.quantize_act_q8(x)``: codes and block scales
q      [N, K]                     4-bit codes, GPTQ packing (code ``8w + i`` at bits ``4i`` of
                                  int32 word ``w``)
s, z   [N, G]                     group scales (float32) and zero points
P_w    int32                      ``sum_{i<8} q_{n,8w+i} a_{m,8w+i}``, one word's dot product
A_b    int32                      ``sum_{k in b} a_mk``; ``D_g = sum_{b in g} d_b A_b``
=====  =========================  ==============================================================

Both paths compute

.. math::  y_{mn} = \\sum_w \\mathrm{fl}(s_{n,g(w)} d_{m,b(w)})\\, P_w
                    - \\sum_g s_{ng} z_{ng} D_{mg}

(the zero point taken out of the integer sums, as the W4A16 kernel does).

``avx512_vnni``: per 64-byte chunk of a row (16 words, 128 codes)
-----------------------------------------------------------------
``lo = bytes & 15`` (the even ``k`` of each word: byte ``e`` of word ``c`` holds codes
``8c + 2e`` and ``8c + 2e + 1``), ``hi = (bytes >> 4) & 15`` (the odd ``k``);
``vpdpbusd(vpdpbusd(0, lo, a_even), hi, a_odd)`` with the activation codes arranged once per
call (:func:`arrange_act`: ``act[128c' + 4c + e] = a[8c + 2e]``, ``act[128c' + 64 + 4c + e] =
a[8c + 2e + 1]`` within chunk ``c'``) gives lane ``c`` = ``P_w`` of word ``c`` exactly (unsigned
codes times signed activations: no offset correction); then ``vcvtdq2ps``, one multiply of the
lane scales ``s_g`` (broadcast or spread from 4/2 groups for group sizes 32/64) by the
per-call ``d`` per word, one FMA into the row accumulator, and one horizontal sum per row. The
zero-point term is 16 groups per vector op; blocks past the last whole chunk (``K % 128``) and
groups past the last 16 are summed by scalar code.

``portable``: block by block in scalar code, ``fl(s d) fl(P_b - z A_b)`` summed in float32.

``D_g`` is float32 in the ``avx512_vnni`` path: activations so large that ``d_b A_b``
(``<= 32 max|x|``) leaves float32 (``max|x| > ~1e37``) overflow it, where the specification's
float64 sum does not.
"""

from __future__ import annotations

import functools

import numpy as np

from refquant.kernels import _llvm
from refquant.kernels.cpu_int8 import NJIT_OPTIONS
from refquant.kernels.cpu_int8_vnni import _dpbusd
from refquant.kernels.cpu_w4_avx512 import _hsum16
from refquant.kernels.reference import ACT_BLOCK, quantize_act_q8
from refquant.schemes._jit import stable


def _chunk_dots(builder, pq, q_off, pa, a_off):
    """``<16 x i32>``: lane ``c`` = ``P`` of word ``q_off + c`` against ``act[a_off : a_off + 128]``."""
    from llvmlite import ir
    v64i8, v16i32 = _llvm.vector("i8", 64), _llvm.vector("i32", 16)
    raw = builder.load(builder.bitcast(builder.gep(pq, [q_off]), v64i8.as_pointer()), align=4)
    f15 = ir.Constant(v64i8, [15] * 64)
    lo = builder.and_(raw, f15)
    hi = builder.and_(builder.lshr(raw, ir.Constant(v64i8, [4] * 64)), f15)
    ev = _llvm.load_vector(builder, pa, a_off, v64i8, align=1)
    od = _llvm.load_vector(builder, pa, builder.add(a_off, _llvm.i64_const(64)), v64i8, align=1)
    acc = ir.Constant(v16i32, [0] * 16)
    acc = _dpbusd(builder, acc, builder.bitcast(lo, v16i32), builder.bitcast(ev, v16i32))
    return _dpbusd(builder, acc, builder.bitcast(hi, v16i32), builder.bitcast(od, v16i32))


@functools.lru_cache(maxsize=None)
def chunk_dots():
    """The intrinsic ``chunk_dots(Q, q_off, ACT, a_off, OUT, o_off)``: stores the 16 word dot
    products of one chunk (:func:`_chunk_dots`) at ``OUT[o_off : o_off + 16]`` (int32); the
    test of the integer part runs it."""
    from numba import types
    from numba.core.extending import intrinsic

    @intrinsic
    def _chunk_dots_store(typingctx, Q, q_off, ACT, a_off, OUT, o_off):
        v16i32 = _llvm.vector("i32", 16)

        sig = types.void(Q, q_off, ACT, a_off, OUT, o_off)

        def codegen(context, builder, signature, args):
            pq, pa, po = _llvm.data_pointers(context, builder, signature, args, (0, 2, 4))
            q_off_, a_off_, o_off_ = _llvm.to_i64(builder, args[1], args[3], args[5])
            v = _chunk_dots(builder, pq, q_off_, pa, a_off_)
            builder.store(v, builder.bitcast(builder.gep(po, [o_off_]), v16i32.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return stable(_chunk_dots_store)


def _lane_scales(builder, ps, s_off, ch, mode, cpg):
    """``<16 x float>`` ``s_{g(w)}`` for the 16 words of chunk ``ch``: mode 2 (group 32) spreads
    4 groups over 4 lanes each, mode 1 (group 64) 2 over 8, mode 0 broadcasts group
    ``ch // cpg`` (``cpg`` chunks per group)."""
    from llvmlite import ir
    v16f = _llvm.vector("f32", 16)
    if mode == 0:
        sc = builder.load(builder.gep(ps, [builder.add(s_off, builder.udiv(ch, cpg))]), align=4)
        return _llvm.broadcast(builder, sc, v16f)
    n = 4 if mode == 2 else 2
    v = _llvm.load_vector(builder, ps, builder.add(s_off, builder.mul(ch, _llvm.i64_const(n))),
                          _llvm.vector("f32", n), align=4)
    del ir
    return builder.shuffle_vector(v, v, _llvm.i32_constant([c * n // 16 for c in range(16)]))


@functools.lru_cache(maxsize=None)
def w4a8_row():
    """The intrinsic ``w4a8_row(Q, q_off, ACT, a_off, DL, dl_off, S, Z, sz_off, DG, dg_off,
    n_chunks, G16, mode, cpg)`` (float32): ``sum_{lanes, chunks < n_chunks} fl(s d) P_w`` minus
    ``sum_{g < G16} s_g z_g D_g`` (``G16`` a multiple of 16), see the module docstring.
    ``DL`` float32: ``d`` per word."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.extending import intrinsic

    @intrinsic
    def _w4a8_row(typingctx, Q, q_off, ACT, a_off, DL, dl_off, S, Z, sz_off, DG, dg_off,
                  n_chunks, G16, mode, cpg):
        v16f, v16i32 = _llvm.vector("f32", 16), _llvm.vector("i32", 16)
        zero16 = ir.Constant(v16f, [0.0] * 16)
        c = _llvm.i64_const

        sig = types.float32(Q, q_off, ACT, a_off, DL, dl_off, S, Z, sz_off, DG, dg_off,
                            n_chunks, G16, mode, cpg)

        def codegen(context, builder, signature, args):
            pq, pa, pd, ps, pz, pg = _llvm.data_pointers(context, builder, signature, args,
                                                         (0, 2, 4, 6, 7, 9))
            q_off_, a_off_, dl_off_, sz_off_, dg_off_, nch, g16, mode_, cpg_ = _llvm.to_i64(
                builder, *(args[i] for i in (1, 3, 5, 8, 10, 11, 12, 13, 14)))
            acc = cgutils.alloca_once(builder, v16f)
            builder.store(zero16, acc)

            def chunks(m):
                with cgutils.for_range(builder, nch) as loop:
                    ch = loop.index
                    P = _chunk_dots(builder, pq, builder.add(q_off_, builder.mul(ch, c(16))),
                                    pa, builder.add(a_off_, builder.mul(ch, c(128))))
                    dl = _llvm.load_vector(builder, pd, builder.add(dl_off_, builder.mul(ch, c(16))),
                                           v16f, align=4)
                    sd = builder.fmul(_lane_scales(builder, ps, sz_off_, ch, m, cpg_), dl)
                    term = builder.fmul(sd, builder.sitofp(P, v16f), flags=("contract",))
                    builder.store(builder.fadd(builder.load(acc), term, flags=("contract",)), acc)

            is2 = builder.icmp_signed("==", mode_, c(2))
            is1 = builder.icmp_signed("==", mode_, c(1))
            with builder.if_else(is2) as (then2, other2):
                with then2:
                    chunks(2)
                with other2:
                    with builder.if_else(is1) as (then1, other1):
                        with then1:
                            chunks(1)
                        with other1:
                            chunks(0)
            zacc = cgutils.alloca_once(builder, v16f)
            builder.store(zero16, zacc)
            with cgutils.for_range(builder, builder.udiv(g16, c(16))) as loop:
                off = builder.mul(loop.index, c(16))
                sv = _llvm.load_vector(builder, ps, builder.add(sz_off_, off), v16f, align=4)
                zv = builder.sitofp(_llvm.load_vector(builder, pz, builder.add(sz_off_, off), v16i32,
                                                      align=4), v16f)
                dv = _llvm.load_vector(builder, pg, builder.add(dg_off_, off), v16f, align=4)
                term = builder.fmul(builder.fmul(sv, zv), dv, flags=("contract",))
                builder.store(builder.fadd(builder.load(zacc), term, flags=("contract",)), zacc)
            return builder.fsub(_hsum16(builder, builder.load(acc)), _hsum16(builder, builder.load(zacc)))

        return sig, codegen

    return stable(_w4a8_row)


@functools.lru_cache(maxsize=None)
def prepare_act():
    """``(x, group_size) -> (a, d, act, DL, DG)``: :func:`_per_call` in one compiled pass (the
    NumPy version costs ~45 us per 4096-wide row, a fifth of the GEMV). The codes are
    :func:`refquant.kernels.reference.quantize_act_q8`'s bit for bit (float32 ``amax / 127``,
    ``1/d``, ``x * (1/d)`` rounded half away from zero through the exact fractional part;
    ``tests/test_kernels_w4.py`` pins both); ``DG`` sums in float64 like :func:`_per_call`."""
    from numba import njit

    @njit(cache=True, fastmath=False, nogil=True)
    def _prepare(x, group_size):
        M, K = x.shape
        nb, n_chunks, W = K // 32, K // 128, K // 8
        G = (K + group_size - 1) // group_size
        a = np.empty((M, K), np.int8)
        d = np.empty((M, nb), np.float32)
        act = np.empty((M, 128 * n_chunks), np.int8)
        DL = np.empty((M, W), np.float32)
        DG = np.zeros((M, G), np.float32)
        for m in range(M):
            dg = np.zeros(G, np.float64)
            for b in range(nb):
                amax = np.float32(0.0)
                for k in range(32 * b, 32 * b + 32):
                    amax = max(amax, abs(x[m, k]))
                db = amax / np.float32(127)
                inv = np.float32(1) / db if db > 0 else np.float32(0)
                if not np.isfinite(inv):
                    db, inv = np.float32(0), np.float32(0)
                A = 0
                for k in range(32 * b, 32 * b + 32):
                    v = x[m, k] * inv
                    t = np.float32(np.trunc(v))
                    if abs(v - t) >= np.float32(0.5):
                        t += np.float32(1.0) if v > 0 else np.float32(-1.0)
                    a[m, k] = np.int8(t)
                    A += np.int64(t)
                d[m, b] = db
                DL[m, 4 * b: 4 * b + 4] = db
                dg[(32 * b) // group_size] += np.float64(db) * A
            for g in range(G):
                DG[m, g] = np.float32(dg[g])
            for ch in range(n_chunks):
                for c in range(16):
                    for e in range(4):
                        k = 128 * ch + 8 * c + 2 * e
                        act[m, 128 * ch + 4 * c + e] = a[m, k]
                        act[m, 128 * ch + 64 + 4 * c + e] = a[m, k + 1]
        return a, d, act, DL, DG

    return _prepare


def arrange_act(a: np.ndarray, n_chunks: int) -> np.ndarray:
    """The codes of the first ``n_chunks`` 128-code chunks in the kernel's order (int8
    [M, 128 n_chunks]): per chunk the even ``k`` of each word, then the odd ``k``."""
    M = a.shape[0]
    head = a[:, : 128 * n_chunks].reshape(M, n_chunks, 16, 4, 2)           # [M, ch, c, e, odd]
    return np.ascontiguousarray(head.transpose(0, 1, 4, 2, 3)).reshape(M, 128 * n_chunks)


def _per_call(x, group_size):
    """``(a, d, act, DL, DG, n_chunks)``: activation codes and scales, the arranged codes, ``d``
    per word and ``D_g = sum_{b in g} d_b A_b`` (float64 sum, then float32)."""
    a, d = quantize_act_q8(x)                                               # [M, K], [M, nb]
    M, K = a.shape
    n_chunks = K // 128
    A = a.reshape(M, -1, ACT_BLOCK).sum(axis=2, dtype=np.int64)             # [M, nb]
    bpg = group_size // ACT_BLOCK
    dA = d.astype(np.float64) * A                                           # [M, nb]
    G = -(-d.shape[1] // bpg)
    pad = np.zeros((M, G * bpg), np.float64)
    pad[:, : dA.shape[1]] = dA
    DG = pad.reshape(M, G, bpg).sum(axis=2).astype(np.float32)               # [M, G]
    DL = np.ascontiguousarray(np.repeat(d, 4, axis=1))                      # [M, K/8]
    return a, d, arrange_act(a, n_chunks), DL, DG, n_chunks


@functools.lru_cache(maxsize=None)
def w4a8_gemm_vnni():
    """``(a, d, act, DL, DG, packed, scales, zeros, group_size, n_chunks) -> y`` f32 [M, N]."""
    from numba import njit, prange
    _row = w4a8_row()

    @njit(**NJIT_OPTIONS)
    def _gemm(a, d, act, DL, DG, packed, scales, zeros, group_size, n_chunks):
        M, K = a.shape
        N, W = packed.shape
        G = scales.shape[1]
        G16 = (G // 16) * 16
        mode = 2 if group_size == 32 else (1 if group_size == 64 else 0)
        cpg = max(1, group_size // 128)
        nb = K // 32
        pf, sf, zf = packed.reshape(N * W), scales.reshape(N * G), zeros.reshape(N * G)
        af, dlf, dgf = act.reshape(act.size), DL.reshape(DL.size), DG.reshape(M * G)
        y = np.empty((M, N), np.float32)
        for n in prange(N):
            for m in range(M):
                v = _row(pf, n * W, af, m * 128 * n_chunks, dlf, m * W, sf, zf, n * G,
                         dgf, m * G, n_chunks, G16, mode, cpg)
                for g in range(G16, G):
                    v -= scales[n, g] * np.float32(zeros[n, g]) * DG[m, g]
                for b in range(4 * n_chunks, nb):
                    P = np.int32(0)
                    for k in range(32 * b, 32 * b + 32):
                        P += np.int32((packed[n, k >> 3] >> (4 * (k & 7))) & 15) * np.int32(a[m, k])
                    v += (scales[n, (32 * b) // group_size] * d[m, b]) * np.float32(P)
                y[m, n] = v
        return y

    return _gemm


@functools.lru_cache(maxsize=None)
def word_dots_vnni():
    """``(act, packed, n_chunks) -> P`` int32 [M, N, 16 n_chunks]: the word dot products of the
    whole chunks by the kernel's own :func:`chunk_dots` (for the exactness test)."""
    from numba import njit, prange
    _dots = chunk_dots()

    @njit(**NJIT_OPTIONS)
    def _word_dots(act, packed, n_chunks):
        M = act.shape[0]
        N, W = packed.shape
        out = np.zeros((M, N, 16 * n_chunks), np.int32)
        of, pf, af = out.reshape(out.size), packed.reshape(N * W), act.reshape(act.size)
        for n in prange(N):
            for m in range(M):
                for ch in range(n_chunks):
                    _dots(pf, n * W + 16 * ch, af, (m * n_chunks + ch) * 128, of,
                          (m * N + n) * 16 * n_chunks + 16 * ch)
        return out

    return _word_dots


@functools.lru_cache(maxsize=None)
def w4a8_gemm_portable():
    """``(a, d, A, packed, scales, zeros, group_size) -> y``: block by block, scalar code."""
    from numba import njit, prange

    @njit(**NJIT_OPTIONS)
    def _gemm(a, d, A, packed, scales, zeros, group_size):
        M, K = a.shape
        N = packed.shape[0]
        y = np.empty((M, N), np.float32)
        for n in prange(N):
            for m in range(M):
                v = np.float32(0.0)
                for b in range(K // 32):
                    g = (32 * b) // group_size
                    P = np.int32(0)
                    for k in range(32 * b, 32 * b + 32):
                        P += np.int32((packed[n, k >> 3] >> (4 * (k & 7))) & 15) * np.int32(a[m, k])
                    v += (scales[n, g] * d[m, b]) * np.float32(P - zeros[n, g] * A[m, b])
                y[m, n] = v
        return y

    return _gemm


def supports(group_size: int) -> bool:
    """Whether the ``avx512_vnni`` kernel covers ``group_size``: 32, 64 or a multiple of 128
    (the lane scales of a chunk are one group, or 2 or 4 groups spread over the lanes)."""
    return group_size in (32, 64) or group_size % 128 == 0


def word_dots(x, packed) -> np.ndarray:
    """The ``avx512_vnni`` path's integer part: int32 [M, N, 16 (K // 128)] word dot products of
    ``quantize_act_q8(x)`` and the codes (whole chunks only)."""
    a, _ = quantize_act_q8(x)
    n_chunks = a.shape[1] // 128
    return word_dots_vnni()(arrange_act(a, n_chunks), np.ascontiguousarray(packed), n_chunks)


def w4a8_matmul(x, packed, scales, zeros, group_size: int, path: str) -> np.ndarray:
    """Numba W4A8 on ``path`` (``"avx512_vnni"`` or ``"portable"``); operands pre-checked by
    :func:`refquant.kernels.reference.check_w4a8_operands`."""
    packed = np.ascontiguousarray(packed)
    scales = np.ascontiguousarray(scales, np.float32)
    zeros = np.ascontiguousarray(zeros, np.int32)
    gs = int(group_size)
    if path == "portable":
        a, d = quantize_act_q8(x)
        A = a.reshape(a.shape[0], -1, ACT_BLOCK).sum(axis=2, dtype=np.int32)
        return w4a8_gemm_portable()(a, d, A, packed, scales, zeros, gs)
    a, d, act, DL, DG = prepare_act()(np.ascontiguousarray(x, np.float32), gs)
    n_chunks = a.shape[1] // 128
    return w4a8_gemm_vnni()(a, d, act, DL, DG, packed, scales, zeros, gs, n_chunks)
