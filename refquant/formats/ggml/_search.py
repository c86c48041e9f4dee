"""The scale searches behind ggml's K-quants and importance-matrix quantizers, vectorized over blocks.

Every llama.cpp quantizer beyond Q8_0/Q4_0/Q4_1 picks each (sub-)block's scale -- and, for the
asymmetric types, its minimum -- by a small weighted least-squares search over candidate scales
(``ggml-quants.c``: ``make_qx_quants``, ``make_q3_quants``, ``make_qkx2_quants``,
``make_qkx3_quants``, ``make_qp_quants``). The functions here compute the same thing for many
blocks at once: the last axis is one block's values, any leading axes are independent blocks,
and every loop of the C code over candidate scales (or over coordinate-descent passes) becomes a
loop whose body is a vector operation over all blocks, each block keeping its own best so far.

Symbols (one block of ``m`` values)
-----------------------------------
=========  =================================================================================
x          the block's values, float32 ``[..., m]``
w          per-value importance weights, float32 ``[..., m]`` (from the imatrix, or a rule)
nmax       the code range: symmetric codes ``l`` in ``[-nmax, nmax - 1]`` (stored ``l + nmax``);
           asymmetric codes ``l`` in ``[0, nmax]``
d          the block scale (``scale`` in ggml), float32 ``[...]``
m_b        the block minimum (``min``, <= 0; returned negated as ``the_min`` >= 0)
L          the codes as ggml stores them (uint8 ``[..., m]``)
=========  =================================================================================

Bit-exactness
-------------
ggml's reference quantizers run in float32 with no fused multiply-add (the ``libggml-base``
binary has none) and without reassociation, so every sum is a left-to-right loop with a float32
accumulator. :func:`sum_f32` does exactly that (``np.sum`` adds pairwise and differs in the last
bit); every product is written in C's evaluation order (``w*x[i]*l`` is ``(w*x)*l``), and the
rounding is :func:`nearest_int`, ggml's magic-number trick, reproduced bit for bit.

References
----------
.. [1] G. Gerganov, K. Kawrakow et al., llama.cpp, ``ggml/src/ggml-quants.c`` (the K-quants,
       PR #1684, and the importance-matrix quantizers, PR #4861).
"""

from __future__ import annotations

import numpy as np

#: below this largest ``|x|`` ggml calls a block all zero (``GROUP_MAX_EPS``)
GROUP_MAX_EPS = np.float32(1e-15)

_F32 = np.float32
_MAGIC = _F32(12582912.0)           # 1.5 * 2**23


def nearest_int(v) -> np.ndarray:
    """ggml's ``nearest_int``: float32 ``v`` rounded to an integer, half to even, as int32.

    The C adds ``1.5 * 2**23`` in float32 -- the sum lands where the float32 spacing is 1, so
    the addition itself rounds to the nearest integer, ties to even -- and reads the integer
    back from the low 23 bits of the sum. That is ``rint(v)`` for ``|v| <= 4194303`` (ggml
    asserts this only in debug builds); the same bit operations are done here so that any
    input, NaN and inf included, gives the C's integer (NaN -> 0, +-inf -> -4194304).

    Examples
    --------
    >>> nearest_int(np.array([0.5, 1.5, -2.5, 2.6, np.nan], np.float32)).tolist()
    [0, 2, -2, 3, 0]
    """
    with np.errstate(all="ignore"):
        s = (np.asarray(v, dtype=_F32) + _MAGIC).astype(_F32)
    bits = np.ascontiguousarray(s).view(np.int32)
    return (bits & np.int32(0x007FFFFF)) - np.int32(0x00400000)


def sum_f32(t, first: bool = False) -> np.ndarray:
    """Sum over the last axis as a C loop ``float s = 0; for (...) s += t[i];`` does: float32,
    left to right, starting from +0.0 (``np.sum``'s pairwise order differs in the last bit).
    ``first=True``: the loop ``float s = t[0]; for (i = 1; ...) s += t[i];`` (the two differ
    only in the sign of an all-zero sum)."""
    t = np.asarray(t, dtype=_F32)
    s = t[..., 0].copy() if first else np.zeros(t.shape[:-1], dtype=_F32)
    for i in range(1 if first else 0, t.shape[-1]):
        s += t[..., i]
    return s


