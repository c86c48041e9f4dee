"""refquant as the oracle in other projects' test suites.

Three tools, public and stable (see the README's "Testing API" section):

* Hypothesis strategies: :func:`quant_specs` (every bit width, symmetry, granularity and a
  group size that divides the row), :func:`stress_tensors` (heavy tails, outlier channels,
  constant rows, subnormals, values piled at the clip edges) and :func:`tie_tensors` (tensors
  whose values sit *exactly* on rounding ties under min-max calibration).
* Assertions: :func:`assert_quantized_close` compares another implementation's codes or
  dequantized values with refquant's and tolerates only a stated number of off-by-one codes at
  verified rounding ties; :func:`assert_ggml_equal` compares GGUF block bytes and reports the
  worst block.
* Golden vectors: :func:`reference_case` / :func:`reference_cases` load the versioned ``.npz``
  files in ``refquant/testing/golden/`` (inputs, spec, codes, scales, zero points, dequantized values),
  computed by an independent scalar oracle (``scripts/make_golden.py``; see
  ``refquant/testing/golden/PROVENANCE.md``).

Hypothesis is imported only when a strategy is built, so the assertions and golden vectors
work without it.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import numpy as np

from refquant.schemes.numerics import SUPPORTED_BITS, round_to_int
from refquant.schemes.spec import GRANULARITIES, QParams, QuantSpec, expand, param_shape

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
GOLDEN_VERSION = 1

STRESS_KINDS = ("normal", "heavy_tail", "outlier_channels", "constant_rows", "zeros",
                "subnormal", "clip_edges", "signed_zeros")


# ---------------------------------------------------------------------------------------------
# stress tensors (plain NumPy generators; the Hypothesis strategies below draw their arguments)


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


def _group_ids(shape: tuple[int, ...], spec: QuantSpec) -> np.ndarray:
    """For every element of an array of ``shape``: the flat index of its parameter group."""
    pshape = param_shape(shape, spec)
    ids = np.arange(int(np.prod(pshape, dtype=np.int64)), dtype=np.int64).reshape(pshape)
    return np.broadcast_to(expand(ids, shape, spec), shape)


def tie_tensor(spec: QuantSpec, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A float32 tensor whose values sit exactly on rounding ties under min-max calibration.

    Every parameter group gets a scale ``s = m 2^e`` (``e`` in [-10, 2]) whose integer
    mantissa ``m`` has ``21 - b`` significant bits (half of the groups a power of two, the others
    an odd ``m``, so that ``1/s`` is inexact: an implementation that multiplies by a float32
    reciprocal lands beside the tie). Its first
    element (and, asymmetric, its second) pins the group's min-max range so that
    :func:`refquant.calibration.observers` returns exactly ``s`` (and an integer zero point ``z``): symmetric
    ``max|x| = q_max s``; asymmetric ``[lo, hi] = [-z s, (2^b - 1 - z) s]``. Every other element
    is ``(k + 1/2) s`` for an integer ``k`` inside the range, a tie between codes ``k`` and
    ``k + 1``, exactly representable in float32. Half-to-even and half-away rounding disagree
    on each of them, and an implementation that computes ``x * (1/s)`` or rounds in float32
    may land on either side.
    """
    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng(seed)
    gid = _group_ids(shape, spec).ravel()                           # [N]
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
        z = np.zeros(n_par, np.int64)
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


# ---------------------------------------------------------------------------------------------
# Hypothesis strategies


def _divisors(k: int) -> list[int]:
    return [g for g in range(1, k + 1) if k % g == 0]


