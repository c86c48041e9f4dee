"""The parts of :func:`refquant.algorithms.gptq.gptq` that exist only for speed.

Each helper computes what one line of Algorithm 1 states, faster; its docstring names that line
and the test in ``tests/test_gptq.py`` that pins it equal to the plain version.

Symbols: ``W1`` [d_row, count] the current lazy block of weights, ``Err1`` [d_row, count] its
scaled errors, ``Hinv`` [d_col, d_col] the upper Cholesky factor of ``H^-1`` and ``Hinv1`` its
diagonal block ``Hinv[i1:i2, i1:i2]``, ``i`` the position of the current column in the block.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.linalg
import threadpoolctl

_SUB = 16          # columns per cache-sized sub-block inside a lazy block


def _sub_product_(C, A, B) -> None:
    """``C -= A @ B`` in place: one BLAS ``gemm`` with ``beta = 1`` on a Fortran-ordered ``C``.

    The plain ``C -= A @ B`` makes a temporary of ``C``'s size (up to the whole unquantized
    part of ``W`` for the lazy block update). An empty ``C`` (the last block) is left alone.
    Pinned by ``test_sub_product_is_the_plain_update``.
    """
    if C.size == 0:
        return
    (gemm,) = scipy.linalg.blas.get_blas_funcs(("gemm",), (C,))
    out = gemm(-1.0, A, B, beta=1.0, c=C, overwrite_c=True)
    if not np.shares_memory(out, C):                                   # not expected for F-order C
        C[...] = out


def _feed_error_forward_(W1, Err1, Hinv1, i: int) -> None:
    """Algorithm 1's in-block update ``W1[:, i:] -= Err1[:, i] Hinv1[i, i:]``, in sub-blocks.

    The plain update is a rank-1 pass over the rest of the block for every column. Here the
    block is cut into sub-blocks of ``_SUB`` columns (``s1 <= i < s2``): the update reaches
    ``W1[:, i:s2]`` at once and ``W1[:, s2:]`` as one matrix product
    ``Err1[:, s1:s2] Hinv1[s1:s2, s2:]`` after the sub-block's last column, the same lazy
    batching as the block update one level down, so the rank-1 updates stay in cache. After the
    call ``W1[:, :s2]`` (every column the next step can read) equals the plain update's, and
    ``W1[:, s2:]`` still lacks ``Err1[:, s1:i+1] Hinv1[s1:i+1, s2:]`` (see
    :func:`_group_columns_updated`). ``Err1[:, i]`` must be set before the call. Pinned by
    ``test_feed_error_forward_is_the_plain_update``.
    """
    count = W1.shape[1]
    s1 = i - i % _SUB
    s2 = min(s1 + _SUB, count)
    W1[:, i:s2] -= np.multiply.outer(Hinv1[i, i:s2], Err1[:, i]).T    # [d_row, s2 - i], F-order
    if i == s2 - 1:
        _sub_product_(W1[:, s2:], Err1[:, s1:s2], Hinv1[s1:s2, s2:])


def _group_columns_updated(W, W1, Err1, Hinv, i1: int, i: int, width: int) -> np.ndarray:
    """The columns ``j .. j+width-1`` (``j = i1 + i``) with the errors of every column before
    ``j`` applied: what the unbatched algorithm (one full update per column) holds there.

    ``W1[:, i:s2]`` is current already; ``W1[:, s2:]`` lacks the pending sub-block update
    ``Err1[:, s1:i] Hinv1[s1:i, s2:]`` (:func:`_feed_error_forward_`) and the columns past the
    block end ``i2`` lack this block's ``Err1[:, :i] Hinv[i1:j, i2:]``. Returns a new
    ``[d_row, min(width, d_col - j)]`` array. Pinned by ``test_equals_unblocked_oracle``
    (``group_params="updated"`` at every block size).
    """
    count, d_col = W1.shape[1], W.shape[1]
    j, i2 = i1 + i, i1 + count
    s1 = i - i % _SUB
    s2 = min(s1 + _SUB, count)
    e = min(i + width, count)                                           # block columns wanted
    parts = [W1[:, i:min(e, s2)]]
    if e > s2:
        parts.append(W1[:, s2:e] - Err1[:, s1:i] @ Hinv[i1 + s1:j, i1 + s2:i1 + e])
    end = min(j + width, d_col)
    if end > i2:
        parts.append(W[:, i2:end] - Err1[:, :i] @ Hinv[i1:j, i2:end])
    return np.concatenate(parts, axis=1)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> threadpoolctl.ThreadpoolController:
    """The loaded BLAS libraries, found once (a scan of the process's shared libraries)."""
    return threadpoolctl.ThreadpoolController()


def _inverse_hessian_factor(H: np.ndarray) -> np.ndarray:
    """``U`` upper triangular with ``H^-1 = U^T U``: the upper Cholesky factor of ``H^-1``.

    Algorithm 1's ``H^-1 <- Cholesky(H^-1)^T``, computed without forming ``H^-1``: with ``P``
    the order-reversing permutation and ``P H P = L L^T`` (Cholesky), ``U = P L^{-1} P``, since
    ``U^T U = P L^{-T} L^{-1} P = P (P H P)^{-1} P = H^{-1}`` and ``P L^{-1} P`` is upper
    triangular with a positive diagonal (so it is *the* Cholesky factor). One factorization
    and one triangular inverse instead of the reference's three ``n^3`` steps. Raises
    ``numpy.linalg.LinAlgError`` where ``H`` is not (numerically) positive definite. Pinned by
    ``test_inverse_hessian_factor_is_the_plain_factor``.

    Both LAPACK steps run on one BLAS thread: OpenBLAS's multi-threaded ``potrf`` and ``trtri``
    split the factorization differently for each thread count, so the factor (and then GPTQ's
    codes) would depend on the machine's thread setting. The matrix products of the rest of
    GPTQ are split by rows and columns only, each dot product summed in the same order whatever
    the threads. Pinned by ``test_inverse_hessian_factor_ignores_blas_threads``.
    """
    # P H P is symmetric, so its row-major copy read as column-major (``.T``) is the same
    # matrix: LAPACK gets a Fortran array without a transposing copy
    PHP = np.ascontiguousarray(H[::-1, ::-1]).T
    with _blas_controller().limit(limits=1, user_api="blas"):
        L = scipy.linalg.cholesky(PHP, lower=True, overwrite_a=True)   # P H P = L L^T
        (trtri,) = scipy.linalg.lapack.get_lapack_funcs(("trtri",), (L,))
        Linv, info = trtri(L, lower=1)                                  # L^-1, lower
    if info != 0 or not np.isfinite(Linv).all():
        raise np.linalg.LinAlgError(f"inverting the Cholesky factor of H failed (trtri info={info})")
    return np.asfortranarray(Linv[::-1, ::-1])                         # U = P L^-1 P, upper


#: use the Numba column pass of :func:`_quantize_block_fixed_` where it applies (tests set it
#: False to run the plain per-column loop of :func:`refquant.algorithms.gptq.gptq`)
NUMBA_COLUMNS = True


def fixed_columns_apply(spec, fixed, grid) -> bool:
    """Whether :func:`_quantize_block_fixed_` replaces the per-column loop: an integer spec
    (:class:`~refquant.schemes.spec.QuantSpec`) with its parameters fixed before the pass
    (tensor, channel, static groups or given ``qparams``), no column grid."""
    from refquant.schemes.spec import QuantSpec
    return NUMBA_COLUMNS and grid is None and fixed is not None and type(spec) is QuantSpec


@functools.lru_cache(maxsize=None)
def _columns_kernel():
    """The Numba loop of :func:`_quantize_block_fixed_` (compiled on first call, cached)."""
    import numba

    from refquant.schemes.numerics import round_scalar_numba
    rnd = round_scalar_numba()

    @numba.njit(cache=True, fastmath=False, nogil=True)
    def kernel(W1, Q1, Err1, Losses1, codes, Hinv1, S, Z, ks, a, b, qmin, qmax, away):
        d_row = W1.shape[0]
        for i in range(a, b):                                    # the columns, in order
            d = Hinv1[i, i]                                      # float32
            dd = d * d
            k = ks[i]
            for r in range(d_row):
                w = W1[r, i]
                s, z = S[r, k], Z[r, k]                          # float64
                c = min(max(rnd(np.float64(w) / s, away) + z, qmin), qmax)   # _round_codes
                codes[r, i] = c                                  # whole, in range: exact cast
                Q1[r, i] = s * (c - z)                           # _dequantize_codes, rounded to
                q = Q1[r, i]                                     # the working dtype
                e = w - q
                Losses1[r, i] = e * e / dd                       # (w - q)**2 / d**2
                Err1[r, i] = e / d
            for j in range(i, b):                                # W1[:, i:b] -= Err1[:, i] Hinv1[i, i:b]
                h = Hinv1[i, j]
                for r in range(d_row):
                    W1[r, j] = W1[r, j] - Err1[r, i] * h
    return kernel


def _quantize_block_fixed_(W1, Q1, Err1, Losses1, codes1, Hinv1, fixed, cols, spec) -> None:
    """The per-column loop of :func:`refquant.algorithms.gptq.gptq` over one lazy block, for
    parameters fixed before the pass, in Numba: for each column ``i`` Algorithm 1's ``quant``
    (:func:`refquant.algorithms._gptq_params._quantize_column`: float64 ``round(w / s) + z``
    clamped, ``s (c - z)`` rounded to the working dtype), the loss ``(w - q)^2 / d^2`` and
    error ``(w - q) / d`` in the working dtype, and the in-block update of :func:`_feed_error_forward_` (the same
    sub-blocks: rank-1 updates up to the sub-block's end, each product and difference rounded
    as NumPy's, no fused multiply-add; one BLAS product for the rest of the block
    after each sub-block). Fills ``Q1``, ``Err1``, ``Losses1`` and ``codes1`` (the block's
    columns of the codes) and leaves ``W1`` as the plain loop does. ``cols`` [count] are the
    input columns of the block's positions (``perm[i1:i2]``). One thread: the BLAS products
    between the sub-blocks take both cores. Pinned equal to the plain loop by
    ``test_numba_columns_are_the_plain_loop``.
    """
    count = W1.shape[1]
    ks = np.ascontiguousarray(fixed.col_k[cols], np.intp)                  # [count]
    kernel = _columns_kernel()
    for s1 in range(0, count, _SUB):
        s2 = min(s1 + _SUB, count)
        kernel(W1, Q1, Err1, Losses1, codes1, Hinv1, fixed.S, fixed.Z, ks, s1, s2,
               float(spec.qmin), float(spec.qmax), spec.rounding == "half_away")
        _sub_product_(W1[:, s2:], Err1[:, s1:s2], Hinv1[s1:s2, s2:])
