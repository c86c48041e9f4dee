"""Numba CPU kernels with the signatures and results of :mod:`refquant.kernels.reference`.

Nothing here is compiled at import: :func:`kernels` builds the ``@njit(parallel=True,
cache=True)`` functions on first call (Numba caches them on disk next to this file).

int8 GEMM (``int8_matmul``)
---------------------------
GotoBLAS-style blocking [1]_ with an integer micro-kernel: for each block of ``KC`` pairs of ``k``
(sequentially), the 16-column panels of ``B`` in parallel, each packed into L1 (two int8 rows
sign-extended and interleaved per pair, :func:`_pack_pair_rows`) and swept by every 4-row tile of
``A``; the block's rows of ``B`` touch few pages and its ``A`` words stay in L2. ``A`` is widened once to int16 and
read as int32 words, each holding the pair ``(A[i, 2p], A[i, 2p+1])``; ``B`` is packed, one
16-column panel at a time, into ``Bp[p, 2c + e] = B[2p + e, j0 + c]``. The micro-kernel keeps a
4 x 16 int32 tile of ``C`` in eight 8-lane registers and, per pair ``p``, broadcasts the four
``A`` words and forms

.. math::  C_{i,j_0+c} \\mathrel{+}= A_{i,2p} B_{2p,j_0+c} + A_{i,2p+1} B_{2p+1,j_0+c}

with one widening multiply-add of 16 int16 lanes into 8 int32 lanes (x86 ``vpmaddwd``). It is
written directly in LLVM vector IR (:func:`_madd_tile`) because Numba's scalar promotion
(int32 * int32 -> int64) keeps LLVM's vectorizers from finding this instruction in plain loops.
The IR is target-independent: on a CPU without ``pmaddwd`` LLVM lowers it to other vector code.
Pair sums are at most ``2 * 2^14`` and every partial sum is bounded by the K check, so int32
wrap-around never happens.

Small ``M`` (``M < 8``, e.g. a single token) uses the row form ``C[i, :] += A[i, k] B[k, :]``,
which streams ``B`` once and needs no packing.

W4 GEMV/GEMM (``w4_matmul``)
----------------------------
Per output ``n`` and group ``g`` the zero point is taken out of the inner loop,

.. math::  \\sum_{k \\in g} x_k\\, s_{ng} (q_{nk} - z_{ng})
           = s_{ng} \\Big(\\sum_{k \\in g} x_k q_{nk} - z_{ng} \\sum_{k \\in g} x_k\\Big),

so a row is ``sum_g s_ng (sum_{k in g} x_k q_nk) - sum_g s_ng z_ng (sum_{k in g} x_k)``, the
second sum from per-group sums of ``x`` computed once. The first is LLVM vector IR
(:func:`_w4_row`): each int32 word is broadcast to 8 lanes, lane ``i`` shifted right by ``4i``
and masked, converted to float and multiply-added with ``x[8w : 8w + 8]``; a group's sum is
scaled into one row accumulator and the row ends with one horizontal sum. The weight is never
expanded.

References
----------
.. [1] K. Goto and R. van de Geijn, "Anatomy of High-Performance Matrix Multiplication",
   ACM TOMS 34(3), 2008.
"""

from __future__ import annotations

import functools

import numpy as np

MR, NR = 4, 16          # micro-tile: rows of A, columns of B
KC = 256                # pairs of k per cache block (16 KiB of a packed B panel)
SMALL_M = 8             # below this, the row (axpy) form


