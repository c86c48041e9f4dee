"""Assertions for other implementations' quantized outputs, with numpy.testing-style reports.

:func:`assert_quantized_close` compares codes (or dequantized values) with refquant's and
tolerates only a stated number of off-by-one codes at *verified* rounding ties;
:func:`assert_ggml_equal` compares GGUF block bytes and reports the worst block.

Symbols
-------
====  =======================================================================================
x     the float input both implementations quantized, any shape
s, z  scale and integer zero point of each element's parameter group (``expand``-ed to ``x``)
q     integer code; a dequantized value ``v`` maps back to ``q = round(v / s) + z``
k     lower code of a disagreement with the offset removed: ``k = min(q_a, q_e) - z``
====  =======================================================================================

A disagreement is a *tie* when ``x = (k + 1/2) s`` exactly (in float64, exact for float32
``x`` and ``s``), or within ``tie_tol |k + 1/2|`` of it when a tolerance is stated.
"""

from __future__ import annotations

import numpy as np

from refquant.schemes.numerics import round_to_int
from refquant.schemes.spec import QParams, QuantSpec, expand
from refquant.testing.tensors import group_ids


def _fmt_index(idx) -> str:
    return "(" + ", ".join(str(int(i)) for i in idx) + ")"


def _check_args(actual, expected, spec, qparams, x, max_tie_mismatches, tie_tol):
    """Validate the arguments; return ``(a, e, values)`` (``values``: dequantized floats)."""
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        raise ValueError(f"actual shape {a.shape} != expected shape {e.shape}")
    if isinstance(max_tie_mismatches, bool) or int(max_tie_mismatches) < 0:
        raise ValueError(f"max_tie_mismatches must be a non-negative integer, got {max_tie_mismatches!r}")
    if not tie_tol >= 0:
        raise ValueError(f"tie_tol must be >= 0, got {tie_tol!r}")
    values = a.dtype.kind == "f" or e.dtype.kind == "f"
    if values and (a.dtype.kind not in "f" or e.dtype.kind not in "f"):
        raise ValueError(f"actual ({a.dtype}) and expected ({e.dtype}) must both be codes "
                         "(integer) or both be dequantized values (float)")
    if (values or max_tie_mismatches > 0) and qparams is None:
        raise ValueError("qparams is required to compare dequantized values or verify ties")
    if max_tie_mismatches > 0 and x is None:
        raise ValueError("x (the float input) is required to verify rounding ties")
    return a, e, values


def _to_codes(v, s, z, grid_rtol):
    """Codes ``round(v / s) + z`` of dequantized values and where ``v`` is off the grid: further
    from ``s (q - z)`` than ``grid_rtol s`` plus one float32 ulp of the value (values are
    typically stored in float32, which rounds ``s (q - z)`` by up to half an ulp)."""
    v = v.astype(np.float64)
    q = round_to_int(v / s, "half_even") + z
    g = s * (q - z)                                                 # the grid point, float64
    return q.astype(np.int64), np.abs(v - g) > grid_rtol * s + np.abs(g) * 2.0**-23


def _report(a, e, spec, values, xf, s, z, diff, mism, tie, off_grid, max_tie_mismatches,
            err_msg, context) -> str:
    """The failure message: counts, the worst group and the rows around its worst element."""
    shape = a.shape
    other = mism & ~tie
    n_mism, n_tie, n_other = int(mism.sum()), int(tie.sum()), int(other.sum())
    gid = group_ids(shape, spec)
    bad_groups = np.unique(gid[mism])
    # worst group: the most non-tie mismatches, then the largest code difference
    score = np.where(other, 1_000_000 + np.minimum(np.abs(diff), 999_999), np.where(tie, 1, 0))
    worst_idx = np.unravel_index(int(np.argmax(score.ravel())), shape)
    wg = gid[worst_idx]
    in_group = np.argwhere(gid == wg)                               # indices of the worst group
    pos = int(np.nonzero((in_group == np.array(worst_idx)).all(axis=1))[0][0])
    lo_i, hi_i = max(0, pos - context), min(len(in_group), pos + context + 1)
    lines = [err_msg] if err_msg else []
    lines.append(f"Quantized {'dequantized values' if values else 'codes'} differ (spec: {spec})")
    lines.append(f"Mismatched elements: {n_mism} / {a.size} ({100 * n_mism / a.size:.3g}%) in "
                 f"{len(bad_groups)} / {int(gid.max()) + 1} parameter groups")
    lines.append(f"  off by one code at a verified rounding tie: {n_tie} (allowed: "
                 f"{max_tie_mismatches}{'' if xf is not None else '; x not given, ties not checked'})")
    lines.append(f"  other mismatches: {n_other}"
                 + (f" (largest code difference {int(np.abs(diff[other]).max())}"
                    f"{', off grid: ' + str(int(off_grid.sum())) if values else ''})" if n_other else ""))
    lines.append(f"Worst group {int(wg)}: {int(mism[gid == wg].sum())} mismatches, worst element "
                 f"{_fmt_index(worst_idx)}")
    lines.append(f"  {'index':<16}{'x':>16}{'scale':>14}{'zero':>6}{'actual':>16}{'expected':>16}")
    for idx in in_group[lo_i:hi_i]:
        t = tuple(idx)
        xs = f"{xf[t]:.9g}" if xf is not None else "-"
        ss = f"{s[t]:.7g}" if s is not None else "-"
        zs = f"{int(z[t])}" if z is not None else "-"
        av = f"{a[t]:.9g}" if values else f"{int(a[t])}"
        ev = f"{e[t]:.9g}" if values else f"{int(e[t])}"
        mark = "  <-- tie" if tie[t] else ("  <--" if other[t] else "")
        lines.append(f"  {_fmt_index(t):<16}{xs:>16}{ss:>14}{zs:>6}{av:>16}{ev:>16}{mark}")
    return "\n".join(lines)