def _first_extreme(x, which):
    """The first largest-magnitude value (``"amax"``), smallest or largest value along the last
    axis, as ggml's strict-comparison loops pick it (that fixes the sign of a zero)."""
    if which == "amax":
        i = np.argmax(np.abs(x), axis=-1)
    else:
        i = np.argmin(x, axis=-1) if which == "min" else np.argmax(x, axis=-1)
    return np.take_along_axis(x, i[..., None], axis=-1)[..., 0]


def _clip(l, lo, hi):
    return np.minimum(np.maximum(l, lo), hi)


def make_qx_quants(x, nmax: int, rmse_type: int, qw=None, return_iscale: bool = False):
    """Symmetric codes and scale of each block: ggml's ``make_qx_quants``.

    Codes ``l_i = clamp(nearest_int(x_i / d), -nmax, nmax - 1)``. With ``rmse_type != 0`` the
    scale is the weighted least-squares fit for the codes,

    .. math:: d(l) = \\frac{\\sum_i w_i x_i l_i}{\\sum_i w_i l_i^2},
              \\qquad \\text{maximizing} \\quad
              \\frac{(\\sum_i w_i x_i l_i)^2}{\\sum_i w_i l_i^2}

    (equivalently minimizing :math:`\\sum_i w_i (x_i - d\\, l_i)^2` over ``d`` for fixed codes),
    searched over 19 candidate inverse scales ``-(nmax + 0.1 k) / x_max``, ``k = -9..9``, where
    ``x_max`` is the first value of largest magnitude (so the scale may be negative: that value
    maps to ``-nmax``, the end of the range with room). Candidate ``k = 0`` is the start; a
    later candidate replaces the best only where it is strictly better.

    Parameters
    ----------
    x : array_like of float32, shape ``[..., m]``
    nmax : int
    rmse_type : int
        0: no search, ``d = 1 / iscale`` of candidate 0. 1: ``w = x^2``; 2: ``w = 1``;
        3: ``w = |x|``; 4: ``w = sqrt|x|`` (ignored where ``qw`` is given). Negative: the
        absolute value, but return after candidate 0 with ``(d(l) + 1/iscale) / 2``.
    qw : array_like of float32, shape ``[..., m]``, optional
        The importance weights ``w``.

    Returns
    -------
    d : numpy.ndarray of float32, shape ``[...]``
        0 for a block whose largest ``|x|`` is below ``GROUP_MAX_EPS``.
    L : numpy.ndarray of uint8, shape ``[..., m]``
        ``l + nmax`` (0 for an all-zero block).
    iscale : numpy.ndarray of float32, shape ``[...]``
        Only with ``return_iscale``: the candidate inverse scale the codes were rounded with,
        ``l = clamp(nearest_int(iscale x), -nmax, nmax - 1)`` (GPTQ onto this grid rounds
        with it, :mod:`refquant.formats.ggml.gptq_grid`).
    """
    x = np.asarray(x, dtype=_F32)
    with np.errstate(all="ignore"):
        amax = np.max(np.abs(x), axis=-1)
        zero = amax < GROUP_MAX_EPS                                   # [...]
        xmax = _first_extreme(x, "amax")[..., None]                   # [..., 1], signed
        iscale = (_F32(-nmax) / xmax).astype(_F32)                    # [..., 1]
        L = _clip(nearest_int(iscale * x), -nmax, nmax - 1)           # [..., m] int32
        isc = iscale[..., 0]                                          # of the codes L
        if rmse_type == 0:
            d = (_F32(1) / iscale[..., 0]).astype(_F32)
            return _finish_qx(d, L + nmax, zero) + ((isc,) if return_iscale else ())
        early, rmse_type = rmse_type < 0, abs(rmse_type)
        if qw is not None:
            w = np.asarray(qw, dtype=_F32)
        else:
            w = {1: x * x, 2: np.ones_like(x), 3: np.abs(x)}.get(rmse_type, np.sqrt(np.abs(x)))
        Lf = L.astype(_F32)
        sumlx = sum_f32(w * x * Lf)                                   # (w*x)*l, as C
        suml2 = sum_f32(w * Lf * Lf)
        d = np.where(suml2 != 0, sumlx / suml2, _F32(0)).astype(_F32)
        if early:
            d = np.where(suml2 > 0, _F32(0.5) * (d + _F32(1) / iscale[..., 0]),
                         _F32(1) / iscale[..., 0]).astype(_F32)
            return _finish_qx(d, L + nmax, zero) + ((isc,) if return_iscale else ())
        best = (d * sumlx).astype(_F32)
        for k in range(-9, 10):
            if k == 0:
                continue
            iscale_k = (-(_F32(nmax) + _F32(0.1) * _F32(k)) / xmax).astype(_F32)
            Lk = _clip(nearest_int(iscale_k * x), -nmax, nmax - 1)
            Lkf = Lk.astype(_F32)
            sumlx = sum_f32(w * x * Lkf)
            suml2 = sum_f32(w * Lkf * Lkf)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)     # strict, as C
            L = np.where(better[..., None], Lk, L)
            isc = np.where(better, iscale_k[..., 0], isc).astype(_F32)
            d = np.where(better, sumlx / suml2, d).astype(_F32)
            best = np.where(better, d * sumlx, best).astype(_F32)
    return _finish_qx(d, L + nmax, zero) + ((isc,) if return_iscale else ())


