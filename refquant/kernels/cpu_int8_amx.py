"""Numba int8 GEMM ``C = A B`` with Intel AMX (``tdpbssd``), equal to
:func:`refquant.kernels.reference.int8_matmul` bit for bit.

Selected by :func:`refquant.kernels.cpu_features.int8_path` only where the CPU reports
``amx-tile`` and ``amx-int8`` *and* Linux has granted this process the tile state
(:func:`refquant.kernels.cpu_features.amx_permission`); every other machine runs
:mod:`refquant.kernels.cpu_int8_vnni` or :mod:`refquant.kernels.cpu_int8`.

The instruction
---------------
AMX adds eight tile registers ``tmm0`` .. ``tmm7`` of up to 16 rows of 64 bytes, whose shapes are
set by ``ldtilecfg`` from a 64-byte block (:func:`tile_config`). ``tdpbssd c, a, b`` reads a tile
``a`` as 16 rows of 64 signed bytes (16 rows of ``A``, 64 consecutive ``k``), a tile ``b`` as 16
rows of 16 groups of four signed bytes (row ``p``: ``B[4p + e, j]`` for 16 columns ``j``, ``e`` =
0..3) and adds to the 16 x 16 int32 tile ``c``

.. math::  c_{ij} \\mathrel{+}= \\sum_{p=0}^{15} \\sum_{e=0}^{3} a_{i, 4p+e}\\, b_{p, 4j+e}

in wrapping int32 (no saturation): 16384 multiply-adds in one instruction, 1024 times a 512-bit
float32 FMA's 16. Both operands are signed, so unlike ``vpdpbusd`` no shift of ``B`` and no row
sums of ``A`` are needed. The int32 sums wrap exactly as the specification's do, and the caller's
``K <= K_MAX`` keeps the true value inside int32, so the result is exact.

Blocking
--------
``B`` is packed once per call into panels of 32 columns (:func:`refquant.kernels.cpu_int8_vnni.pack_panels`
unshifted: ``Bq[j, 128 p + 4c + e] = B[4p + e, 32 j + c]``), so a ``b`` tile is 16 consecutive
quads of a panel, 64 of its 128 bytes per quad (row stride 128). ``A`` is read in place, a tile
being 16 of its rows at stride ``K`` (rows padded to a multiple of 32 and ``K`` to a multiple of
64 only where needed). Each thread takes whole panels; per 32-row block of ``A`` the micro-kernel
(:func:`amx_panel`) keeps the 32 x 32 block of ``C`` in four tiles (``tmm0`` .. ``tmm3``) and per
64 values of ``k`` loads two tiles of ``A`` (``tmm4``, ``tmm5``) and two of ``B`` (``tmm6``,
``tmm7``) and issues four ``tdpbssd``: four 1 KiB tile loads per 65536 multiply-adds. ``k`` is
not blocked: blocking it so that a piece of the panel stays in L1 was slower on a Sapphire Rapids
class Xeon (3.1-3.4 against 2.5-2.6 ms at (256, 4096, 4096), paired calls, medians of 40), as the
four ``C`` tiles are then loaded and stored once per block.

The bound: one ``tdpbssd`` per 16 cycles on Sapphire Rapids, 1024 multiply-adds per cycle and
core (Intel's optimization manual, AMX chapter), 8 to 16 times a 512-bit ``vpdpbusd``'s 64 per
instruction at one or two instructions per cycle. Measured on a 2-core Sapphire Rapids class Xeon
at (256, 4096, 4096): packing ``B`` 0.6 ms, the tile products 2.4-2.8 ms (3.1-3.6 TOP/s), against
28-29 ms for float32 OpenBLAS; ``benchmarks/int8_gemm.py`` prints the whole call's rate.
"""

from __future__ import annotations

import functools

import numpy as np

from refquant.kernels import cpu_features
from refquant.kernels.cpu_int8_vnni import NJIT_OPTIONS, pack_panels
from refquant.schemes._jit import stable