def quant_specs(*, bits=None, symmetric=None, granularities=GRANULARITIES, shape=None,
                rounding=None, restricted=None, axis=None):
    """Hypothesis strategy for valid :class:`~refquant.QuantSpec` s.

    Parameters
    ----------
    bits : sequence of int, optional
        Bit widths to draw from (default: every supported width, 2..8 and 16).
    symmetric, restricted : bool, optional
        Fix the symmetry / restricted range (default: both drawn; ``restricted`` only when
        symmetric).
    granularities : sequence of str
        Subset of ``("tensor", "channel", "group")``.
    shape : tuple of int, optional
        The tensor shape the spec will be used on: ``axis`` is drawn in range and
        ``group_size`` among the divisors of ``shape[-1]``. Without a shape, group sizes are
        powers of two from 1 to 128.
    rounding : str, optional
        ``"half_even"`` or ``"half_away"`` (default: both drawn).
    axis : int, optional
        Fix the channel axis (default: drawn among the shape's axes, or 0 without a shape).
    """
    from hypothesis import strategies as st

    bits_st = st.sampled_from(tuple(bits) if bits is not None else SUPPORTED_BITS)
    sym_st = st.just(bool(symmetric)) if symmetric is not None else st.booleans()
    gran_st = st.sampled_from(tuple(granularities))
    rnd_st = st.just(rounding) if rounding is not None else st.sampled_from(("half_even", "half_away"))
    if shape is not None:
        shape = tuple(int(n) for n in shape)
        group_sizes = _divisors(shape[-1]) if shape else [1]
        axes = list(range(len(shape))) or [0]
    else:
        group_sizes = [1, 2, 4, 8, 16, 32, 64, 128]
        axes = [0]
    if axis is not None:
        axes = [int(axis)]

    @st.composite
    def build(draw):
        sym = draw(sym_st)
        gran = draw(gran_st)
        restr = bool(draw(st.booleans()) if restricted is None else restricted) and sym
        return QuantSpec(bits=draw(bits_st), symmetric=sym, granularity=gran,
                         axis=draw(st.sampled_from(axes)) if gran == "channel" else 0,
                         group_size=draw(st.sampled_from(group_sizes)) if gran == "group" else None,
                         rounding=draw(rnd_st), restricted=restr)

    return build()


def stress_tensors(*, shape=None, kinds=STRESS_KINDS, max_dims: int = 2, max_side: int = 64):
    """Hypothesis strategy for float32 stress tensors (see :func:`stress_tensor`).

    Parameters
    ----------
    shape : tuple of int or a strategy of tuples, optional
        Default: 1..``max_dims`` axes of length 1..``max_side``.
    kinds : sequence of str
        Subset of :data:`STRESS_KINDS` to draw from.
    """
    from hypothesis import strategies as st

    if shape is None:
        shape_st = st.lists(st.integers(1, max_side), min_size=1, max_size=max_dims).map(tuple)
    elif isinstance(shape, tuple):
        shape_st = st.just(shape)
    else:
        shape_st = shape
    return st.builds(stress_tensor, st.sampled_from(tuple(kinds)), shape_st,
                     st.integers(0, 2**32 - 1))


def tie_tensors(spec: QuantSpec, shape):
    """Hypothesis strategy for :func:`tie_tensor` ``(spec, shape, seed)`` with drawn seeds."""
    from hypothesis import strategies as st

    return st.builds(tie_tensor, st.just(spec), st.just(tuple(shape)), st.integers(0, 2**32 - 1))


