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
Only ``s`` may come from memory, and from there as one 32-bit word broadcast to all lanes
(``{1to16}``), which costs no extra instruction.

Signed B through the unsigned operand
-------------------------------------
Both operands are signed, so ``B`` enters shifted: ``u = B + 128`` (the top bit flipped; exact in
uint8), and

.. math::  \\sum_k A_{ik} B_{kj} = \\sum_k A_{ik} (B_{kj} + 128) - 128 \\sum_k A_{ik} ,

the row sums of ``A`` computed once per call (O(MK) against the product's O(MKN)); ``C`` starts
at ``-128 sum_k A_ik`` and the products are added to it. Everything is summed in wrapping int32:
the partial sums can leave int32 for large ``K``, but the final value is the exact product modulo
2^32, and the ``K <= K_MAX`` check of the caller keeps the true value inside int32, so the result
is exact.

Packed form
-----------
GotoBLAS blocking [1]_: ``B`` is shifted and packed once per call into 32-column panels
(:func:`pack_panels`), ``Bq[j, 128 p + 4 c + e] = B[4p + e, 32 j + c] + 128``: four rows
interleaved byte by byte per quad ``p`` of ``k``, a panel contiguous in memory. Then, for each
block of ``KC`` quads (sequentially), the panels in parallel, each block of a panel (32 KiB, L1)
swept by every 8-row tile of ``A``. ``A`` is read in place: row ``i``'s bytes ``4p .. 4p+3`` are
the int32 word ``p`` of the row (``K`` padded to whole quads, rows to whole tiles, only where
needed). The micro-kernel (:func:`dpbusd_tile`) keeps an 8 x 32 int32 tile of ``C`` in sixteen
512-bit registers; per quad it loads the two ``Bq`` vectors and issues sixteen ``vpdpbusd``, each
``A`` word broadcast from memory into two of them (ten loads per sixteen multiply-adds, none of
them a separate instruction for the broadcasts).

The 256-bit twin (``avx_vnni``)
-------------------------------
The same kernel on 8-lane registers (:data:`TILES`: a 6 x 16 tile, 12 accumulators, since a CPU
without AVX-512 has 16 vector registers): ``vpdpbusd ymm`` is AVX-VNNI's VEX instruction (Alder
Lake and later Intel cores, Zen 5) and, on a CPU with AVX-512 VL and VNNI, its EVEX form; the
LLVM IR is the same and LLVM picks the encoding the target has. It does half the multiply-adds
per instruction of the 512-bit kernel, four times a 256-bit float32 FMA's 8, so on a CPU whose
FMAs are 256-bit wide it keeps the same ~4x bound against float32 BLAS.

Measured on a Zen 4 class EPYC (``benchmarks/int8_gemm.py``): the micro-kernel alone on L1 data
issues ~3.6e9 ``vpdpbusd`` per second per core, its peak of one per cycle; the packing of ``B``
(O(KN)) and the row sums are what separates a call from that peak at small ``M``.

References
----------
.. [1] K. Goto and R. van de Geijn, "Anatomy of High-Performance Matrix Multiplication",
   ACM TOMS 34(3), 2008.
