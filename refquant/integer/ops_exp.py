"""Integer exponential and softmax: I-BERT's i-exp (shift plus second-order polynomial) [1]_.

i-exp
-----
For ``x <= 0`` given as integer codes ``q`` of scale ``S = 2^-F``, write
``x = -z ln 2 + r`` with ``z = floor(-x / ln 2)`` and ``r in (-ln 2, 0]``; then
``exp(x) = 2^-z exp(r)`` and on ``(-ln 2, 0]`` [1]_ (eq. 4-6, Algorithm 1)

.. math:: \\exp(r) \\approx L(r) = a (r + b)^2 + c, \\quad a = 0.3585,\\; b = 1.353,\\; c = 0.344,

evaluated on integers: ``q_ln2 = floor(ln2 / S)``, ``z = floor(-q / q_ln2)``,
``q_r = q + z q_ln2``, ``q_L = (q_r + q_b)^2 + q_c`` with ``q_b = floor(b / S)``,
``q_c = floor(c / (a S^2))``; the result is ``q_L >> z`` of scale ``a S^2``. The constants are
integer literals in Q40 (``round(ln2 2^40)`` ...), so nothing but integers is touched at run time.

Why I-BERT's polynomial and not I-LLM's DI-Exp [2]_: DI-Exp replaces ``log2 e`` by shifts and
``2^frac`` by the line ``1 + frac/2`` (worst relative error ~6% on ``[0, 1)``); the second-order
fit costs one more multiply and is within ``2e-3`` (absolute, on ``exp(r) in (1/2, 1]``) of the
exponential, which is below the 8-bit probability LSB ``1/255`` that follows.

Error bound (``F >= 8``): the polynomial's own error on ``(-ln 2, 0]`` (``<= 1.96e-3``
absolute; tested over the whole range) plus the floors of ``q_ln2, q_b, q_c`` (``<= 4 2^-F``
relative) and of the final shift (1 LSB of ``a S^2``); the test reports the worst error in output
LSBs and relative to ``exp(x)``.

Softmax
-------
``p = round(255 e / sum e)`` per row (uint8 codes of scale ``1/255``) from ``e = i_exp(z - max z)``
with masked entries set to 0 before the sum; the division is one fixed-point reciprocal per row.

Symbols
-------
=====  ================  ===============================================================
q, z   int [..., S]      scores, codes of scale ``2^-F``
F      int               fractional bits of the input (``8 <= F <= 20``)
e      int64 [..., S]    ``i_exp`` values, scale ``a 2^-2F``
p      uint8 [..., S]    probabilities, scale ``1/255``
=====  ================  ===============================================================

References
----------
.. [1] S. Kim, A. Gholami, Z. Yao, M. W. Mahoney, K. Keutzer, "I-BERT: Integer-only BERT
       Quantization", ICML 2021, arXiv:2101.01321.
.. [2] X. Hu et al., "I-LLM: Efficient Integer-Only Inference for Fully-Quantized Low-Bit Large
       Language Models", 2024, arXiv:2405.17849.
"""

from __future__ import annotations

import numpy as np

from refquant.integer.requant import int_array, use_numba

A, B, C = 0.3585, 1.353, 0.344          # I-BERT's coefficients (for the docs and the tests)
LN2_Q40 = 762123384786                  # round(ln 2 * 2^40)
B_Q40 = 1487639232381                   # round(b * 2^40)
C_OVER_A_Q40 = 1055040446178            # round(c / a * 2^40)
INV_A_Q40 = 3066978041216               # round(2^40 / a): 1.0 in units of a 2^-2F is this >> (40-2F)
F_MIN, F_MAX = 8, 20
P_MAX = 255                             # probabilities as uint8 codes of scale 1/255
RECIP_BITS = 54                         # 255 2^54 < 2^62


def check_frac_bits(F) -> int:
    """``F`` as an int after checking ``8 <= F <= 20`` (``ValueError`` naming it)."""
    if isinstance(F, bool) or not isinstance(F, (int, np.integer)) or not F_MIN <= F <= F_MAX:
        raise ValueError(f"frac_bits must be an integer in [{F_MIN}, {F_MAX}], got {F!r}")
    return int(F)


def exp_one(F: int) -> int:
    """The integer that stands for 1.0 in the output scale ``a 2^-2F`` of :func:`i_exp`."""
    return INV_A_Q40 >> (40 - 2 * check_frac_bits(F))


def i_exp(q, F: int) -> np.ndarray:
    """I-BERT's integer exponential of ``x = q 2^-F <= 0``: int64 codes of scale ``a 2^-2F``.

    See the module docstring for the derivation and the error bound. Positive inputs raise
    ``ValueError``; very negative ones give 0 (the shift is capped at 62).

    >>> e = i_exp(np.array([0, -2**16, -10 * 2**16]), 16)           # exp(0), exp(-1), exp(-10)
    >>> (e / exp_one(16)).round(4).tolist()
    [1.0003, 0.3682, 0.0]
    """
    F = check_frac_bits(F)
    q = int_array(q, "q", 2**62)
    if np.any(q > 0):
        raise ValueError(f"i_exp needs inputs <= 0, got {int(q[q > 0].ravel()[0])}")
    q_ln2 = LN2_Q40 >> (40 - F)                         # floor(ln2 / S)
    q_b = B_Q40 >> (40 - F)                             # floor(b / S)
    q_c = C_OVER_A_Q40 >> (40 - 2 * F)                  # floor(c / (a S^2))
    z = (-q) // q_ln2                                   # [...] >= 0
    q_r = q + z * q_ln2                                 # in (-q_ln2, 0]
    q_L = (q_r + q_b) ** 2 + q_c                        # < 2^(2F+2)
    return q_L >> np.minimum(z, 62)