def _finish_qx(d, L, zero):
    d = np.where(zero, _F32(0), d).astype(_F32)
    return d, np.where(zero[..., None], 0, L).astype(np.uint8)


def make_q3_quants(x, nmax: int, do_rmse: bool):
    """Symmetric codes and scale of each block: ggml's ``make_q3_quants`` (Q3_K's reference).

    Start from ``l_i = clamp(nearest_int(-nmax x_i / x_max), -nmax, nmax - 1)`` (``x_max`` the
    first value of largest magnitude). With ``do_rmse``, improve the codes by coordinate
    descent on the same objective as :func:`make_qx_quants` with ``w_i = x_i^2``: up to 5
    passes over the values, each trying for ``l_i`` the value ``nearest_int(x_i S_l2 / S_lx)``
    (the best code for the others' fit, ``S`` the sums without value ``i``) and keeping it
    where :math:`(\\sum w x l)^2 / \\sum w l^2` strictly grows; the scale is then
    :math:`\\sum w x l / \\sum w l^2`. Without: ``d = x_max / -nmax``.

    Returns ``d`` (float32 ``[...]``) and ``L = l + nmax`` (uint8 ``[..., m]``), both 0 for a
    block whose largest ``|x|`` is below ``GROUP_MAX_EPS``.
    """
    x = np.asarray(x, dtype=_F32)
    with np.errstate(all="ignore"):
        zero = np.max(np.abs(x), axis=-1) < GROUP_MAX_EPS
        xmax = _first_extreme(x, "amax")[..., None]
        iscale = (_F32(-nmax) / xmax).astype(_F32)
        L = _clip(nearest_int(iscale * x), -nmax, nmax - 1)           # int32 [..., m]
        if not do_rmse:
            return _finish_qx((_F32(1) / iscale[..., 0]).astype(_F32), L + nmax, zero)
        w = x * x
        Lf = L.astype(_F32)
        sumlx = sum_f32(w * x * Lf)
        suml2 = sum_f32(w * Lf * Lf)
        for _ in range(5):              # a pass that changes nothing leaves the state as it is
            for i in range(x.shape[-1]):
                wi, xi, li = w[..., i], x[..., i], L[..., i].astype(_F32)
                slx = (sumlx - wi * xi * li).astype(_F32)
                sl2 = (suml2 - wi * li * li).astype(_F32)
                new = _clip(nearest_int(xi * sl2 / slx), -nmax, nmax - 1)
                nf = new.astype(_F32)
                slx_n = (slx + wi * xi * nf).astype(_F32)
                sl2_n = (sl2 + wi * nf * nf).astype(_F32)
                take = ((slx > 0) & (new != L[..., i]) & (sl2_n > 0)
                        & (slx_n * slx_n * suml2 > sumlx * sumlx * sl2_n))
                L[..., i] = np.where(take, new, L[..., i])
                sumlx = np.where(take, slx_n, sumlx).astype(_F32)
                suml2 = np.where(take, sl2_n, suml2).astype(_F32)
            # (ggml stops a block after a pass without change; further passes repeat it)
        d = np.where(suml2 > 0, sumlx / suml2, _F32(0)).astype(_F32)
    return _finish_qx(d, L + nmax, zero)