"""

from __future__ import annotations

import functools

import numpy as np

from refquant.kernels import _llvm
from refquant.schemes._jit import stable

MR, NR = 8, 32          # micro-tile: rows of A, columns of B (two 16-lane int32 registers)
KC = 2048               # quads of k per cache block (at most 256 KiB of a packed B panel: L2)
NJIT_OPTIONS = dict(parallel=True, cache=True, fastmath=False, nogil=True)
INTRINSIC = "llvm.x86.avx512.vpdpbusd.512"
#: int32 lanes per register -> (MR, NR): 512-bit (``avx512_vnni``: 16 accumulators of the 32
#: registers) and 256-bit (``avx_vnni``: 12 of the 16 registers AVX2 has, the tile 6 x 16)
TILES = {16: (8, 32), 8: (6, 16)}
INTRINSICS = {16: INTRINSIC, 8: "llvm.x86.avx512.vpdpbusd.256"}
#: the int8 path of :mod:`refquant.kernels.cpu_features` -> int32 lanes per register
PATH_LANES = {"avx512_vnni": 16, "avx_vnni": 8}


def _dpbusd(builder, acc, u, s, lanes: int = 16):
    """``<lanes x i32>`` acc + vpdpbusd(u, s): the LLVM intrinsic (u unsigned bytes, s signed).
    The 256-bit one is the VEX instruction of AVX-VNNI on a CPU without AVX-512 VL, and its
    EVEX form on one with AVX-512 VL and VNNI (LLVM selects the encoding from the target)."""
    from llvmlite import ir
    vty = _llvm.vector("i32", lanes)
    name = INTRINSICS[lanes]
    fnty = ir.FunctionType(vty, [vty, vty, vty])
    fn = builder.module.globals.get(name) or ir.Function(builder.module, fnty, name=name)
    return builder.call(fn, [acc, u, s])


@functools.lru_cache(maxsize=None)
def dpbusd_tile(lanes: int = 16):
    """The intrinsic ``dpbusd_tile(Aw, a_off, lda, Bq, b_off, C, c_off, ldc, P)``:

    ``C[c_off + r*ldc + c] += sum_p sum_e A(a_off + r*lda + p)[e] * Bq[b_off + 4 NR p + 4c + e]``

    for ``r`` in 0..MR-1, ``c`` in 0..NR-1, ``p`` in 0..P-1 (``(MR, NR)`` = ``TILES[lanes]``:
    8 x 32 for 512-bit registers, 6 x 16 for 256-bit): ``Aw`` int32 [*] (words of four signed
    bytes of ``A``, row ``r`` at ``a_off + r*lda``), ``Bq`` uint8 as int8 [*] (``B + 128``,
    ``4 NR`` per quad ``p``), ``C`` int32 [*]. The ``2 MR`` accumulators live in allocas that LLVM
    promotes to registers; every load and store is declared unaligned (NumPy guarantees no
    64-byte alignment).
    """
    from numba import types
    from numba.core import cgutils
    from numba.core.extending import intrinsic

    @intrinsic
    def _dpbusd_tile(typingctx, Aw, a_off, lda, Bq, b_off, C, c_off, ldc, P):
        mr, nr = TILES[lanes]
        v16i32, v64i8 = _llvm.vector("i32", lanes), _llvm.vector("i8", 4 * lanes)

        sig = types.void(Aw, a_off, lda, Bq, b_off, C, c_off, ldc, P)

        def codegen(context, builder, signature, args):
            pa, pb, pc = _llvm.data_pointers(context, builder, signature, args, (0, 3, 5))
            a_off_, lda_, b_off_, c_off_, ldc_, P_ = _llvm.to_i64(
                builder, *(args[i] for i in (1, 2, 4, 6, 7, 8)))
            c_ptrs, accs = [], []
            for r in range(mr):
                row = builder.add(c_off_, builder.mul(ldc_, _llvm.i64_const(r)))
                for h in range(2):
                    p = builder.bitcast(builder.gep(pc, [builder.add(row, _llvm.i64_const(lanes * h))]),
                                        v16i32.as_pointer())
                    slot = cgutils.alloca_once(builder, v16i32)
                    builder.store(builder.load(p, align=4), slot)
                    c_ptrs.append(p)
                    accs.append(slot)
            a_rows = [builder.add(a_off_, builder.mul(lda_, _llvm.i64_const(r))) for r in range(mr)]
            with cgutils.for_range(builder, P_) as loop:
                p = loop.index
                bbase = builder.add(b_off_, builder.mul(p, _llvm.i64_const(4 * nr)))
                us = [builder.bitcast(_llvm.load_vector(builder, pb, builder.add(bbase, _llvm.i64_const(4 * lanes * h)),
                                                        v64i8, align=1), v16i32) for h in range(2)]
                for r in range(mr):
                    word = builder.load(builder.gep(pa, [builder.add(a_rows[r], p)]), align=4)
                    s = _llvm.broadcast(builder, word, v16i32)
                    for h in range(2):
                        slot = accs[2 * r + h]
                        builder.store(_dpbusd(builder, builder.load(slot), us[h], s, lanes), slot)
            for p, slot in zip(c_ptrs, accs):
                builder.store(builder.load(slot), p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return stable(_dpbusd_tile, lanes)


@functools.lru_cache(maxsize=None)
def pack_quad_rows(nr: int = NR, flip: bool = True):
    """The intrinsic ``pack_quad_rows(B, off, ldb, Bq, out_off)``:

    ``Bq[out_off + 4c + e] = B[off + e*ldb + c] + 128`` (the top bit flipped) for ``c`` in
    0..nr-1, ``e`` in 0..3; with ``flip=False`` the values unchanged (the signed operand of
    :mod:`refquant.kernels.cpu_int8_amx`).

    Four rows' ``nr`` int8 values shifted and interleaved byte by byte (one quad ``p`` of a packed
    panel) in a few shuffles instead of ``4 nr`` scalar copies.
    """
    from llvmlite import ir
    from numba import types
    from numba.core.extending import intrinsic

    @intrinsic
    def _pack_quad_rows(typingctx, B, off, ldb, Bq, out_off):
        v32i8, v128i8 = _llvm.vector("i8", nr), _llvm.vector("i8", 4 * nr)
        cat = _llvm.i32_constant(list(range(2 * nr)))
        # after concatenating rows (0, 1) and (2, 3), element 4c + e comes from row e, column c
        interleave = _llvm.i32_constant([(e // 2) * 2 * nr + (e % 2) * nr + c
                                         for c in range(nr) for e in range(4)])

        sig = types.void(B, off, ldb, Bq, out_off)

        def codegen(context, builder, signature, args):
            pb, pp = _llvm.data_pointers(context, builder, signature, args, (0, 3))
            o, ld, oo = _llvm.to_i64(builder, args[1], args[2], args[4])
            rows = [_llvm.load_vector(builder, pb, builder.add(o, builder.mul(ld, _llvm.i64_const(e))),
                                      v32i8, align=1) for e in range(4)]
            lo = builder.shuffle_vector(rows[0], rows[1], cat)                      # <64 x i8>
            hi = builder.shuffle_vector(rows[2], rows[3], cat)
            w = builder.shuffle_vector(lo, hi, interleave)                          # <128 x i8>
            if flip:
                w = builder.xor(w, ir.Constant(v128i8, [ir.Constant(ir.IntType(8), -128)] * (4 * nr)))
            builder.store(w, builder.bitcast(builder.gep(pp, [oo]), v128i8.as_pointer()), align=1)
            return context.get_dummy_value()

        return sig, codegen

    return stable(_pack_quad_rows, nr, flip)


@functools.lru_cache(maxsize=None)
def pack_panels(lanes: int = 16, flip: bool = True):
    """``pack_panels(b, P)``: int8 ``b[K, N]`` as ``Bq[N_panels, 4 NR P]``,
    ``Bq[j, 4 NR p + 4c + e] = B[4p + e, NR j + c] + 128`` (int8 bits of the uint8 value; ``NR``
    of ``TILES[lanes]``; with ``flip=False``, ``B`` itself), zero
    ``B`` past ``K`` and ``N`` (any value would do: the padded ``A`` columns are zero and the
    padded ``C`` columns are dropped). Parallel over quads of rows, so each thread reads whole
    rows of ``B`` (a column strip per panel would touch a page per row)."""
    from numba import njit, prange
    NR = TILES[lanes][1]
    _pack = pack_quad_rows(NR, flip)
    top = np.int8(-128) if flip else np.int8(0)         # xor'd into every value (a closure value)

    @njit(**NJIT_OPTIONS)
    def _pack_panels(b, P):
        K, N = b.shape
        n_panels = (N + NR - 1) // NR
        n_full = N // NR if K > 0 else 0                  # panels of NR real columns
        Bq = np.empty((n_panels, P * 4 * NR), np.int8)
        Bf = Bq.reshape(n_panels * P * 4 * NR)
        bf = b.reshape(K * N)
        for p in prange(P):
            jb_fast = n_full if 4 * p + 4 <= K else 0       # four real rows: the shuffles
            for jb in range(jb_fast):
                _pack(bf, 4 * p * N + jb * NR, N, Bf, (jb * P + p) * 4 * NR)
            for jb in range(jb_fast, n_panels):             # edges: B = 0 past K and N
                base = (jb * P + p) * 4 * NR
                for c in range(NR):
                    j = jb * NR + c
                    for e in range(4):
                        k = 4 * p + e
                        v = b[k, j] if (k < K and j < N) else np.int8(0)
                        Bf[base + 4 * c + e] = v ^ top
        return Bq

    return _pack_panels


@functools.lru_cache(maxsize=None)
def gemm_packed(lanes: int = 16):
    """``gemm_packed(Aw, Bq)``: int32 ``Aw[Mp, P]`` (rows of ``A`` as words of four signed
    bytes, ``Mp`` a multiple of ``MR``) times the packed ``Bq`` (:func:`pack_panels`) as the exact
    int32 ``C = A B``, ``[Mp, Np]`` (``Np`` = ``NR`` per panel): ``C`` starts at
    ``-128 sum_k A_ik`` and the tiles add ``sum_k A_ik (B_kj + 128)``."""
    from numba import njit, prange
    MR, NR = TILES[lanes]
    _tile = dpbusd_tile(lanes)

    @njit(**NJIT_OPTIONS)
    def _gemm_packed(Aw, Bq):
        Mp, P = Aw.shape
        n_panels = Bq.shape[0]
        Np = n_panels * NR
        C = np.empty((Mp, Np), np.int32)
        for i in prange(Mp):                                  # C = -128 sum_k A_ik (wrapping)
            s = np.int32(0)
            for p in range(P):
                w = Aw[i, p]
                for e in range(4):
                    s += np.int32(np.int8((w >> (8 * e)) & 0xFF))
            C[i, :] = np.int32(-128) * s
        Cf = C.reshape(Mp * Np)
        Af = Aw.reshape(Mp * P)
        n_blocks = (P + KC - 1) // KC
        kc = (P + n_blocks - 1) // n_blocks                   # KC or less, in equal blocks
        for jb in prange(n_panels):                           # a thread's C columns stay in L2
            Bj = Bq[jb]
            for p0 in range(0, P, kc):
                pn = min(kc, P - p0)
                for i0 in range(0, Mp, MR):
                    _tile(Af, i0 * P + p0, P, Bj, 4 * NR * p0, Cf, i0 * Np + jb * NR, Np, pn)
        return C

    return _gemm_packed


def int8_matmul(a: np.ndarray, b: np.ndarray, lanes: int = 16) -> np.ndarray:
    """``C = A B`` (int8 x int8 -> int32) with ``vpdpbusd`` on ``lanes``-lane registers (16:
    ``avx512_vnni``, 8: ``avx_vnni``), equal to the reference; operands pre-checked by
    :func:`refquant.kernels.reference.check_int8_operands`. Any ``M`` (rows are padded to whole
    tiles)."""
    mr, nr = TILES[lanes]
    M, K = a.shape
    N = b.shape[1]
    P = (K + 3) // 4
    Mp = -(-M // mr) * mr
    if Mp != M or 4 * P != K or not a.flags.c_contiguous:
        a_pad = np.zeros((Mp, 4 * P), np.int8)                                 # zero rows and k
        a_pad[:M, :K] = a
        a = a_pad
    Bq = pack_panels(lanes)(np.ascontiguousarray(b), P)                        # [N/NR, 4 NR P]
    C = gemm_packed(lanes)(a.view(np.int32), Bq)                               # [Mp, Np]
    return C[:M] if C.shape[1] == N else np.ascontiguousarray(C[:M, :N])