def specs_and_tensors(*, kinds=STRESS_KINDS + ("ties",), max_rows: int = 8, max_cols: int = 96,
                      **spec_kw):
    """Hypothesis strategy for ``(spec, x)`` pairs: a 2-D float32 ``x`` and a spec valid for its
    shape; ``kinds`` may include ``"ties"`` for :func:`tie_tensor` under that spec."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw):
        shape = (draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols)))
        spec = draw(quant_specs(shape=shape, **spec_kw))
        kind = draw(st.sampled_from(tuple(kinds)))
        seed = draw(st.integers(0, 2**32 - 1))
        x = tie_tensor(spec, shape, seed) if kind == "ties" else stress_tensor(kind, shape, seed)
        return spec, x

    return build()


# ---------------------------------------------------------------------------------------------
# assertions


def _fmt_index(idx) -> str:
    return "(" + ", ".join(str(int(i)) for i in idx) + ")"


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
    """
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
    if a.size == 0:
        return
    shape = a.shape
    s = z = None
    if qparams is not None:
        s = np.broadcast_to(expand(qparams.scale, shape, spec), shape).astype(np.float64)
        z = np.broadcast_to(expand(qparams.zero_point, shape, spec), shape).astype(np.int64)
    off_grid = np.zeros(shape, bool)
    if values:
        def to_codes(v):
            v = v.astype(np.float64)
            q = round_to_int(v / s, "half_even") + z
            g = s * (q - z)                                         # the grid point, float64
            # off grid: further than grid_rtol * s plus one float32 ulp of the value (values
            # are typically stored in float32, which rounds s (q - z) by up to half an ulp)
            return q.astype(np.int64), np.abs(v - g) > grid_rtol * s + np.abs(g) * 2.0**-23

        aq, a_off = to_codes(a)
        eq, e_off = to_codes(e)
        off_grid = a_off | e_off
    else:
        aq, eq = a.astype(np.int64), e.astype(np.int64)
    diff = aq - eq
    mism = (diff != 0) | off_grid
    n_mism = int(mism.sum())
    if n_mism == 0:
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
    n_tie = int(tie.sum())
    other = mism & ~tie
    n_other = int(other.sum())
    if n_other == 0 and n_tie <= max_tie_mismatches:
        return

    gid = _group_ids(shape, spec)
    n_groups_total = int(gid.max()) + 1
    bad_groups = np.unique(gid[mism])
    # worst group: the most non-tie mismatches, then the largest code difference
    score = np.where(other, 1_000_000 + np.minimum(np.abs(diff), 999_999), np.where(tie, 1, 0))
    worst_flat = int(np.argmax(score.ravel()))
    worst_idx = np.unravel_index(worst_flat, shape)
    wg = gid[worst_idx]
    in_group = np.argwhere(gid == wg)                               # indices of the worst group
    pos = int(np.nonzero((in_group == np.array(worst_idx)).all(axis=1))[0][0])
    lo_i, hi_i = max(0, pos - context), min(len(in_group), pos + context + 1)
    lines = [err_msg] if err_msg else []
    kind = "dequantized values" if values else "codes"
    lines.append(f"Quantized {kind} differ (spec: {spec})")
    lines.append(f"Mismatched elements: {n_mism} / {a.size} ({100 * n_mism / a.size:.3g}%) in "
                 f"{len(bad_groups)} / {n_groups_total} parameter groups")
    lines.append(f"  off by one code at a verified rounding tie: {n_tie} (allowed: "
                 f"{max_tie_mismatches}{'' if x is not None else '; x not given, ties not checked'})")
    lines.append(f"  other mismatches: {n_other}"
                 + (f" (largest code difference {int(np.abs(diff[other]).max())}"
                    f"{', off grid: ' + str(int(off_grid.sum())) if values else ''})" if n_other else ""))
    lines.append(f"Worst group {int(wg)}: {int(mism[gid == wg].sum())} mismatches, worst element "
                 f"{_fmt_index(worst_idx)}")
    header = f"  {'index':<16}{'x':>16}{'scale':>14}{'zero':>6}{'actual':>16}{'expected':>16}"
    lines.append(header)
    for idx in in_group[lo_i:hi_i]:
        t = tuple(idx)
        xs = f"{xf[t]:.9g}" if xf is not None else "-"
        ss = f"{s[t]:.7g}" if s is not None else "-"
        zs = f"{int(z[t])}" if z is not None else "-"
        av = f"{a[t]:.9g}" if values else f"{int(a[t])}"
        ev = f"{e[t]:.9g}" if values else f"{int(e[t])}"
        mark = "  <-- tie" if tie[t] else ("  <--" if other[t] else "")
        lines.append(f"  {_fmt_index(t):<16}{xs:>16}{ss:>14}{zs:>6}{av:>16}{ev:>16}{mark}")
    raise AssertionError("\n".join(lines))


