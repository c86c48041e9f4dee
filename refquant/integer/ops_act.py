"""Integer SiLU and SwiGLU through the integer exponential (I-BERT's i-exp [1]_; the sigmoid
route of I-LLM's DI-SwiGLU [2]_).

.. math::

    \\sigma(g) = \\frac{1}{1 + e^{-|g|}} \\;(g \\ge 0), \\qquad
    \\sigma(g) = \\frac{e^{-|g|}}{1 + e^{-|g|}} \\;(g < 0), \\qquad
    \\operatorname{SiLU}(g) = g\\, \\sigma(g)

Only ``exp(-|g|) in (0, 1]`` is needed, so the exponent never exceeds 0. With ``e = i_exp(-|g|)``
(scale ``a 2^-2F``) and ``one`` the code of 1.0 in that scale, the sigmoid in Q20 is
``sig = round(2^20 num / (one + e))`` (one integer division per element, ``num = one`` or ``e``)
and ``SiLU = round(g sig / 2^20)`` keeps the scale ``2^-F`` of ``g``. SwiGLU multiplies by the
up projection ``v`` (scale ``2^-F_v``) and drops ``F`` bits: ``h = round(SiLU(g) v / 2^F)`` of
scale ``2^-F_v``.

Error bound: ``|sig - 2^20 sigma| <= 1/2 + 2^20 eps_e / 4`` (``eps_e`` the absolute error of
``e / one``, ``<= 2e-3``: ``d sigma / d e <= 1/4 ... 1``), so ``|SiLU - silu| <= 1/2 + |g| eps_e``
LSBs; the test reports the worst error in LSBs of ``2^-F`` over ``g in [-32, 32]``.
Bounds: ``|g| < 2^31``, ``|v| < 2^31``; ``|SiLU(g) v| < 2^62``.

References
----------
.. [1] S. Kim et al., "I-BERT: Integer-only BERT Quantization", ICML 2021, arXiv:2101.01321.
.. [2] X. Hu et al., "I-LLM: Efficient Integer-Only Inference for Fully-Quantized Low-Bit Large
       Language Models", 2024, arXiv:2405.17849.
"""

from __future__ import annotations

import numpy as np

from refquant.integer.ops_exp import check_frac_bits, exp_one, i_exp
from refquant.integer.requant import int_array

SIG_BITS = 20


def i_sigmoid(g, F: int) -> np.ndarray:
    """Integer sigmoid of ``g 2^-F`` in Q20 (int64 in ``[0, 2^20]``).

    >>> (i_sigmoid(np.array([0, 2**16, -2**16]), 16) / 2**20).round(3).tolist()
    [0.5, 0.731, 0.269]
    """
    F = check_frac_bits(F)
    g = int_array(g, "g", 2**31)
    one = exp_one(F)
    e = i_exp(-np.abs(g), F)                                    # (0, one]
    num = np.where(g >= 0, one, e)
    den = one + e
    return ((num << SIG_BITS) + (den >> 1)) // den


def i_silu(g, F: int) -> np.ndarray:
    """Integer SiLU: ``round(g sigma(g))`` in the scale ``2^-F`` of ``g`` (int64).

    >>> i_silu(np.array([2**16, -2**16, 0]), 16).tolist()       # silu(1) = 0.7311, silu(-1)
    [47900, -17636, 0]
    """
    g = int_array(g, "g", 2**31)
    sig = i_sigmoid(g, F)
    return (g * sig + (np.int64(1) << (SIG_BITS - 1))) >> SIG_BITS


def i_swiglu(g, v, F: int) -> np.ndarray:
    """Integer SwiGLU ``h = round(SiLU(g) v / 2^F)``: scale ``2^-F_v`` when ``g`` has ``2^-F`` and
    ``v`` has ``2^-F_v``. ``g``, ``v`` integer of one shape, ``|g|, |v| < 2^31``; int64 out.

    >>> i_swiglu(np.array([2**16]), np.array([3 * 2**16]), 16).tolist()   # 3 silu(1)
    [143700]
    """
    v = int_array(v, "v", 2**31)
    s = i_silu(g, F)
    if s.shape != v.shape:
        raise ValueError(f"g and v must have one shape, got {s.shape} and {v.shape}")
    return (s * v + (np.int64(1) << (F - 1))) >> F


__all__ = ["SIG_BITS", "i_sigmoid", "i_silu", "i_swiglu"]
