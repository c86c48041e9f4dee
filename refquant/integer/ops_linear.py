"""Integer linear layers on per-token int8 activations, the int8 embedding table and the LM head.

A per-token int8 activation is a pair ``(q, u)``: codes ``q [T, K]`` int8 and an integer row
factor ``u [T]`` whose real scale is ``beta u_t`` for a static base ``beta``
(:mod:`refquant.integer.requant`; a static per-tensor activation is ``u = 1``). With per-output-
channel int8 weights ``q_w [N, K]`` of scales ``s_w [N]`` (Jacob et al. [1]_, eq. 4),

.. math::

    y_{tn} = \\beta u_t s_{w,n} \\sum_k q_{tk} q_{w,nk}, \\qquad
    \\hat y_{tn} = \\operatorname{round}\\big(acc_{tn}\\, u_t\\, M_n\\big), \\quad
    M_n = \\beta s_{w,n} / S_y ,

int32 codes of the output's static scale ``S_y`` (:func:`refquant.integer.requant.rescale_rows`;
``acc`` exact in int32 from :func:`refquant.int8_matmul` for ``K <= 131071``).

W4 (group-wise 4-bit weights, e.g. GPTQ's, ``W_nk = s_{n,g} (c_nk - z_{n,g})``) runs through the
same int8 kernel one group at a time: ``c - z`` lies in ``[-15, 15]`` (an int8), and the group
scales relative to the channel's largest, ``sigma_{n,g} = round(2^15 s_{n,g} / s_n)`` (offline),
combine the group sums in integers: ``acc_n = round(2^-15 sum_g sigma_{n,g} acc_{n,g})``, the
accumulator of scale ``s_n = max_g s_{n,g}``. Error: ``2^-16`` relative per group scale, plus
1/2 accumulator LSB.

The embedding table is int8 with one scale per row (``s_e,v = max|E_v| / 127``); a lookup is
brought to the residual's scale ``S_x`` by the per-row multiplier ``s_e,v / S_x``. With tied
embeddings the same int8 table is the LM head's weight: logits are int32 codes of one static
scale ``S_logit``.

References
----------
.. [1] B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
       Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877.
"""

from __future__ import annotations

import numpy as np

from refquant.integer.fixed_point import multiply_by_quantized_multiplier
from refquant.integer.requant import int_array, rescale_rows
from refquant.kernels import int8_matmul

SIGMA_BITS = 15


def linear_rows(q, u, q_wT, M0, n, *, backend: str = "auto") -> np.ndarray:
    """``round((q q_w^T) u M)``: int8 ``q [T, K]`` with row factors ``u [T]`` times int8 weights
    ``q_wT [K, N]`` (the transposed codes), to int32 ``[T, N]`` of the output scale.

    >>> from refquant.integer.fixed_point import quantize_multiplier
    >>> q_wT = np.array([[1, 0], [0, 2]], np.int8)
    >>> linear_rows(np.array([[3, 4]], np.int8), np.array([2]), q_wT, *quantize_multiplier(0.25))
    array([[2, 4]], dtype=int32)
    """
    acc = int8_matmul(q, q_wT, backend=backend)                         # [T, N] int32
    return rescale_rows(acc, u, M0, n, backend=backend)


def w4_linear_rows(q, u, c_minus_zT, sigma, group_size: int, M0, n, *,
                   backend: str = "auto") -> np.ndarray:
    """W4 linear of per-token int8 ``q [T, K]`` (row factors ``u``): ``c_minus_zT [K, N]`` int8
    codes minus zero points (in ``[-15, 15]``), ``sigma [G, N]`` the Q15 group-scale ratios
    (``0 < sigma <= 2^15``), ``M_n = beta s_n / S_y``. Returns int32 ``[T, N]``.

    >>> from refquant.integer.fixed_point import quantize_multiplier
    >>> cT = np.array([[1], [1]], np.int8); sigma = np.array([[2**15], [2**14]])   # s = (1, 1/2)
    >>> w4_linear_rows(np.array([[4, 4]], np.int8), np.array([1]), cT, sigma, 1,
    ...                *quantize_multiplier(0.5)).tolist()                 # (4 + 2) / 2
    [[3]]
    """
    q = np.asarray(q)
    K = q.shape[-1]
    sigma = int_array(sigma, "sigma", 2**SIGMA_BITS + 1)
    G = -(-K // group_size)
    if sigma.shape != (G, np.shape(c_minus_zT)[1]) or np.any(sigma <= 0):
        raise ValueError(f"sigma must be positive of shape ({G}, N), got {sigma.shape}")
    total = np.zeros((q.shape[0], sigma.shape[1]), np.int64)              # [T, N]
    for g in range(G):
        a, b = g * group_size, min((g + 1) * group_size, K)
        acc_g = int8_matmul(np.ascontiguousarray(q[:, a:b]),
                            np.ascontiguousarray(c_minus_zT[a:b]), backend=backend)
        total += acc_g.astype(np.int64) * sigma[g]                        # < 2^(15+14+4) each
    acc = (total + (np.int64(1) << (SIGMA_BITS - 1))) >> SIGMA_BITS       # scale s_n
    return rescale_rows(acc, u, M0, n, backend=backend)


def embed_int8(E_q, M0_e, n_e, tokens) -> np.ndarray:
    """Rows ``tokens`` of the int8 table ``E_q [V, d]`` as int32 codes of the residual scale:
    ``round(E_q[v] s_e,v / S_x)`` with per-row multipliers ``(M0_e, n_e) [V]``.

    >>> from refquant.integer.fixed_point import quantize_multiplier
    >>> M0, n = quantize_multiplier(np.array([2.0, 0.5]))
    >>> embed_int8(np.array([[1, -3], [5, 7]], np.int8), M0, n, np.array([[1, 0]])).tolist()
    [[[3, 4], [2, -6]]]
    """
    tokens = int_array(tokens, "tokens")
    E_q = np.asarray(E_q)
    if E_q.dtype != np.int8:
        raise ValueError(f"E_q must be int8, got dtype {E_q.dtype}")
    rows = E_q[tokens].astype(np.int32)                                   # [B, T, d]
    y = multiply_by_quantized_multiplier(rows, np.asarray(M0_e)[tokens][..., None],
                                         np.asarray(n_e)[tokens][..., None])
    return y.astype(np.int32)


__all__ = ["SIGMA_BITS", "linear_rows", "w4_linear_rows", "embed_int8"]
