"""Stress and tie tensors: plain NumPy generators of inputs that break quantizers.

The Hypothesis strategies of :mod:`refquant.testing.strategies` draw their arguments; the
generators themselves need only NumPy, so a test can call them with a fixed seed.

Symbols
-------
===  ======================================================================================
x    float32 tensor of ``shape``; weights follow the (out_features, in_features) convention
b    bit width of the spec; ``q_min``, ``q_max`` its code range
s    scale of one parameter group, ``s = m 2^e`` with an integer mantissa ``m``
z    integer zero point of one parameter group (0 for symmetric specs)
k    integer code offset: a tie sits at ``x = (k + 1/2) s``, between codes ``k + z`` and
     ``k + 1 + z``
===  ======================================================================================
"""

from __future__ import annotations

import numpy as np

from refquant.schemes.spec import QuantSpec, expand, param_shape

STRESS_KINDS = ("normal", "heavy_tail", "outlier_channels", "constant_rows", "zeros",
                "subnormal", "clip_edges", "signed_zeros")


def stress_tensor(kind: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A float32 tensor of ``shape`` that stresses quantizers in the named way.

    Parameters
    ----------
    kind : str
        One of :data:`STRESS_KINDS`:
        ``normal`` (N(0, 1)), ``heavy_tail`` (Student t with 1..3 degrees of freedom),
        ``outlier_channels`` (a few input columns scaled by 100), ``constant_rows`` (every row
        one value, some rows 0), ``zeros``, ``subnormal`` (float32 subnormals mixed with tiny
        normals and zeros), ``clip_edges`` (about a quarter of each row equal to the row's
        minimum or maximum, so the extreme codes and the range ends are hit),
        ``signed_zeros`` (``+0.0``/``-0.0`` mixed with a few normal values).
    shape : tuple of int
    seed : int

    Returns
    -------
    numpy.ndarray of float32, finite.

    Examples
    --------
    >>> x = stress_tensor("constant_rows", (3, 5), seed=1)
    >>> x.dtype, bool((x == x[:, :1]).all())
    (dtype('float32'), True)
    """
    if kind not in STRESS_KINDS:
        raise ValueError(f"unknown stress kind {kind!r}; choose from {STRESS_KINDS}")
    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "heavy_tail":
        x = rng.standard_t(df=int(rng.integers(1, 4)), size=shape)
        x = np.clip(x, -1e6, 1e6)
    elif kind == "outlier_channels":
        x = rng.standard_normal(shape)
        if x.ndim:
            cols = rng.choice(shape[-1], size=max(1, shape[-1] // 16), replace=False)
            x[..., cols] *= 100.0
    elif kind == "constant_rows":
        rows = rng.standard_normal(shape[:-1] + (1,) if shape else ())
        rows = np.where(rng.random(rows.shape) < 0.3, 0.0, rows)
        x = np.broadcast_to(rows, shape).copy()
    elif kind == "zeros":
        x = np.zeros(shape)
    elif kind == "subnormal":
        tiny = np.finfo(np.float32).tiny
        x = rng.uniform(-4, 4, shape) * tiny * rng.choice([1e-6, 1e-3, 0.5, 1.0, 4.0], shape)
        x = np.where(rng.random(shape) < 0.1, 0.0, x)
    elif kind == "clip_edges":
        x = rng.standard_normal(shape)
        if x.ndim:
            lo = x.min(axis=-1, keepdims=True)
            hi = x.max(axis=-1, keepdims=True)
            r = rng.random(shape)
            x = np.where(r < 0.125, lo, np.where(r < 0.25, hi, x))
    else:  # signed_zeros
        x = np.where(rng.random(shape) < 0.5, -0.0, 0.0)
        x = np.where(rng.random(shape) < 0.05, rng.standard_normal(shape), x)
    return np.asarray(x, dtype=np.float32)


def group_ids(shape: tuple[int, ...], spec: QuantSpec) -> np.ndarray:
    """For every element of an array of ``shape``: the flat index of its parameter group.

    >>> from refquant.schemes.spec import QuantSpec
    >>> group_ids((2, 5), QuantSpec(granularity="group", group_size=2))
    array([[0, 0, 1, 1, 2],
           [3, 3, 4, 4, 5]])
    """
    pshape = param_shape(shape, spec)
    ids = np.arange(int(np.prod(pshape, dtype=np.int64)), dtype=np.int64).reshape(pshape)
    return np.broadcast_to(expand(ids, shape, spec), shape)


def tie_tensor(spec: QuantSpec, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A float32 tensor whose values sit exactly on rounding ties under min-max calibration.

    Every parameter group gets a scale ``s = m 2^e`` (``e`` in [-10, 2]) whose integer
    mantissa ``m`` has ``21 - b`` significant bits (half of the groups a power of two, the others
    an odd ``m``, so that ``1/s`` is inexact: an implementation that multiplies by a float32
    reciprocal lands beside the tie). Its first element (and, asymmetric, its second) pins the
    group's min-max range so that ``refquant.calibrate(x, spec, "minmax")`` returns exactly
    ``s`` (and an integer zero point ``z``): symmetric ``max|x| = q_max s``; asymmetric
    ``[lo, hi] = [-z s, (2^b - 1 - z) s]``. Every other element is ``(k + 1/2) s`` for an integer
    ``k`` inside the range, a tie between codes ``k`` and ``k + 1``, exactly representable in
    float32. Half-to-even and half-away rounding disagree on each of them, and an implementation
    that computes ``x * (1/s)`` or rounds in float32 may land on either side.

    Examples
    --------
    >>> from refquant.schemes.spec import QuantSpec
    >>> x = tie_tensor(QuantSpec(bits=4), (1, 6), seed=0).astype(float)
    >>> s = abs(x).max() / 7                              # symmetric int4: max|x| = 7 s
    >>> bool(((x[abs(x) != 7 * s] / s) % 1 == 0.5).all())
    True
    """
    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng(seed)
    gid = group_ids(shape, spec).ravel()                            # [N]
    n_par = int(gid.max()) + 1 if gid.size else 0
    # s = m 2^e with an integer m of p = 21 - bits significant bits (a power of two for half
    # the groups): (k + 1/2) s then needs at most 23 bits, exact in float32
    p = max(1, 21 - spec.bits)
    m = rng.integers(2 ** (p - 1), 2**p, n_par) | 1
    m = np.where(rng.random(n_par) < 0.5, 2 ** (p - 1), m)
    e = rng.integers(-10, 3, n_par)
    s = np.ldexp(m.astype(np.float64), e - (p - 1))                 # [P] scales in [2^e, 2^(e+1))
    order = np.argsort(gid, kind="stable")
    counts = np.bincount(gid, minlength=n_par)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty_like(gid)
    rank[order] = np.arange(gid.size) - starts[gid[order]]         # position inside the group
    n_levels = spec.qmax - spec.qmin                                # 2^b - 1 (or 2^b - 2)
    if spec.symmetric:
        k_lo, k_hi = -spec.qmax, spec.qmax - 1                      # ties in [-qmax+.5, qmax-.5]
        k = rng.integers(k_lo, k_hi + 1, gid.size)
        x = (k + 0.5) * s[gid]
        sign = rng.choice([-1.0, 1.0], n_par)
        x = np.where(rank == 0, sign[gid] * spec.qmax * s[gid], x)
    else:
        single = counts < 2
        z = np.where(single, 0, rng.integers(0, n_levels + 1, n_par))
        u = rng.random(gid.size)
        k = -z[gid] + np.floor(u * n_levels).astype(np.int64)       # ties between lo and hi
        x = (k + 0.5) * s[gid]
        x = np.where(rank == 0, -z[gid] * s[gid], x)
        x = np.where(rank == 1, (n_levels - z[gid]) * s[gid], x)
        x = np.where(single[gid], n_levels * s[gid], x)
    return x.reshape(shape).astype(np.float32)
