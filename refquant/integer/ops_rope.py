"""Rotary position embeddings in integer arithmetic: fixed-point cos/sin tables and an integer
rotation (RoFormer, Su et al., arXiv:2104.09864, in the Hugging Face "rotate half" layout).

The tables are the one float step: ``c = round(cos(phi) 2^30)``, ``s = round(sin(phi) 2^30)``
computed once (offline) from the float64 angles :math:`\\phi_{t,j} = t\\,\\theta^{-2j/h_d}` of
:func:`refquant.models.llama.rope_tables`. At run time, for codes ``x`` of any scale ``S``
(the rotation keeps the scale),

.. math::

    y_j = \\big\\lfloor (x_j c_j - x_{j+h_d/2} s_j + 2^{29}) / 2^{30} \\big\\rfloor, \\qquad
    y_{j+h_d/2} = \\big\\lfloor (x_{j+h_d/2} c_j + x_j s_j + 2^{29}) / 2^{30} \\big\\rfloor .

Bounds: ``|x| < 2^31`` and ``|c|, |s| <= 2^30`` give ``|x c| + |x s| < 2^62`` (int64 exact);
a rotated pair can grow by ``sqrt 2`` per component, so outputs saturate at the int32 range
(none does for ``|x| < 2^30``). Error: the table's rounding (``2^-31`` each) and the final one
give at most ``1/2 + |x| 2^-30`` LSBs of ``S`` against the exact rotation by the table's own
angles (tested for ``|x| < 2^30`` and random angles).

Symbols
-------
======  ====================  ==================================================
x       int32 [..., T, h_d]   codes of one head (any static scale)
c, s    int32 [T, h_d/2]      the Q30 tables of the positions of ``x``
======  ====================  ==================================================
"""

from __future__ import annotations

import numpy as np

from refquant.integer.requant import int_array

ROPE_BITS = 30


def rope_table_fixed(cos, sin) -> tuple[np.ndarray, np.ndarray]:
    """Offline: ``round(cos 2^30)``, ``round(sin 2^30)`` as int32 (half to even), from float
    tables in ``[-1, 1]``; else ``ValueError``.

    >>> [t.tolist() for t in rope_table_fixed(np.array([[1.0, 0.5]]), np.array([[0.0, -1.0]]))]
    [[[1073741824, 536870912]], [[0, -1073741824]]]
    """
    out = []
    for name, t in (("cos", cos), ("sin", sin)):
        t = np.asarray(t, np.float64)
        if not np.all(np.isfinite(t) & (np.abs(t) <= 1)):
            raise ValueError(f"{name} table must be finite and in [-1, 1]")
        out.append(np.rint(t * 2.0**ROPE_BITS).astype(np.int32))
    return out[0], out[1]


def i_rope(x, c, s) -> np.ndarray:
    """Integer rotary embedding of ``x [..., T, h_d]`` (int32) with Q30 tables ``c, s [T, h_d/2]``.

    >>> c, s = rope_table_fixed(np.array([[0.0]]), np.array([[1.0]]))     # a quarter turn
    >>> i_rope(np.array([[1000, 7]], np.int32), c, s).tolist()
    [[-7, 1000]]
    """
    x = np.asarray(x)
    if x.dtype != np.int32:
        raise ValueError(f"x must be int32, got dtype {x.dtype}")
    c = int_array(c, "c", 2**30 + 1)
    s = int_array(s, "s", 2**30 + 1)
    half = x.shape[-1] // 2
    if x.shape[-1] % 2 or c.shape != (x.shape[-2], half) or s.shape != c.shape:
        raise ValueError(f"tables of shape {c.shape}/{s.shape} do not match x {x.shape}")
    x1 = x[..., :half].astype(np.int64)
    x2 = x[..., half:].astype(np.int64)
    rnd = np.int64(1) << (ROPE_BITS - 1)
    y1 = (x1 * c - x2 * s + rnd) >> ROPE_BITS
    y2 = (x2 * c + x1 * s + rnd) >> ROPE_BITS
    y = np.concatenate([y1, y2], axis=-1)
    return np.clip(y, -(2**31), 2**31 - 1).astype(np.int32)


__all__ = ["ROPE_BITS", "rope_table_fixed", "i_rope"]