def causal_mask(T: int, S: int, start_pos: int) -> np.ndarray:
    """``[T, S]`` bool, True where query ``start_pos + t`` may see key ``s`` (``s <= start_pos + t``).

    >>> causal_mask(2, 3, 1).astype(int).tolist()
    [[1, 1, 0], [1, 1, 1]]
    """
    if not 0 <= start_pos or start_pos + T != S:
        raise ValueError(f"causal mask needs S = start_pos + T, got T={T}, S={S}, "
                         f"start_pos={start_pos}")
    return np.arange(S)[None, :] <= np.arange(start_pos, S)[:, None]


def seq_len_bound(F: int) -> int:
    """The longest row :func:`i_softmax` accepts: ``S e_max < 2^62`` with
    ``e_max = q_b^2 + q_c < 2.8 2^2F``."""
    F = check_frac_bits(F)
    e_max = (B_Q40 >> (40 - F)) ** 2 + (C_OVER_A_Q40 >> (40 - 2 * F))
    return (2**62) // e_max


def i_softmax(z, F: int, valid=None, *, backend: str = "numpy") -> np.ndarray:
    """Integer softmax over the last axis: uint8 probabilities ``p`` of scale ``1/255``.

    .. math:: p_{ts} = \\operatorname{round}\\Big(255\\, \\frac{e_{ts}}{\\sum_{s'} e_{ts'}}\\Big),
              \\quad e_{ts} = \\operatorname{i\\_exp}(z_{ts} - \\max_{s' \\in \\text{valid}} z_{ts'})
              \\,[\\text{valid}_{ts}]

    (the maximum subtraction makes every exponent <= 0 and the largest one 1). The sum of
    ``S`` values is exact in int64 when ``S <= seq_len_bound(F)`` (about ``2^28.5`` at
    ``F = 16``); longer rows raise ``ValueError`` with the bound. The reciprocal
    ``R = round(255 2^54 / sum)`` is one integer division per row.

    Error bound: ``|p - 255 softmax| <= 1/2 + 2^-8 + 255 (2 eps) p (1 - p)`` codes, ``eps <= 3.2e-3``
    the relative error of :func:`i_exp` (a common factor cancels in the normalization; only the
    spread of the errors moves ``p``): at most ``1.33`` codes, ``0.63`` measured (tested).

    Parameters
    ----------
    z : integer [..., S], scores of scale ``2^-F``
    F : int
    valid : bool [..., S] broadcastable (e.g. :func:`causal_mask`), or None for all
    backend : "numpy" (the specification) or "numba"/"auto": the Numba kernel
        (:mod:`refquant.integer._numba_ops`, equal bit for bit) where ``valid`` is a prefix of
        every row (the causal mask), else NumPy

    >>> i_softmax(np.array([[0, 0, 2**16, -2**20]]), 16).tolist()
    [[54, 54, 147, 0]]
    """
    F = check_frac_bits(F)
    z = int_array(z, "z", 2**40)
    S = z.shape[-1]
    if S > seq_len_bound(F):
        raise ValueError(f"softmax over {S} positions overflows the int64 sum at F={F}: "
                         f"at most {seq_len_bound(F)}")
    if valid is None:
        valid = np.ones(z.shape, bool)
    valid = np.broadcast_to(np.asarray(valid, bool), z.shape)
    if use_numba(backend):
        n_valid = valid.sum(axis=-1).reshape(-1)
        prefix = np.arange(S)[None, :] < n_valid[:, None]
        if np.all(n_valid >= 1) and np.array_equal(prefix, valid.reshape(-1, S)):
            from refquant.integer import _numba_ops
            p = _numba_ops.softmax_rows(np.ascontiguousarray(z.reshape(-1, S)), n_valid,
                                        LN2_Q40 >> (40 - F), B_Q40 >> (40 - F),
                                        C_OVER_A_Q40 >> (40 - 2 * F), P_MAX, RECIP_BITS)
            return p.reshape(z.shape)
    lowest = np.int64(-(2**40))
    m = np.where(valid, z, lowest).max(axis=-1, keepdims=True)        # [..., 1]
    e = np.where(valid, i_exp(np.where(valid, z - m, 0), F), 0)      # [..., S] int64
    total = np.maximum(e.sum(axis=-1, keepdims=True), 1)             # [..., 1]
    R = ((np.int64(P_MAX) << RECIP_BITS) + (total >> 1)) // total
    p = (e * R + (np.int64(1) << (RECIP_BITS - 1))) >> RECIP_BITS
    return np.clip(p, 0, P_MAX).astype(np.uint8)


__all__ = ["A", "B", "C", "F_MIN", "F_MAX", "P_MAX", "exp_one", "i_exp", "causal_mask",
           "seq_len_bound", "i_softmax"]