def assert_ggml_equal(actual, expected, fmt: str, *, x=None, err_msg: str = "") -> None:
    """Assert that two GGUF byte arrays of block format ``fmt`` are identical; on failure name
    how many blocks differ and show the worst block's fields (and its inputs, if ``x`` given).

    Parameters
    ----------
    actual, expected : array_like of uint8, shape ``[..., n_blocks * block_bytes(fmt)]``
    fmt : {"Q8_0", "Q4_0", "Q4_1"}
    x : array_like of float, shape ``[..., n_blocks * 32]``, optional
        The input both were quantized from.
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


# ---------------------------------------------------------------------------------------------
# golden vectors


@dataclass(frozen=True)
class ReferenceCase:
    """One golden vector (see ``refquant/testing/golden/PROVENANCE.md``).

    Attributes
    ----------
    name : str
    scheme : str
        ``"uniform"`` (a :class:`QuantSpec` with min-max parameters) or ``"ggml"``.
    x : numpy.ndarray of float32
        The input.
    spec : QuantSpec or None
        Uniform cases: the spec (min-max calibration).
    fmt : str or None
        GGML cases: ``"Q8_0"``, ``"Q4_0"`` or ``"Q4_1"``.
    codes, scale, zero_point, dequantized : numpy.ndarray
        The expected results. GGML cases: ``codes`` as stored (int8 / uint8 nibbles) of shape
        ``[..., n_blocks, 32]``, ``scale`` the float16 ``d`` (and ``zero_point`` the float16
        ``m`` for Q4_1, else None).
    blocks : numpy.ndarray of uint8 or None
        GGML cases: the GGUF bytes.
    version : int
        Golden-set version the case belongs to.
    """

    name: str
    scheme: str
    x: np.ndarray
    spec: QuantSpec | None
    fmt: str | None
    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    dequantized: np.ndarray
    blocks: np.ndarray | None
    version: int
    extra: dict = field(default_factory=dict)

    @property
    def qparams(self) -> QParams:
        """The uniform case's parameters as :class:`QParams`."""
        if self.scheme != "uniform":
            raise ValueError(f"case {self.name!r} is a GGML case; it has no QParams")
        return QParams(self.scale, self.zero_point)


def reference_cases(directory=None) -> list[str]:
    """Names of the golden cases available (the ``.npz`` files in ``refquant/testing/golden``)."""
    d = pathlib.Path(directory) if directory is not None else GOLDEN_DIR
    return sorted(p.stem for p in d.glob("*.npz"))


def load_case_file(path) -> ReferenceCase:
    """Read one golden ``.npz`` (never unpickling) into a :class:`ReferenceCase`."""
    path = pathlib.Path(path)
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    scheme = str(data["scheme"])
    spec = fmt = None
    if scheme == "uniform":
        spec = QuantSpec(bits=int(data["bits"]), symmetric=bool(data["symmetric"]),
                         granularity=str(data["granularity"]), axis=int(data["axis"]),
                         group_size=int(data["group_size"]) if int(data["group_size"]) > 0 else None,
                         rounding=str(data["rounding"]), restricted=bool(data["restricted"]))
    else:
        fmt = str(data["fmt"])
    known = {"scheme", "bits", "symmetric", "granularity", "axis", "group_size", "rounding",
             "restricted", "fmt", "x", "codes", "scale", "zero_point", "dequantized", "blocks",
             "version"}
    return ReferenceCase(
        name=path.stem, scheme=scheme, x=data["x"], spec=spec, fmt=fmt, codes=data["codes"],
        scale=data["scale"], zero_point=data.get("zero_point"), dequantized=data["dequantized"],
        blocks=data.get("blocks"), version=int(data["version"]),
        extra={k: v for k, v in data.items() if k not in known})


def reference_case(name: str) -> ReferenceCase:
    """The golden case ``name`` (see :func:`reference_cases` for the list).

    Examples
    --------
    >>> import refquant as rq
    >>> from refquant.testing import reference_case
    >>> case = reference_case("uniform_int4_asym_group32")
    >>> bool((rq.quantize(case.x, case.qparams, case.spec) == case.codes).all())
    True
    """
    path = GOLDEN_DIR / f"{name}.npz"
    if not path.is_file():
        raise ValueError(f"unknown reference case {name!r}; available: {reference_cases()}")
    return load_case_file(path)


__all__ = ["STRESS_KINDS", "GOLDEN_VERSION", "stress_tensor", "tie_tensor", "quant_specs",
           "stress_tensors", "tie_tensors", "specs_and_tensors", "assert_quantized_close",
           "assert_ggml_equal", "ReferenceCase", "reference_case", "reference_cases",
           "load_case_file"]