def assert_quantized_close(actual, expected, spec: QuantSpec, *, qparams: QParams | None = None,
                           x=None, max_tie_mismatches: int = 0, tie_tol: float = 0.0,
                           grid_rtol: float = 1e-6, err_msg: str = "", context: int = 4) -> None:
    """Assert that another implementation's codes (or dequantized values) equal refquant's, up
    to a stated number of disagreements at rounding ties.

    Parameters
    ----------
    actual : array_like
        The other implementation's output: integer codes, or dequantized floats.
    expected : array_like
        refquant's output for the same input, e.g. ``rq.quantize(x, qp, spec)`` (codes) or
        ``rq.fake_quantize(x, spec, qparams=qp)`` (values); same kind and shape as ``actual``.
    spec : QuantSpec
        The spec both were produced under (defines the code range and the parameter groups).
    qparams : QParams, optional
        The parameters both used. Required to compare dequantized values (they are mapped back
        to codes ``round(v / s) + z``) and to verify ties.
    x : array_like, optional
        The float input both quantized. Required when ``max_tie_mismatches > 0``.
    max_tie_mismatches : int
        How many elements may differ, each by exactly one code and each at a rounding tie of
        ``x``: ``x / s = k + 1/2`` with ``{actual, expected} = {k + z, k + 1 + z}``. The tie is
        checked from ``x`` and ``qparams`` (exactly: ``x == (k + 1/2) s`` in float64, which is
        exact for float32 ``x`` and ``s``). Any other difference fails.
    tie_tol : float
        Widen "at a tie" to ``|x / s - (k + 1/2)| <= tie_tol |k + 1/2|`` (relative), for an
        implementation that computes in float32 and may round a value within a few float32 ulps
        of a tie either way (``round(x * fl32(1/s))`` needs ``tie_tol = 2**-22``: two float32
        roundings plus the ulp of ``x``). State it where you use it; 0 (the default) means
        exact ties only.
    grid_rtol : float
        Values only: how far (relative to ``s``, on top of one float32 ulp of the value) a
        dequantized value may sit from the grid point ``s (q - z)`` and still count as code
        ``q``; values further off fail as "off grid".
    err_msg : str
        Prepended to the failure message.
    context : int
        Rows shown around the worst element of the worst group.

    Raises
    ------
    AssertionError
        With the number of differing elements and groups, the worst group, and the values
        around its worst element.
    ValueError
        On inconsistent arguments (shapes, missing ``qparams``/``x``).

    Examples
    --------
    >>> from refquant.schemes.spec import QParams, QuantSpec
    >>> spec, qp = QuantSpec(bits=4), QParams(0.5)
    >>> x = np.array([0.25, 1.0], np.float32)               # 0.25 / 0.5 = 1/2: a tie
    >>> assert_quantized_close(np.array([1, 2], np.int8), np.array([0, 2], np.int8), spec,
    ...                        qparams=qp, x=x, max_tie_mismatches=1)
    """
    a, e, values = _check_args(actual, expected, spec, qparams, x, max_tie_mismatches, tie_tol)
    if a.size == 0:
        return
    shape = a.shape
    s = z = None
    if qparams is not None:
        s = np.broadcast_to(expand(qparams.scale, shape, spec), shape).astype(np.float64)
        z = np.broadcast_to(expand(qparams.zero_point, shape, spec), shape).astype(np.int64)
    off_grid = np.zeros(shape, bool)
    if values:
        (aq, a_off), (eq, e_off) = _to_codes(a, s, z, grid_rtol), _to_codes(e, s, z, grid_rtol)
        off_grid = a_off | e_off
    else:
        aq, eq = a.astype(np.int64), e.astype(np.int64)
    diff = aq - eq
    mism = (diff != 0) | off_grid
    if not mism.any():
        return
    tie = np.zeros(shape, bool)
    xf = None
    if x is not None:
        xf = np.asarray(x, dtype=np.float64)
        if xf.shape != shape:
            raise ValueError(f"x shape {xf.shape} != actual shape {shape}")
    if xf is not None and s is not None:
        k = np.minimum(aq, eq) - z                                  # lower code, offset removed
        if tie_tol == 0:
            at_tie = xf == (k + 0.5) * s                            # exact for float32 x and s
        else:
            at_tie = np.abs(xf / s - (k + 0.5)) <= tie_tol * np.abs(k + 0.5)
        tie = mism & ~off_grid & (np.abs(diff) == 1) & at_tie
    if not (mism & ~tie).any() and int(tie.sum()) <= max_tie_mismatches:
        return
    raise AssertionError(_report(a, e, spec, values, xf, s, z, diff, mism, tie, off_grid,
                                 max_tie_mismatches, err_msg, context))