def _asym_error(d, m_b, L, x, w, use_mad):
    """``sum_i w_i |d l_i + m_b - x_i|`` (``use_mad``) or ``sum_i w_i (d l_i + m_b - x_i)^2``,
    with ``diff = ((d*l) + m_b) - x`` in float32 as ggml."""
    diff = (d[..., None] * L.astype(_F32) + m_b[..., None] - x).astype(_F32)
    diff = np.abs(diff) if use_mad else diff * diff
    return sum_f32(w * diff)


def _make_qkx(x, weights, nmax, rmin, rdelta, nstep, use_mad, version, return_rule=False):
    """The shared body of :func:`make_qkx2_quants` (``version=2``) and
    :func:`make_qkx3_quants` (``version=3``); ``return_rule`` adds the inverse scale and the
    minimum ``(iscale, m_b)`` [...] the codes were rounded with, ``l = nearest_int(iscale (x -
    m_b))`` clamped to ``[0, nmax]``."""
    x = np.asarray(x, dtype=_F32)
    w = x * x if weights is None else np.asarray(weights, dtype=_F32)
    with np.errstate(all="ignore"):
        lo = _first_extreme(x, "min")                                 # [...]
        hi = _first_extreme(x, "max")
        sum_w = sum_f32(w, first=True)                                # C starts from w[0]
        sum_x = sum_f32(w * x, first=True)                            # and w[0]*x[0]
        m_b = np.where(lo > 0, _F32(0), lo).astype(_F32)              # min <= 0
        m_flat = m_b
        flat = (hi == m_b) if version == 2 else (hi <= m_b)
        iscale = (_F32(nmax) / (hi - m_b)).astype(_F32)
        d = (_F32(1) / iscale).astype(_F32)
        L = _clip(nearest_int(iscale[..., None] * (x - m_b[..., None])), 0, nmax)
        best = _asym_error(d, m_b, L, x, w, use_mad)
        rule_is, rule_m = iscale, m_b                                 # of the codes L
        for k in range(nstep + 1 if nstep >= 1 else 0):
            # the candidate range uses the best minimum so far (it moves as the search goes)
            iscale = ((_F32(rmin) + _F32(rdelta) * _F32(k) + _F32(nmax)) / (hi - m_b)).astype(_F32)
            v = (iscale[..., None] * (x - m_b[..., None])).astype(_F32)
            if version == 2:
                La = _clip(nearest_int(v), 0, nmax)
            else:               # ggml guards v (inf/NaN once the minimum nears the maximum)
                La = np.where(v > 0, nearest_int(np.where(v < nmax, v, _F32(nmax))), 0)
            Lf = La.astype(_F32)
            sum_l = sum_f32(w * Lf)
            sum_l2 = sum_f32(w * Lf * Lf)
            sum_xl = sum_f32(w * Lf * x)
            D = (sum_w * sum_l2 - sum_l * sum_l).astype(_F32)
            this_d = ((sum_w * sum_xl - sum_x * sum_l) / D).astype(_F32)
            this_m = ((sum_l2 * sum_x - sum_l * sum_xl) / D).astype(_F32)
            pos = this_m > 0                                          # a minimum above 0: refit
            this_d = np.where(pos, sum_xl / sum_l2, this_d).astype(_F32)   # d alone, m_b = 0
            this_m = np.where(pos, _F32(0), this_m).astype(_F32)
            err = _asym_error(this_d, this_m, La, x, w, use_mad)
            better = (D > 0) & (err < best)
            L = np.where(better[..., None], La, L)
            rule_is = np.where(better, iscale, rule_is).astype(_F32)
            rule_m = np.where(better, m_b, rule_m).astype(_F32)       # the minimum v used
            best = np.where(better, err, best).astype(_F32)
            d = np.where(better, this_d, d).astype(_F32)
            m_b = np.where(better, this_m, m_b).astype(_F32)
        d = np.where(flat, _F32(0), d).astype(_F32)
        m_b = np.where(flat, m_flat, m_b).astype(_F32)
        L = np.where(flat[..., None], 0, L)
    rule = (rule_is, rule_m) if return_rule else ()
    return (d, (-m_b).astype(_F32), L.astype(np.uint8)) + rule


