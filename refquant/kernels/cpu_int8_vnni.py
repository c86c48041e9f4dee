"""Numba int8 GEMM ``C = A B`` with AVX-512 VNNI (``vpdpbusd``), equal to
:func:`refquant.kernels.reference.int8_matmul` bit for bit.

Selected by :func:`refquant.kernels.cpu_features.int8_path` only on a CPU whose features (as
llvmlite reports them) include ``avx512vnni`` and ``avx512bw``; the ``pmaddwd`` kernel of
:mod:`refquant.kernels.cpu_int8` serves every other CPU.

The instruction
---------------
``vpdpbusd acc, u, s`` treats each 32-bit lane of ``u`` as four *unsigned* bytes and of ``s`` as
four *signed* bytes and adds their four products to the lane of ``acc`` (wrapping int32, no
saturation):

.. math::  \\mathrm{acc}_c \\mathrel{+}= \\sum_{e=0}^{3} u_{4c+e}\\, s_{4c+e}

One instruction does 64 multiply-adds on a 512-bit register: four times the 16 of a float32 FMA
and twice the 32 of ``pmaddwd``, which bounds this kernel at ~4x float32 BLAS on the same core.

Signed A through the unsigned operand
-------------------------------------
``A`` is signed, so it enters shifted: ``u = A + 128`` (flip the top bit; exact in uint8), and

.. math::  \\sum_k A_{ik} B_{kj} = \\sum_k (A_{ik} + 128) B_{kj} - 128 \\sum_k B_{kj} ,

the column sums of ``B`` computed once per call (O(KN) against the product's O(MKN)). Both terms
are summed in wrapping int32; the intermediate ``sum (A + 128) B`` can exceed int32 for large
``K`` but the difference is the exact product modulo 2^32, and the ``K <= K_MAX`` check of the
caller keeps the true value inside int32, so the result is exact.

Packed form
-----------
GotoBLAS blocking as :mod:`refquant.kernels.cpu_int8`: for each block of ``KC`` quads of ``k``
(sequentially), the 32-column panels of ``B`` in parallel, each packed into L1 as
``Bp[p, 4c + e] = B[4p + e, j0 + c]`` (four rows interleaved byte by byte,
:func:`pack_quad_rows`) and swept by every 8-row tile of ``A``; ``A`` is read as int32 words of
four consecutive ``k``, the eight rows of a tile side by side per quad (:func:`shift_rows`). The micro-kernel (:func:`dpbusd_tile`) keeps an 8 x 32 int32 tile of ``C``
in sixteen 512-bit registers; per quad it loads two ``Bp`` vectors, broadcasts each of the eight
``A`` words and issues sixteen ``vpdpbusd`` (ten loads per sixteen multiply-add instructions).
"""

from __future__ import annotations

import functools

import numpy as np

from refquant.kernels import _llvm

MR, NR = 8, 32          # micro-tile: rows of A, columns of B (two 16-lane int32 registers)
KC = 128                # quads of k per cache block (16 KiB of a packed B panel)
NJIT_OPTIONS = dict(parallel=True, cache=True, fastmath=False, nogil=True)
INTRINSIC = "llvm.x86.avx512.vpdpbusd.512"


def _dpbusd(builder, acc, u, s):
    """``<16 x i32>`` acc + vpdpbusd(u, s): the LLVM intrinsic (u unsigned bytes, s signed)."""
    from llvmlite import ir
    v16i32 = _llvm.vector("i32", 16)
    fnty = ir.FunctionType(v16i32, [v16i32, v16i32, v16i32])
    fn = builder.module.globals.get(INTRINSIC) or ir.Function(builder.module, fnty, name=INTRINSIC)
    return builder.call(fn, [acc, u, s])