MB, NB, KB = 32, 32, 64     # block of C (2 x 2 tiles of 16 x 16 int32), k per step (64 bytes)
C_TILES, A_TILES, B_TILES = (0, 1, 2, 3), (4, 5), (6, 7)    # c[2r + h] += a[r] b[h]


def tile_config() -> np.ndarray:
    """The 64-byte ``ldtilecfg`` operand: palette 1, tiles 0-7 each 16 rows of 64 bytes (byte 0:
    palette; bytes 16 + 2t: bytes per row of tile ``t`` as uint16; byte 48 + t: its rows)."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    for t in range(8):
        cfg[16 + 2 * t] = 64
        cfg[48 + t] = 16
    return cfg


def require_tiles() -> None:
    """Raise ``RuntimeError`` unless this machine can run the AMX kernel: the CPU reports
    ``amx-tile`` and ``amx-int8`` and Linux has granted the tile state (asked for here, once).
    Every builder below calls it first: an AMX instruction without the grant kills the process
    with SIGILL."""
    missing = cpu_features.missing_features("amx_int8")
    if missing:
        why = cpu_features.os_refusal(missing) or f" ({cpu_features.host_cpu_name()} has no AMX)"
        raise RuntimeError(f"the AMX int8 kernel cannot run here: missing {missing}{why}")


def _void(builder, name, arg_types, args):
    """Call the LLVM intrinsic ``name`` (returning void) with ``args``."""
    from llvmlite import ir
    fn = builder.module.globals.get(name) or ir.Function(
        builder.module, ir.FunctionType(ir.VoidType(), arg_types), name=name)
    builder.call(fn, args)


@functools.lru_cache(maxsize=None)
def amx_panel():
    """The intrinsic ``amx_panel(A, lda, Mp, Bq, b_off, C, c_off, ldc, S, cfg)``:

    ``C[c_off + i*ldc + j] = sum_{k < 64 S} A[i*lda + k] * B(k, j)`` for ``i`` < ``Mp`` (a
    multiple of 32) and ``j`` < 32, ``B(4p + e, j) = Bq[b_off + 128 p + 4 j + e]`` (one packed
    panel): ``A`` int8 [*] (row ``i`` at ``i*lda``, ``lda`` bytes), ``Bq`` int8 [*], ``C`` int32
    [*], ``cfg`` the uint8 [64] of :func:`tile_config`. Loads the tile configuration, runs every
    32-row block of the panel over the whole of ``k``, and releases the tiles.
    """
    require_tiles()
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.core.extending import intrinsic

    @intrinsic
    def _amx_panel(typingctx, A, lda, Mp, Bq, b_off, C, c_off, ldc, S, cfg):
        sig = types.void(A, lda, Mp, Bq, b_off, C, c_off, ldc, S, cfg)

        def codegen(context, builder, signature, args):
            i8, i64 = ir.IntType(8), ir.IntType(64)
            i8p = i8.as_pointer()
            arrays = [context.make_array(signature.args[i])(context, builder, args[i]).data
                      for i in (0, 3, 5, 9)]
            pa, pb, pc, pcfg = (builder.bitcast(p, i8p) for p in arrays)   # byte addressing
            lda_, mp_, b_off_, c_off_, ldc_, s_ = (
                builder.sext(v, i64) if v.type != i64 else v for v in (args[i] for i in (1, 2, 4, 6, 7, 8)))

            def tile(t):                                  # an immediate tile number
                return ir.Constant(i8, t)

            def const(n):
                return ir.Constant(i64, n)

            def load(t, base, off, stride):               # tile t <- 16 rows at base + off
                _void(builder, "llvm.x86.tileloadd64", [i8, i8p, i64],
                      [tile(t), builder.gep(base, [off]), stride])

            ldc_bytes = builder.mul(ldc_, const(4))

            def c_tiles(i0):                              # (tile, address) of the 32 x 32 block
                for r in range(2):
                    for h in range(2):
                        elem = builder.add(builder.add(c_off_, const(16 * h)),
                                           builder.mul(builder.add(i0, const(16 * r)), ldc_))
                        yield C_TILES[2 * r + h], builder.gep(pc, [builder.mul(elem, const(4))])

            _void(builder, "llvm.x86.ldtilecfg", [i8p], [pcfg])
            with cgutils.for_range(builder, builder.udiv(mp_, const(MB))) as rows:
                i0 = builder.mul(rows.index, const(MB))
                for t in C_TILES:
                    _void(builder, "llvm.x86.tilezero", [i8], [tile(t)])
                with cgutils.for_range(builder, s_) as steps:
                    s = steps.index
                    for r, t in enumerate(A_TILES):       # rows i0 + 16 r .., bytes 64 s ..
                        row = builder.add(i0, const(16 * r))
                        load(t, pa, builder.add(builder.mul(row, lda_), builder.mul(s, const(KB))), lda_)
                    for h, t in enumerate(B_TILES):       # quads 16 s .., columns 16 h ..
                        off = builder.add(b_off_, builder.add(builder.mul(s, const(16 * 4 * NB)), const(64 * h)))
                        load(t, pb, off, const(4 * NB))
                    for r, ta in enumerate(A_TILES):
                        for h, tb in enumerate(B_TILES):
                            _void(builder, "llvm.x86.tdpbssd", [i8, i8, i8],
                                  [tile(C_TILES[2 * r + h]), tile(ta), tile(tb)])
                for t, at in c_tiles(i0):
                    _void(builder, "llvm.x86.tilestored64", [i8, i8p, i64], [tile(t), at, ldc_bytes])
            _void(builder, "llvm.x86.tilerelease", [], [])
            return context.get_dummy_value()

        return sig, codegen

    return stable(_amx_panel)


@functools.lru_cache(maxsize=None)
def gemm_packed():
    """``gemm_packed(a, Bq, cfg)``: int8 ``a[Mp, 64 S]`` (C-contiguous, ``Mp`` a multiple of 32)
    times the unshifted packed ``Bq`` (``pack_panels(16, flip=False)`` with ``16 S`` quads) as the
    exact int32 ``C = A B``, ``[Mp, 32 n_panels]``; panels in parallel."""
    from numba import njit, prange
    _panel = amx_panel()

    @njit(**NJIT_OPTIONS)
    def _gemm_packed(a, Bq, cfg):
        Mp, Kp = a.shape
        n_panels = Bq.shape[0]
        Np = NB * n_panels
        S = Kp // KB
        C = np.empty((Mp, Np), np.int32)
        af = a.reshape(Mp * Kp)
        Cf = C.reshape(Mp * Np)
        for jb in prange(n_panels):                           # whole k: C never reloaded
            _panel(af, Kp, Mp, Bq[jb], 0, Cf, NB * jb, Np, S, cfg)
        return C

    return _gemm_packed


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``C = A B`` (int8 x int8 -> int32) with AMX tiles, equal to the reference; operands
    pre-checked by :func:`refquant.kernels.reference.check_int8_operands`. Any shape (``A`` is
    padded to whole 32-row blocks and 64-value steps of ``k`` where it is not already).

    Raises ``RuntimeError`` where the machine cannot run it (:func:`require_tiles`)."""
    require_tiles()
    M, K = a.shape
    N = b.shape[1]
    Kp = -(-K // KB) * KB
    Mp = -(-M // MB) * MB
    if Mp != M or Kp != K or not a.flags.c_contiguous:
        a_pad = np.zeros((Mp, Kp), np.int8)                                    # zero rows and k
        a_pad[:M, :K] = a
        a = a_pad
    Bq = pack_panels(16, False)(np.ascontiguousarray(b), Kp // 4)             # [N/32, 128 Kp/4]
    C = gemm_packed()(a, Bq, tile_config())                                    # [Mp, Np]
    return C[:M] if C.shape[1] == N else np.ascontiguousarray(C[:M, :N])