def make_qkx2_quants(x, weights, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool):
    """Asymmetric codes, scale and minimum of each block: ggml's ``make_qkx2_quants``
    (the reference quantizers of Q2_K, Q4_K, Q5_K).

    The block is approximated as ``x_i ~ d l_i + m_b`` with ``l_i`` in ``[0, nmax]`` and
    ``m_b <= 0``, minimizing the weighted error

    .. math:: E(d, m_b) = \\sum_i w_i\\, |d\\, l_i + m_b - x_i|^p, \\qquad p = 1
              \\text{ (use\\_mad) or } 2 .

    Start: ``m_b = min(0, min x)``, ``d = (max x - m_b) / nmax``. Candidates: ``nstep + 1``
    inverse scales ``(rmin + rdelta k + nmax) / (max x - m_b)``, ``k = 0..nstep`` (``m_b`` the
    best minimum so far); for each, the codes ``l = clamp(nearest_int(iscale (x - m_b)), 0,
    nmax)`` and then ``d, m_b`` by weighted least squares for those codes,

    .. math:: D = S_w S_{l^2} - S_l^2, \\quad d = (S_w S_{xl} - S_x S_l) / D, \\quad
              m_b = (S_{l^2} S_x - S_l S_{xl}) / D

    (``S`` the weighted sums), refit as ``d = S_{xl} / S_{l^2}``, ``m_b = 0`` where ``m_b``
    comes out positive; kept where ``D > 0`` and ``E`` is strictly smaller than the best.

    Parameters
    ----------
    x, weights : array_like of float32, shape ``[..., m]``
    nmax : int
    rmin, rdelta : float
        The candidate offsets (float32, as C's ``float`` parameters).
    nstep : int
        ``nstep < 1``: no search.
    use_mad : bool

    Returns
    -------
    d : numpy.ndarray of float32, shape ``[...]``
        0 where ``max x == min(0, min x)`` (a flat block).
    the_min : numpy.ndarray of float32, shape ``[...]``
        ``-m_b >= 0``.
    L : numpy.ndarray of uint8, shape ``[..., m]``
    """
    return _make_qkx(x, weights, nmax, rmin, rdelta, nstep, use_mad, version=2)


def make_qkx3_quants(x, weights, nmax: int, rmin: float, rdelta: float, nstep: int,
                     use_mad: bool, return_rule: bool = False):
    """:func:`make_qkx2_quants` as ggml's ``make_qkx3_quants`` (the importance-matrix
    quantizers of Q4_1, Q5_1, Q2_K, Q4_K, Q5_K): the same objective and candidates, with
    ``weights=None`` meaning ``w = x^2``, a flat block being ``max x <= m_b``, and each
    candidate's codes ``l = nearest_int(min(v, nmax))`` for ``v = iscale (x - m_b) > 0``, else
    0 (a guard against ``v`` being inf or NaN once the best minimum is near the maximum).
    ``return_rule=True`` adds ``(iscale, m_b)``, float32 ``[...]``: the candidate the codes
    were rounded with (GPTQ onto this grid rounds with it)."""
    return _make_qkx(x, weights, nmax, rmin, rdelta, nstep, use_mad, version=3,
                     return_rule=return_rule)