@functools.lru_cache(maxsize=None)
def dpbusd_tile():
    """The intrinsic ``dpbusd_tile(Aw, a_off, Bp, b_off, C, c_off, ldc, P)``:

    ``C[c_off + r*ldc + c] += sum_p sum_e Au(a_off + 8p + r)[e] * Bp[b_off + 128p + 4c + e]``

    for ``r`` in 0..7, ``c`` in 0..31, ``p`` in 0..P-1: ``Aw`` int32 [*] (words of four uint8
    ``A + 128`` values, the tile's eight rows side by side per quad), ``Bp`` int8 [*] (128 per
    quad ``p``), ``C`` int32 [*]. The sixteen
    accumulators live in allocas that LLVM promotes to registers; every load and store is
    declared unaligned (NumPy guarantees no 64-byte alignment).
    """
    from numba import types
    from numba.core import cgutils
    from numba.core.extending import intrinsic

    v16i32, v64i8 = _llvm.vector("i32", 16), _llvm.vector("i8", 64)

    @intrinsic
    def _dpbusd_tile(typingctx, Aw, a_off, Bp, b_off, C, c_off, ldc, P):
        sig = types.void(Aw, a_off, Bp, b_off, C, c_off, ldc, P)

        def codegen(context, builder, signature, args):
            pa, pb, pc = _llvm.data_pointers(context, builder, signature, args, (0, 2, 4))
            a_off_, b_off_, c_off_, ldc_, P_ = _llvm.to_i64(builder, *(args[i] for i in (1, 3, 5, 6, 7)))
            c_ptrs, accs = [], []
            for r in range(MR):
                row = builder.add(c_off_, builder.mul(ldc_, _llvm.i64_const(r)))
                for h in range(2):
                    p = builder.bitcast(builder.gep(pc, [builder.add(row, _llvm.i64_const(16 * h))]),
                                        v16i32.as_pointer())
                    slot = cgutils.alloca_once(builder, v16i32)
                    builder.store(builder.load(p, align=4), slot)
                    c_ptrs.append(p)
                    accs.append(slot)
            with cgutils.for_range(builder, P_) as loop:
                p = loop.index
                bbase = builder.add(b_off_, builder.mul(p, _llvm.i64_const(128)))
                bs = [builder.bitcast(_llvm.load_vector(builder, pb, builder.add(bbase, _llvm.i64_const(64 * h)),
                                                        v64i8, align=1), v16i32) for h in range(2)]
                abase = builder.add(a_off_, builder.mul(p, _llvm.i64_const(MR)))
                for r in range(MR):
                    word = builder.load(builder.gep(pa, [builder.add(abase, _llvm.i64_const(r))]), align=4)
                    u = _llvm.broadcast(builder, word, v16i32)
                    for h in range(2):
                        slot = accs[2 * r + h]
                        builder.store(_dpbusd(builder, builder.load(slot), u, bs[h]), slot)
            for p, slot in zip(c_ptrs, accs):
                builder.store(builder.load(slot), p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return _dpbusd_tile


@functools.lru_cache(maxsize=None)
def pack_quad_rows():
    """The intrinsic ``pack_quad_rows(B, off, ldb, Bp, out_off)``:

    ``Bp[out_off + 4c + e] = B[off + e*ldb + c]`` for ``c`` in 0..31, ``e`` in 0..3.

    Four rows' 32 int8 values interleaved byte by byte (one quad ``p`` of a packed panel) in a
    few shuffles instead of 128 scalar copies.
    """
    from numba import types
    from numba.core.extending import intrinsic

    v32i8, v64i8, v128i8 = _llvm.vector("i8", 32), _llvm.vector("i8", 64), _llvm.vector("i8", 128)
    cat = _llvm.i32_constant(list(range(64)))
    # after concatenating rows (0, 1) and (2, 3), element 4c + e comes from row e, column c
    interleave = _llvm.i32_constant([(e // 2) * 64 + (e % 2) * 32 + c for c in range(32) for e in range(4)])

    @intrinsic
    def _pack_quad_rows(typingctx, B, off, ldb, Bp, out_off):
        sig = types.void(B, off, ldb, Bp, out_off)

        def codegen(context, builder, signature, args):
            pb, pp = _llvm.data_pointers(context, builder, signature, args, (0, 3))
            o, ld, oo = _llvm.to_i64(builder, args[1], args[2], args[4])
            rows = [_llvm.load_vector(builder, pb, builder.add(o, builder.mul(ld, _llvm.i64_const(e))),
                                      v32i8, align=1) for e in range(4)]
            lo = builder.shuffle_vector(rows[0], rows[1], cat)                      # <64 x i8>
            hi = builder.shuffle_vector(rows[2], rows[3], cat)
            w = builder.shuffle_vector(lo, hi, interleave)                          # <128 x i8>
            builder.store(w, builder.bitcast(builder.gep(pp, [oo]), v128i8.as_pointer()), align=1)
            return context.get_dummy_value()

        return sig, codegen

    del v64i8
    return _pack_quad_rows


@functools.lru_cache(maxsize=None)
def gemm_packed():
    """``gemm_packed(Aw, b, Mp, P)``: ``Aw`` int32 ``[Mp // 8, P, 8]`` (words of four uint8
    ``A + 128``, :func:`shift_rows`) times int8 ``b[K, N]`` as the int32 ``sum_k (A + 128) B``, ``[Mp, Np]`` (``Np`` = ``N``
    rounded up to whole 32-column panels)."""
    from numba import njit, prange
    _tile, _pack = dpbusd_tile(), pack_quad_rows()

    @njit(**NJIT_OPTIONS)
    def _gemm_packed(Aw, b, Mp, P):
        K, N = b.shape
        n_panels = (N + NR - 1) // NR
        Np = n_panels * NR
        C = np.zeros((Mp, Np), np.int32)
        Cf = C.reshape(Mp * Np)
        Af = Aw.reshape(Mp * P)                                   # tile t, quad p, row r at (t P + p) 8 + r
        bf = b.reshape(K * N)
        kc = (P + (P + KC - 1) // KC - 1) // ((P + KC - 1) // KC)   # KC or less, in equal blocks
        for p0 in range(0, P, kc):
            pn = min(kc, P - p0)
            for jb in prange(n_panels):
                j0 = jb * NR
                jn = min(NR, N - j0)
                Bp = np.empty(pn * 4 * NR, np.int8)               # Bp[p, 4c + e] = B[4(p0+p)+e, j0+c]
                p_full = 0
                if jn == NR:
                    p_full = max(0, min(pn, K // 4 - p0))
                    for p in range(p_full):
                        _pack(bf, 4 * (p0 + p) * N + j0, N, Bp, p * 4 * NR)
                for p in range(p_full, pn):                       # edges: zero past K and N
                    base = p * 4 * NR
                    for c in range(NR):
                        for e in range(4):
                            k = 4 * (p0 + p) + e
                            Bp[base + 4 * c + e] = b[k, j0 + c] if (k < K and c < jn) else 0
                for i0 in range(0, Mp, MR):
                    _tile(Af, (i0 * P + p0 * MR), Bp, 0, Cf, i0 * Np + j0, Np, pn)
        return C

    return _gemm_packed


def shift_rows(a: np.ndarray, Mp: int, P: int) -> np.ndarray:
    """``a + 128`` (the top bit flipped) as uint8 ``[Mp // 8, P, 32]``,
    ``out[t, p, 4r + e] = a[8t + r, 4p + e] + 128``, zero padded: per 8-row tile and quad ``p``
    the eight rows' words side by side, so the micro-kernel reads them from one pointer (one
    NumPy pad and one transposing copy)."""
    M, K = a.shape
    u = np.zeros((Mp, 4 * P), np.uint8)
    u[:M, :K] = a.view(np.uint8) ^ np.uint8(0x80)
    return np.ascontiguousarray(u.reshape(Mp // MR, MR, P, 4).transpose(0, 2, 1, 3)).reshape(Mp // MR, P, 4 * MR)


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``C = A B`` (int8 x int8 -> int32) with ``vpdpbusd``, equal to the reference; operands
    pre-checked by :func:`refquant.kernels.reference.check_int8_operands`. Any ``M`` (rows are
    padded to whole 8-row tiles)."""
    M, K = a.shape
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    P = (K + 3) // 4
    Mp = -(-M // MR) * MR
    Au = shift_rows(a, Mp, P)                                              # [Mp/8, P, 32] uint8
    C = gemm_packed()(Au.view(np.int32), b, Mp, P)[:M, : b.shape[1]]       # sum (A+128) B
    col = b.sum(axis=0, dtype=np.int32)                                    # [N] sum_k B_kj
    with np.errstate(over="ignore"):                                       # wrapping, see above
        C = C - np.int32(128) * col[None, :]
    return np.ascontiguousarray(C, dtype=np.int32)