def assert_ggml_equal(actual, expected, fmt: str, *, x=None, err_msg: str = "") -> None:
    """Assert that two GGUF byte arrays of block format ``fmt`` are identical; on failure name
    how many blocks differ and show the worst block's fields (and its inputs, if ``x`` given).

    Parameters
    ----------
    actual, expected : array_like of uint8, shape ``[..., n_blocks * block_bytes(fmt)]``
    fmt : str
        A registered block type; for Q8_0, Q4_0 and Q4_1 the report decodes the worst block's
        fields, for the others it shows its bytes.
    x : array_like of float, shape ``[..., n_blocks * block_size]``, optional
        The input both were quantized from.
    err_msg : str
        Prepended to the failure message.

    Raises
    ------
    AssertionError
        With the number of differing blocks, bytes, codes and headers, and the worst block
        (a differing scale or minimum first, then the most differing codes).
    """
    from refquant.formats import ggml

    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape or a.dtype != e.dtype:
        raise AssertionError(f"{err_msg}\n{fmt} byte arrays differ in shape/dtype: "
                             f"{a.shape} {a.dtype} vs {e.shape} {e.dtype}".lstrip())
    if np.array_equal(a, e):
        return
    nb = ggml.block_bytes(fmt)
    ab = a.reshape(-1, nb)
    eb = e.reshape(-1, nb)
    bad_bytes = (ab != eb).sum(axis=1)                                # [n_blocks]
    n_bad = int((bad_bytes > 0).sum())
    if fmt not in ggml.FORMATS:                   # any other registered type: bytes only
        worst = int(np.argmax(bad_bytes))
        lines = [err_msg] if err_msg else []
        lines.append(f"{fmt} bytes differ in {n_bad} / {len(ab)} blocks ({int(bad_bytes.sum())} "
                     f"bytes); worst block {worst}, differing byte offsets "
                     f"{np.flatnonzero(ab[worst] != eb[worst]).tolist()}")
        lines.append(f"  actual  : {ab[worst].tolist()}")
        lines.append(f"  expected: {eb[worst].tolist()}")
        if x is not None:
            bs = ggml.block_type(fmt).block_size
            lines.append(f"  input   : {np.asarray(x, np.float32).reshape(-1, bs)[worst].tolist()}")
        raise AssertionError("\n".join(lines))
    fa_all, fe_all = ggml.unpack_blocks(ab, fmt), ggml.unpack_blocks(eb, fmt)
    n = len(ab)
    bad_codes = (fa_all.q != fe_all.q).reshape(n, -1).sum(axis=-1)    # [n_blocks]
    bad_header = (fa_all.d.view(np.uint16) != fe_all.d.view(np.uint16)).reshape(n).astype(int)
    if fmt == "Q4_1":
        bad_header += (fa_all.m.view(np.uint16) != fe_all.m.view(np.uint16)).reshape(n)
    # worst block: a differing scale/minimum first, then the most differing codes
    worst = int(np.argmax(bad_header * 1000 + bad_codes))
    fa, fe = ggml.unpack_blocks(ab[worst], fmt), ggml.unpack_blocks(eb[worst], fmt)
    lines = [err_msg] if err_msg else []
    lines.append(f"{fmt} bytes differ in {n_bad} / {len(ab)} blocks ({int(bad_bytes.sum())} bytes, "
                 f"{int(bad_codes.sum())} codes, {int((bad_header > 0).sum())} headers); worst block "
                 f"{worst} ({int(bad_codes[worst])} codes, header {'differs' if bad_header[worst] else 'equal'})")

    def row(name, va, ve):
        lines.append(f"  {name:<8} actual  : {va}")
        lines.append(f"  {'':<8} expected: {ve}")

    row("d", repr(float(fa.d[0])), repr(float(fe.d[0])))
    if fmt == "Q4_1":
        row("m", repr(float(fa.m[0])), repr(float(fe.m[0])))
    row("codes", fa.q[0].tolist(), fe.q[0].tolist())
    if x is not None:
        xb = np.asarray(x, np.float32).reshape(-1, ggml.QK)[worst]
        lines.append(f"  input    : {xb.tolist()}")
    raise AssertionError("\n".join(lines))