def make_qp_quants(x, nmax: int, quant_weights):
    """Unsigned codes and scale of each run of non-negative values: ggml's ``make_qp_quants``
    (the importance-matrix quantizers quantize the sub-block scales and minimums with it).

    Approximates ``x_i ~ d l_i``, ``l_i`` in ``[0, nmax]``, minimizing
    :math:`\\sum_i w_i (x_i - d\\, l_i)^2`. First the inverse scale: among ``(nmax + 0.1 k) /
    x_max``, ``k = -4..4`` (``x_max = max(0, max x)``), the one with the smallest error of
    ``l = min(nmax, nearest_int(iscale x))`` at ``d = 1 / iscale`` (strictly smaller than
    ``k = 0``'s to replace it). Then coordinate descent as in :func:`make_q3_quants` (up to 5
    passes; a code ``l_i`` moves to ``min(nmax, nearest_int(x_i S_l2 / S_lx))`` where that
    strictly increases :math:`(\\sum w x l)^2 / \\sum w l^2`), and ``d = S_lx / S_l2``.

    Parameters
    ----------
    x, quant_weights : array_like of float32, shape ``[..., m]``
    nmax : int

    Returns
    -------
    d : numpy.ndarray of float32, shape ``[...]``
        0 where ``x_max < GROUP_MAX_EPS``.
    L : numpy.ndarray of uint8, shape ``[..., m]``
        As C's ``uint8_t`` array holds them (a negative code, possible only for negative ``x``,
        wraps modulo 256 there and here).
    """
    x = np.asarray(x, dtype=_F32)
    w = np.asarray(quant_weights, dtype=_F32)
    with np.errstate(all="ignore"):
        xmax = np.maximum(np.max(x, axis=-1), _F32(0))                 # MAX(0, x_i) loop
        zero = xmax < GROUP_MAX_EPS
        iscale = (_F32(nmax) / xmax).astype(_F32)                      # [...]
        L0 = nearest_int(iscale[..., None] * x) & 0xFF                 # uint8 store, no clamp
        d0 = (_F32(1) / iscale).astype(_F32)
        best = sum_f32(_wsq(w, (x - d0[..., None] * L0.astype(_F32)).astype(_F32)))
        for k in range(-4, 5):
            if k == 0:
                continue
            iscale_k = ((_F32(0.1) * _F32(k) + _F32(nmax)) / xmax).astype(_F32)
            l = np.minimum(nmax, nearest_int(iscale_k[..., None] * x))
            dk = (_F32(1) / iscale_k).astype(_F32)
            mse = sum_f32(_wsq(w, (x - dk[..., None] * l.astype(_F32)).astype(_F32)))
            better = mse < best
            best = np.where(better, mse, best).astype(_F32)
            iscale = np.where(better, iscale_k, iscale).astype(_F32)
        l = np.minimum(nmax, nearest_int(iscale[..., None] * x))        # int, summed as int
        lf = l.astype(_F32)
        sumlx = sum_f32(w * x * lf)
        suml2 = sum_f32(w * lf * lf)
        L = l & 0xFF                                                    # stored as uint8
        for _ in range(5):
            for i in range(x.shape[-1]):
                wi, xi, li = w[..., i], x[..., i], L[..., i].astype(_F32)
                slx = (sumlx - wi * xi * li).astype(_F32)
                sl2 = (suml2 - wi * li * li).astype(_F32)
                new = np.minimum(nmax, nearest_int(xi * sl2 / slx))
                nf = new.astype(_F32)
                slx_n = (slx + wi * xi * nf).astype(_F32)
                sl2_n = (sl2 + wi * nf * nf).astype(_F32)
                take = ((slx > 0) & (sl2 > 0) & (new != L[..., i])
                        & (slx_n * slx_n * suml2 > sumlx * sumlx * sl2_n))
                L[..., i] = np.where(take, new & 0xFF, L[..., i])
                sumlx = np.where(take, slx_n, sumlx).astype(_F32)
                suml2 = np.where(take, sl2_n, suml2).astype(_F32)
        d = np.where(suml2 > 0, sumlx / suml2, _F32(0)).astype(_F32)
        d = np.where(zero, _F32(0), d).astype(_F32)
        L = np.where(zero[..., None], 0, L)
    return d, L.astype(np.uint8)


def _wsq(w, diff):
    """``(w*diff)*diff`` in float32, C's ``w*diff*diff``."""
    return (w * diff).astype(_F32) * diff


__all__ = ["GROUP_MAX_EPS", "nearest_int", "sum_f32", "make_qx_quants", "make_q3_quants",
           "make_qkx2_quants", "make_qkx3_quants", "make_qp_quants"]
