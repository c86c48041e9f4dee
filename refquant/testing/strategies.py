"""Hypothesis strategies for specs and stress tensors.

Hypothesis is imported inside each function, when a strategy is built: importing
:mod:`refquant.testing` does not need it. The tensors come from the plain generators of
:mod:`refquant.testing.tensors`; a strategy only draws their arguments (kind, shape, seed), so a
failing example is reproduced by calling the generator with the reported arguments.
"""

from __future__ import annotations

from refquant.schemes.numerics import SUPPORTED_BITS
from refquant.schemes.spec import GRANULARITIES, QuantSpec
from refquant.testing.tensors import STRESS_KINDS, stress_tensor, tie_tensor


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

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(quant_specs(bits=[4], granularities=["group"], shape=(2, 12)))
    ... def check(spec):
    ...     assert spec.bits == 4 and 12 % spec.group_size == 0
    >>> check()
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
