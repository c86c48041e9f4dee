"""Numba int8 GEMM ``C = A B`` (int8 x int8 -> int32), equal to
:func:`refquant.kernels.reference.int8_matmul` bit for bit.

Nothing is compiled at import: each kernel is built by its own cached builder on first call
(``@njit(parallel=True, cache=True)``; Numba caches the machine code on disk next to this file).

Packed form (``M >= 8``)
------------------------
GotoBLAS-style blocking [1]_ with an integer micro-kernel: for each block of ``KC`` pairs of ``k``
(sequentially), the 16-column panels of ``B`` in parallel, each packed into L1 (two int8 rows
sign-extended and interleaved per pair, :func:`pack_pair_rows`) and swept by every 4-row tile of
``A``; the block's rows of ``B`` touch few pages and its ``A`` words stay in L2. ``A`` is
widened once to int16 and read as int32 words, each holding the pair ``(A[i, 2p], A[i, 2p+1])``;
``B`` is packed, one 16-column panel at a time, into ``Bp[p, 2c + e] = B[2p + e, j0 + c]``.
The micro-kernel keeps a 4 x 16 int32 tile of ``C`` in eight 8-lane registers and, per pair
``p``, broadcasts the four ``A`` words and forms

.. math::  C_{i,j_0+c} \\mathrel{+}= A_{i,2p} B_{2p,j_0+c} + A_{i,2p+1} B_{2p+1,j_0+c}

with one widening multiply-add of 16 int16 lanes into 8 int32 lanes (x86 ``vpmaddwd``). It is
written directly in LLVM vector IR (:func:`madd_tile`) because Numba's scalar promotion
(int32 * int32 -> int64) keeps LLVM's vectorizers from finding this instruction in plain loops.
The IR is target-independent: on a CPU without ``pmaddwd`` LLVM lowers it to other vector code.
The pair words are reinterpreted through memory (an i32 load bitcast to two i16 lanes, which
LLVM defines in memory order), so the kernel makes no byte-order assumption. Pair sums are at
most ``2 * 2^14`` and every partial sum is bounded by the K check, so int32 wrap-around never
happens.

Row form (``M < 8``, e.g. a single token)
-----------------------------------------
``C[i, :] += A[i, k] B[k, :]``, which streams ``B`` once and needs no packing.

References
----------
.. [1] K. Goto and R. van de Geijn, "Anatomy of High-Performance Matrix Multiplication",
   ACM TOMS 34(3), 2008.
"""

from __future__ import annotations

import functools

import numpy as np

from refquant.kernels import _llvm, cpu_features, cpu_int8_amx, cpu_int8_vnni
from refquant.schemes._jit import stable

MR, NR = 4, 16          # micro-tile: rows of A, columns of B
KC = 256                # pairs of k per cache block (16 KiB of a packed B panel)
SMALL_M = 8             # below this, the row (axpy) form
NJIT_OPTIONS = dict(parallel=True, cache=True, fastmath=False, nogil=True)


def _madd(builder, u, v):
    """<16 x i16> u, v -> <8 x i32>: lane c = u[2c] v[2c] + u[2c+1] v[2c+1] (pmaddwd)."""
    v16i32 = _llvm.vector("i32", 16)
    m = builder.mul(builder.sext(u, v16i32), builder.sext(v, v16i32))
    even = _llvm.i32_constant([2 * c for c in range(8)])
    odd = _llvm.i32_constant([2 * c + 1 for c in range(8)])
    return builder.add(builder.shuffle_vector(m, m, even), builder.shuffle_vector(m, m, odd))