@functools.lru_cache(maxsize=None)
def kernels():
    """Build (once) and return the compiled kernels as a dict name -> dispatcher."""
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core.extending import intrinsic

    i16, i32 = ir.IntType(16), ir.IntType(32)
    v16i16, v16i32, v8i32 = ir.VectorType(i16, 16), ir.VectorType(i32, 16), ir.VectorType(i32, 8)
    even = ir.Constant(v8i32, [2 * c for c in range(8)])
    odd = ir.Constant(v8i32, [2 * c + 1 for c in range(8)])
    splat0 = ir.Constant(v8i32, [0] * 8)

    def _madd(builder, u, v):
        """<16 x i16> u, v -> <8 x i32>: lane c = u[2c] v[2c] + u[2c+1] v[2c+1] (pmaddwd)."""
        m = builder.mul(builder.sext(u, v16i32), builder.sext(v, v16i32))
        return builder.add(builder.shuffle_vector(m, m, even), builder.shuffle_vector(m, m, odd))

    @intrinsic
    def _madd_tile(typingctx, Aw, a_off, lda, Bp, b_off, C, c_off, ldc, P):
        """C[c_off + r*ldc + c] += sum_p madd(A word (a_off + r*lda + p), Bp[b_off + 32p:...]).

        ``Aw`` int32 [*] (pairs of int16), ``Bp`` int16 [*] (32 per pair p), ``C`` int32 [*];
        r in 0..3, c in 0..15, p in 0..P-1.
        """
        sig = types.void(Aw, a_off, lda, Bp, b_off, C, c_off, ldc, P)

        def codegen(context, builder, signature, args):
            from numba.core import cgutils
            aw, a_off_, lda_, bp, b_off_, c, c_off_, ldc_, P_ = args
            pa = context.make_array(signature.args[0])(context, builder, aw).data
            pb = context.make_array(signature.args[3])(context, builder, bp).data
            pc = context.make_array(signature.args[5])(context, builder, c).data
            i64 = ir.IntType(64)
            a_off_, lda_, b_off_, c_off_, ldc_, P_ = (
                builder.sext(v, i64) if v.type != i64 else v
                for v in (a_off_, lda_, b_off_, c_off_, ldc_, P_))
            v8p = v8i32.as_pointer()
            v16p = v16i16.as_pointer()
            # accumulators: C[r, 0:8] and C[r, 8:16] for r in 0..3, kept in allocas (-> registers)
            c_ptrs, accs = [], []
            for r in range(MR):
                row = builder.add(c_off_, builder.mul(ldc_, ir.Constant(i64, r)))
                for h in range(2):
                    p = builder.bitcast(builder.gep(pc, [builder.add(row, ir.Constant(i64, 8 * h))]), v8p)
                    slot = cgutils.alloca_once(builder, v8i32)
                    builder.store(builder.load(p, align=4), slot)
                    c_ptrs.append(p)
                    accs.append(slot)
            a_rows = [builder.add(a_off_, builder.mul(lda_, ir.Constant(i64, r))) for r in range(MR)]
            with cgutils.for_range(builder, P_) as loop:
                p = loop.index
                bbase = builder.add(b_off_, builder.mul(p, ir.Constant(i64, 32)))
                b0 = builder.load(builder.bitcast(builder.gep(pb, [bbase]), v16p), align=2)
                b1 = builder.load(builder.bitcast(
                    builder.gep(pb, [builder.add(bbase, ir.Constant(i64, 16))]), v16p), align=2)
                for r in range(MR):
                    word = builder.load(builder.gep(pa, [builder.add(a_rows[r], p)]), align=4)
                    vec = builder.insert_element(ir.Constant(v8i32, None), word, ir.Constant(i32, 0))
                    bcast = builder.bitcast(builder.shuffle_vector(vec, vec, splat0), v16i16)
                    for h, bv in enumerate((b0, b1)):
                        slot = accs[2 * r + h]
                        builder.store(builder.add(builder.load(slot), _madd(builder, bcast, bv)), slot)
            for p, slot in zip(c_ptrs, accs):
                builder.store(builder.load(slot), p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    i8 = ir.IntType(8)
    v16i8, v32i16 = ir.VectorType(i8, 16), ir.VectorType(i16, 32)
    interleave = ir.Constant(ir.VectorType(i32, 32), [c // 2 + 16 * (c % 2) for c in range(32)])

    @intrinsic
    def _pack_pair_rows(typingctx, B, off0, off1, Bp, out_off):
        """Bp[out_off + 2c + e] = int16(B[(off0, off1)[e] + c]) for c in 0..15, e in 0..1.

        Two rows' 16 int8 values, sign-extended to int16 and interleaved: one pair ``p`` of a
        packed B panel, in a few vector instructions instead of 32 scalar copies.
        """
        sig = types.void(B, off0, off1, Bp, out_off)

        def codegen(context, builder, signature, args):
            b, o0, o1, bp, oo = args
            i64 = ir.IntType(64)
            o0, o1, oo = (builder.sext(v, i64) if v.type != i64 else v for v in (o0, o1, oo))
            pb = context.make_array(signature.args[0])(context, builder, b).data
            pp = context.make_array(signature.args[3])(context, builder, bp).data
            r0 = builder.load(builder.bitcast(builder.gep(pb, [o0]), v16i8.as_pointer()), align=1)
            r1 = builder.load(builder.bitcast(builder.gep(pb, [o1]), v16i8.as_pointer()), align=1)
            w = builder.shuffle_vector(builder.sext(r0, v16i16), builder.sext(r1, v16i16), interleave)
            builder.store(w, builder.bitcast(builder.gep(pp, [oo]), v32i16.as_pointer()), align=2)
            return context.get_dummy_value()

        return sig, codegen

    opts = dict(parallel=True, cache=True, fastmath=False, nogil=True)

    @njit(**opts)
    def widen_pairs(a, Mp, Kp):
        # int8 [M, K] -> int16 [Mp, Kp] zero padded (read as int32 words of pairs by the caller)
        M, K = a.shape
        out = np.zeros((Mp, Kp), np.int16)
        for i in prange(M):
            ai = a[i]
            oi = out[i]
            for k in range(K):
                oi[k] = ai[k]
        return out

    @njit(**opts)
    def gemm_packed(Aw, b, Mp, P):
        # Aw int32 [Mp, P]: pairs of int16 A values; b int8 [K, N] -> C int32 [Mp, Np]
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

    @njit(**opts)
    def gemm_rows(a, b):
        # C[i, :] += A[i, k] B[k, :], columns in blocks that stay in L1; int32 throughout
        M, K = a.shape
        N = b.shape[1]
        C = np.zeros((M, N), np.int32)
        JB = 2048
        n_jb = (N + JB - 1) // JB
        for t in prange(M * n_jb):
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
        return C

    @njit(**opts)
    def row_sums(a):
        # int32 sums of the rows of a [M, K]
        M, K = a.shape
        out = np.zeros(M, np.int32)
        for i in prange(M):
            s = np.int32(0)
            for k in range(K):
                s += np.int32(a[i, k])
            out[i] = s
        return out

    f32 = ir.FloatType()
    v8f32 = ir.VectorType(f32, 8)
    shifts = ir.Constant(v8i32, [4 * i for i in range(8)])
    mask15 = ir.Constant(v8i32, [15] * 8)

    @intrinsic
    def _w4_row(typingctx, Q, q_off, X, x_off, S, s_off, n_words, wpg):
        """sum_g S[s_off + g] * sum_{w in group g} sum_{i < 8} X[x_off + 8w + i] * ((Q[q_off + w] >> 4i) & 15)

        over the ``n_words`` words of one row in groups of ``wpg`` words (the last may be
        shorter). One 8-lane vector per word: broadcast the word, shift lane i right by 4i,
        mask, convert to float and multiply-add (contracted to an FMA where the CPU has one)
        with the 8 contiguous x; four vector accumulators take turns over a group's words, the
        group's sum is scaled into one row accumulator, and a single horizontal sum ends the
        row (a fixed float32 summation order).
        """
        sig = types.float32(Q, q_off, X, x_off, S, s_off, n_words, wpg)

        def codegen(context, builder, signature, args):
            from numba.core import cgutils
            q_arr, q_off_, x_arr, x_off_, s_arr, s_off_, n_, wpg_ = args
            i64 = ir.IntType(64)
            q_off_, x_off_, s_off_, n_, wpg_ = (builder.sext(v, i64) if v.type != i64 else v
                                                for v in (q_off_, x_off_, s_off_, n_, wpg_))
            pq = context.make_array(signature.args[0])(context, builder, q_arr).data
            px = context.make_array(signature.args[2])(context, builder, x_arr).data
            ps = context.make_array(signature.args[4])(context, builder, s_arr).data
            v8fp = v8f32.as_pointer()
            zero8 = ir.Constant(v8f32, [0.0] * 8)
            accs = [cgutils.alloca_once(builder, v8f32) for _ in range(4)]
            row = cgutils.alloca_once(builder, v8f32)
            builder.store(zero8, row)

            def word_step(w, slot):
                word = builder.load(builder.gep(pq, [builder.add(q_off_, w)]), align=4)
                vec = builder.insert_element(ir.Constant(v8i32, None), word, ir.Constant(i32, 0))
                bc = builder.shuffle_vector(vec, vec, splat0)
                codes = builder.and_(builder.lshr(bc, shifts), mask15)
                fc = builder.sitofp(codes, v8f32)
                xo = builder.add(x_off_, builder.mul(w, ir.Constant(i64, 8)))
                xv = builder.load(builder.bitcast(builder.gep(px, [xo]), v8fp), align=4)
                prod = builder.fmul(xv, fc, flags=("contract",))
                builder.store(builder.fadd(builder.load(slot), prod, flags=("contract",)), slot)

            one = ir.Constant(i64, 1)
            n_groups = builder.sdiv(builder.sub(builder.add(n_, wpg_), one), wpg_)
            with cgutils.for_range(builder, n_groups) as gl:
                g = gl.index
                w0 = builder.mul(g, wpg_)
                rest = builder.sub(n_, w0)
                nw = builder.select(builder.icmp_signed("<", rest, wpg_), rest, wpg_)
                for a in accs:
                    builder.store(zero8, a)
                quarter = builder.lshr(nw, ir.Constant(i64, 2))
                with cgutils.for_range(builder, quarter) as loop:
                    w = builder.add(w0, builder.mul(loop.index, ir.Constant(i64, 4)))
                    for u in range(4):
                        word_step(builder.add(w, ir.Constant(i64, u)), accs[u])
                done = builder.add(w0, builder.mul(quarter, ir.Constant(i64, 4)))
                with cgutils.for_range(builder, builder.and_(nw, ir.Constant(i64, 3))) as loop:
                    word_step(builder.add(done, loop.index), accs[0])
                gacc = builder.fadd(builder.fadd(builder.load(accs[0]), builder.load(accs[1])),
                                    builder.fadd(builder.load(accs[2]), builder.load(accs[3])))
                sc = builder.load(builder.gep(ps, [builder.add(s_off_, g)]), align=4)
                sv = builder.insert_element(ir.Constant(v8f32, None), sc, ir.Constant(i32, 0))
                sv = builder.shuffle_vector(sv, sv, splat0)
                builder.store(builder.fadd(builder.load(row), builder.fmul(sv, gacc, flags=("contract",)),
                                           flags=("contract",)), row)
            acc = builder.load(row)
            # horizontal sum of the 8 lanes: (0+4, 1+5, 2+6, 3+7) -> (.+.) -> .
            lo = builder.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(i32, 4), [0, 1, 2, 3]))
            hi = builder.shuffle_vector(acc, acc, ir.Constant(ir.VectorType(i32, 4), [4, 5, 6, 7]))
            s4 = builder.fadd(lo, hi)
            s2 = builder.fadd(builder.shuffle_vector(s4, s4, ir.Constant(ir.VectorType(i32, 2), [0, 1])),
                              builder.shuffle_vector(s4, s4, ir.Constant(ir.VectorType(i32, 2), [2, 3])))
            return builder.fadd(builder.extract_element(s2, ir.Constant(i32, 0)),
                                builder.extract_element(s2, ir.Constant(i32, 1)))

        return sig, codegen

    @njit(**opts)
    def w4_gemm(x, packed, scales, zeros, group_size):
        # x f32 [M, K], packed i32 [N, W], scales f32 [N, G], zeros i32 [N, G] -> y f32 [M, N]
        # requires group_size % 8 == 0 (a group is a whole number of words)
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

    @njit(**opts)
    def w4_gemm_general(x, packed, scales, zeros, group_size):
        # any group_size: one code at a time (groups may split a word)
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

    return dict(widen_pairs=widen_pairs, gemm_packed=gemm_packed, gemm_rows=gemm_rows,
                row_sums=row_sums, w4_gemm=w4_gemm, w4_gemm_general=w4_gemm_general)


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Numba ``C = A B`` (int8 x int8 -> int32), equal to the reference; operands pre-checked."""
    k = kernels()
    M, K = a.shape
    if M < SMALL_M:
        return k["gemm_rows"](np.ascontiguousarray(a), np.ascontiguousarray(b))
    P = (K + 1) // 2
    Mp = -(-M // MR) * MR
    A16 = k["widen_pairs"](np.ascontiguousarray(a), Mp, 2 * P)             # [Mp, 2P] int16
    Aw = A16.view(np.int32)                                                # [Mp, P] pairs
    if A16.dtype.byteorder == ">" or np.little_endian is False:             # pragma: no cover
        raise ValueError("the packed int8 kernel assumes a little-endian machine")
    C = k["gemm_packed"](Aw, np.ascontiguousarray(b), Mp, P)               # [Mp, Np]
    return np.ascontiguousarray(C[:M, : b.shape[1]])


def row_sums(a: np.ndarray) -> np.ndarray:
    """int32 row sums of an 8-bit array (for the zero-point corrections)."""
    return kernels()["row_sums"](np.ascontiguousarray(a))


def w4_matmul(x, packed, scales, zeros, group_size: int) -> np.ndarray:
    """Numba ``x W_hat^T`` with on-the-fly 4-bit dequantization; operands pre-checked."""
    k = kernels()
    f = k["w4_gemm"] if group_size % 8 == 0 else k["w4_gemm_general"]
    return f(np.ascontiguousarray(x), np.ascontiguousarray(packed),
             np.ascontiguousarray(scales, np.float32), np.ascontiguousarray(zeros, np.int32),
             int(group_size))