@functools.lru_cache(maxsize=None)
def madd_tile():
    """The intrinsic ``madd_tile(Aw, a_off, lda, Bp, b_off, C, c_off, ldc, P)``:

    ``C[c_off + r*ldc + c] += sum_p madd(A word (a_off + r*lda + p), Bp[b_off + 32p : +32])``

    for ``r`` in 0..3, ``c`` in 0..15, ``p`` in 0..P-1; ``Aw`` int32 [*] (pairs of int16), ``Bp``
    int16 [*] (32 per pair p), ``C`` int32 [*]. The eight accumulators (``C[r, 0:8]`` and
    ``C[r, 8:16]``) live in allocas that LLVM promotes to registers.
    """
    from numba import types
    from numba.core import cgutils
    from numba.core.extending import intrinsic

    @intrinsic
    def _madd_tile(typingctx, Aw, a_off, lda, Bp, b_off, C, c_off, ldc, P):
        v16i16, v8i32 = _llvm.vector("i16", 16), _llvm.vector("i32", 8)
        v8p = v8i32.as_pointer()

        sig = types.void(Aw, a_off, lda, Bp, b_off, C, c_off, ldc, P)

        def codegen(context, builder, signature, args):
            pa, pb, pc = _llvm.data_pointers(context, builder, signature, args, (0, 3, 5))
            a_off_, lda_, b_off_, c_off_, ldc_, P_ = _llvm.to_i64(builder, *(args[i] for i in (1, 2, 4, 6, 7, 8)))
            c_ptrs, accs = [], []
            for r in range(MR):
                row = builder.add(c_off_, builder.mul(ldc_, _llvm.i64_const(r)))
                for h in range(2):
                    p = builder.bitcast(builder.gep(pc, [builder.add(row, _llvm.i64_const(8 * h))]), v8p)
                    slot = cgutils.alloca_once(builder, v8i32)
                    builder.store(builder.load(p, align=4), slot)
                    c_ptrs.append(p)
                    accs.append(slot)
            a_rows = [builder.add(a_off_, builder.mul(lda_, _llvm.i64_const(r))) for r in range(MR)]
            with cgutils.for_range(builder, P_) as loop:
                p = loop.index
                bbase = builder.add(b_off_, builder.mul(p, _llvm.i64_const(32)))
                b0 = _llvm.load_vector(builder, pb, bbase, v16i16, align=2)
                b1 = _llvm.load_vector(builder, pb, builder.add(bbase, _llvm.i64_const(16)), v16i16, align=2)
                for r in range(MR):
                    word = builder.load(builder.gep(pa, [builder.add(a_rows[r], p)]), align=4)
                    bcast = builder.bitcast(_llvm.broadcast(builder, word, v8i32), v16i16)
                    for h, bv in enumerate((b0, b1)):
                        slot = accs[2 * r + h]
                        builder.store(builder.add(builder.load(slot), _madd(builder, bcast, bv)), slot)
            for p, slot in zip(c_ptrs, accs):
                builder.store(builder.load(slot), p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return stable(_madd_tile)


@functools.lru_cache(maxsize=None)
def pack_pair_rows():
    """The intrinsic ``pack_pair_rows(B, off0, off1, Bp, out_off)``:

    ``Bp[out_off + 2c + e] = int16(B[(off0, off1)[e] + c])`` for ``c`` in 0..15, ``e`` in 0..1.

    Two rows' 16 int8 values, sign-extended to int16 and interleaved: one pair ``p`` of a packed
    B panel, in a few vector instructions instead of 32 scalar copies.
    """
    from numba import types
    from numba.core.extending import intrinsic

    @intrinsic
    def _pack_pair_rows(typingctx, B, off0, off1, Bp, out_off):
        v16i8, v16i16, v32i16 = _llvm.vector("i8", 16), _llvm.vector("i16", 16), _llvm.vector("i16", 32)
        interleave = _llvm.i32_constant([c // 2 + 16 * (c % 2) for c in range(32)])

        sig = types.void(B, off0, off1, Bp, out_off)

        def codegen(context, builder, signature, args):
            pb, pp = _llvm.data_pointers(context, builder, signature, args, (0, 3))
            o0, o1, oo = _llvm.to_i64(builder, args[1], args[2], args[4])
            r0 = _llvm.load_vector(builder, pb, o0, v16i8, align=1)
            r1 = _llvm.load_vector(builder, pb, o1, v16i8, align=1)
            w = builder.shuffle_vector(builder.sext(r0, v16i16), builder.sext(r1, v16i16), interleave)
            builder.store(w, builder.bitcast(builder.gep(pp, [oo]), v32i16.as_pointer()), align=2)
            return context.get_dummy_value()

        return sig, codegen

    return stable(_pack_pair_rows)


@functools.lru_cache(maxsize=None)
def widen_pairs():
    """``widen_pairs(a, Mp, Kp)``: int8 ``a[M, K]`` as int16 ``[Mp, Kp]``, zero padded (the
    caller reads each row as int32 words, one pair of ``k`` per word)."""
    from numba import njit, prange

    @njit(**NJIT_OPTIONS)
    def _widen_pairs(a, Mp, Kp):
        M, K = a.shape
        out = np.zeros((Mp, Kp), np.int16)
        for i in prange(M):
            ai = a[i]
            oi = out[i]
            for k in range(K):
                oi[k] = ai[k]
        return out

    return _widen_pairs


@functools.lru_cache(maxsize=None)
def gemm_packed():
    """``gemm_packed(Aw, b, Mp, P)``: ``Aw`` int32 ``[Mp, P]`` (pairs of int16 ``A`` values) times
    int8 ``b[K, N]`` as int32 ``C[Mp, Np]`` (``Np`` = ``N`` rounded up to whole panels)."""
    from numba import njit, prange
    _madd_tile, _pack_pair_rows = madd_tile(), pack_pair_rows()

    @njit(**NJIT_OPTIONS)
    def _gemm_packed(Aw, b, Mp, P):
        K, N = b.shape
        n_panels = (N + NR - 1) // NR
        Np = n_panels * NR
        C = np.zeros((Mp, Np), np.int32)
        Cf = C.reshape(Mp * Np)
        Af = Aw.reshape(Mp * P)
        bf = b.reshape(K * N)
        # GotoBLAS order: for each block of KC pairs (its rows of B touch few pages, its A block
        # stays in L2), the 16-column panels in parallel, each packed into L1 and swept by all
        # row tiles of C
        kc = (P + (P + KC - 1) // KC - 1) // ((P + KC - 1) // KC)   # KC or less, in equal blocks
        for p0 in range(0, P, kc):
            pn = min(kc, P - p0)
            for jb in prange(n_panels):
                j0 = jb * NR
                jn = min(NR, N - j0)
                # Bp[p, 2c + e] = B[2(p0 + p) + e, j0 + c] (zero past K and N)
                Bp = np.empty(pn * 2 * NR, np.int16)
                p_full = 0
                if jn == NR:
                    p_full = max(0, min(pn, K // 2 - p0))
                    for p in range(p_full):
                        k = 2 * (p0 + p)
                        _pack_pair_rows(bf, k * N + j0, (k + 1) * N + j0, Bp, p * 2 * NR)
                for p in range(p_full, pn):
                    base = p * 2 * NR
                    for c in range(NR):
                        for e in range(2):
                            k = 2 * (p0 + p) + e
                            Bp[base + 2 * c + e] = b[k, j0 + c] if (k < K and c < jn) else 0
                for i0 in range(0, Mp, MR):
                    _madd_tile(Af, i0 * P + p0, P, Bp, 0, Cf, i0 * Np + j0, Np, pn)
        return C

    return _gemm_packed


ROWS_SERIAL_MACS = 1 << 22      # row form below this many multiply-adds: on the calling thread


@functools.lru_cache(maxsize=None)
def gemm_rows(parallel: bool = True):
    """``gemm_rows(a, b)``: ``C[i, :] += A[i, k] B[k, :]`` in int32, columns in blocks of 2048
    that stay in L1, one (row, block) pair per parallel task; with ``parallel=False`` the same
    tasks on the calling thread (for products below ``ROWS_SERIAL_MACS``: a decoded token's
    layers and attention heads, where waking the thread pool costs more than the product:
    ~5 us per call with GNU OpenMP's default wait policy, ~130 us with OMP_WAIT_POLICY=passive,
    measured on a Zen 4 class EPYC, against 2-50 us of work)."""
    from numba import njit, prange
    JB = 2048

    @njit(inline="always", cache=True, nogil=True)
    def _row_block(a, b, C, t, n_jb):                       # task t: row i, columns of block jb
        K, N = b.shape
        i, jb = t // n_jb, t % n_jb
        j0 = jb * JB
        j1 = min(N, j0 + JB)
        acc = np.zeros(j1 - j0, np.int32)
        for k in range(K):
            aik = np.int32(a[i, k])
            bk = b[k, j0:j1]
            for j in range(j1 - j0):
                acc[j] = np.int32(acc[j] + np.int32(aik * np.int32(bk[j])))
        for j in range(j0, j1):
            C[i, j] = acc[j - j0]

    stable(_row_block, parallel)                # one per build: its identity names the build
    tasks = prange if parallel else range       # a closure value: Numba's cache keeps both apart

    @njit(**dict(NJIT_OPTIONS, parallel=parallel))
    def _gemm_rows(a, b):
        M, N = a.shape[0], b.shape[1]
        C = np.zeros((M, N), np.int32)
        n_jb = (N + JB - 1) // JB
        for t in tasks(M * n_jb):
            _row_block(a, b, C, t, n_jb)
        return C

    return _gemm_rows


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Numba ``C = A B`` (int8 x int8 -> int32), equal to the reference; operands pre-checked
    by :func:`refquant.kernels.reference.check_int8_operands`. ``M < 8`` takes the row form;
    otherwise the path of :func:`refquant.kernels.cpu_features.int8_path` (AMX tiles in
    :mod:`refquant.kernels.cpu_int8_amx` where the CPU has AMX and Linux grants its state;
    ``vpdpbusd`` in
    :mod:`refquant.kernels.cpu_int8_vnni`, 512-bit where the CPU has AVX-512 VNNI and 256-bit
    where it has AVX-VNNI, else the packed ``pmaddwd`` form below)."""
    M, K = a.shape
    if M < SMALL_M:
        serial = M * K * b.shape[1] < ROWS_SERIAL_MACS
        return gemm_rows(parallel=not serial)(np.ascontiguousarray(a), np.ascontiguousarray(b))
    path = cpu_features.int8_path()[0]
    if path == "amx_int8":
        return cpu_int8_amx.int8_matmul(a, b)
    if path in cpu_int8_vnni.PATH_LANES:
        return cpu_int8_vnni.int8_matmul(a, b, lanes=cpu_int8_vnni.PATH_LANES[path])
    return int8_matmul_pmaddwd(a, b)


def int8_matmul_pmaddwd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The packed ``pmaddwd`` form for any ``M`` (what :func:`int8_matmul` runs for ``M >= 8``
    on a CPU without AVX-512 VNNI)."""
    M, K = a.shape
    P = (K + 1) // 2
    Mp = -(-M // MR) * MR
    A16 = widen_pairs()(np.ascontiguousarray(a), Mp, 2 * P)                # [Mp, 2P] int16
    Aw = A16.view(np.int32)                                                # [Mp, P] pairs
    C = gemm_packed()(Aw, np.ascontiguousarray(b), Mp, P)                  # [Mp, Np]
    return np.ascontiguousarray(C[:M, : b.shape[1]])
