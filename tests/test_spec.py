"""Tests of refquant.schemes.spec: validation of QuantSpec / QParams and the granularity helpers.

Oracles: group membership is checked against a plain Python loop over ``i // group_size``
written here; parameter shapes are hand-computed (e.g. K = 576, g = 128 -> 5 groups).
"""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refquant.schemes.spec import QParams, QuantSpec, expand, grouped, n_groups, param_shape


def _named(value) -> str:
    """Regex matching ``repr(value)`` literally (the error message must name the value)."""
    return re.escape(repr(value))


# ---------------------------------------------------------------------------- QuantSpec


@pytest.mark.parametrize("bits", [1, 9, 17, 0, True, 4.0, "8", None])
def test_spec_bad_bits(bits):
    with pytest.raises(ValueError, match=_named(bits)):
        QuantSpec(bits=bits)


@pytest.mark.parametrize("group_size", [0, -1, 2.5, None, True, "128", 128.0])
def test_spec_bad_group_size(group_size):
    with pytest.raises(ValueError, match=_named(group_size)):
        QuantSpec(granularity="group", group_size=group_size)


def test_spec_group_size_without_group_granularity():
    with pytest.raises(ValueError, match="group_size=128"):
        QuantSpec(granularity="channel", group_size=128)


@pytest.mark.parametrize("field,value", [
    ("granularity", "row"), ("granularity", None), ("rounding", "nearest"), ("rounding", "HALF_EVEN"),
    ("symmetric", 1), ("symmetric", "yes"), ("axis", 1.0), ("axis", None), ("axis", True),
])
def test_spec_bad_fields(field, value):
    with pytest.raises(ValueError, match=_named(value)):
        QuantSpec(**{field: value})


def test_spec_restricted_needs_symmetric():
    with pytest.raises(ValueError, match="restricted"):
        QuantSpec(symmetric=False, restricted=True)


def test_spec_ranges():
    # hand values: 4-bit signed [-8, 7], restricted [-7, 7], unsigned [0, 15]
    assert (QuantSpec(bits=4).qmin, QuantSpec(bits=4).qmax) == (-8, 7)
    assert (QuantSpec(bits=4, restricted=True).qmin, QuantSpec(bits=4, restricted=True).qmax) == (-7, 7)
    assert (QuantSpec(bits=4, symmetric=False).qmin, QuantSpec(bits=4, symmetric=False).qmax) == (0, 15)
    assert QuantSpec(bits=16, symmetric=False).code_dtype == np.uint16
    assert QuantSpec(bits=3).code_dtype == np.int8


# ---------------------------------------------------------------------------- QParams


@pytest.mark.parametrize("scale", [0.0, -1.0, np.nan, np.inf, -np.inf, [1.0, 0.0], [[0.5], [-2.0]]])
def test_qparams_bad_scale(scale):
    bad = np.asarray(scale, np.float32).ravel()
    bad = bad[~(np.isfinite(bad) & (bad > 0))][0]
    with pytest.raises(ValueError, match=f"scale must be finite and positive, got {re.escape(repr(bad))}"):
        QParams(scale)


def test_qparams_bad_types_and_shapes():
    with pytest.raises(ValueError, match="<U3"):
        QParams(np.array(["abc"]))
    with pytest.raises(ValueError, match="integers"):
        QParams(1.0, 0.5)
    with pytest.raises(ValueError, match="integers"):
        QParams(1.0, np.nan)
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        QParams(np.ones(3), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="complex"):
        QParams(1.0, np.array(1j))


def test_qparams_normalizes_dtypes():
    qp = QParams([1, 2], [3.0, -1.0])
    assert qp.scale.dtype == np.float32 and qp.zero_point.dtype == np.int32
    assert qp.zero_point.tolist() == [3, -1]
    assert QParams(0.5).zero_point.shape == () and QParams(0.5).zero_point == 0


def test_qparams_check_against_spec():
    with pytest.raises(ValueError, match="zero_point == 0, got 3"):
        QParams(1.0, 3).check(QuantSpec(bits=8, symmetric=True))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        QParams(1.0, 16).check(QuantSpec(bits=4, symmetric=False))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        QParams(1.0, -1).check(QuantSpec(bits=4, symmetric=False))
    QParams(1.0, 15).check(QuantSpec(bits=4, symmetric=False))   # the edge is fine


# ---------------------------------------------------------------------------- granularity


def test_param_shapes_by_hand():
    w = (576, 1536)
    assert param_shape(w, QuantSpec()) == ()
    assert param_shape(w, QuantSpec(granularity="channel", axis=0)) == (576,)
    assert param_shape(w, QuantSpec(granularity="channel", axis=-1)) == (1536,)
    assert param_shape(w, QuantSpec(granularity="group", group_size=128)) == (576, 12)
    # 576 = 4 * 128 + 64: five groups, the last one short
    assert param_shape((1536, 576), QuantSpec(granularity="group", group_size=128)) == (1536, 5)
    assert param_shape((2, 3, 10), QuantSpec(granularity="group", group_size=4)) == (2, 3, 3)
    assert param_shape((), QuantSpec()) == ()
    assert n_groups(576, 128) == 5 and n_groups(512, 128) == 4 and n_groups(1, 128) == 1


def test_param_shape_errors():
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        param_shape((3, 4), QuantSpec(granularity="channel", axis=2))
    with pytest.raises(ValueError, match="axis -3 is out of range"):
        param_shape((3, 4), QuantSpec(granularity="channel", axis=-3))
    with pytest.raises(ValueError, match="at least one axis"):
        param_shape((), QuantSpec(granularity="group", group_size=2))


@pytest.mark.parametrize("spec", [QuantSpec(), QuantSpec(granularity="channel"),
                                  QuantSpec(granularity="group", group_size=4)])
def test_grouped_rejects_empty(spec):
    with pytest.raises(ValueError, match=r"empty array \(shape \(0, 3\)\)"):
        grouped(np.zeros((0, 3)), spec)


@given(lead=st.lists(st.integers(1, 3), max_size=2), k=st.integers(1, 40), g=st.integers(1, 45))
def test_grouped_and_expand_follow_g_idx(lead, k, g):
    spec = QuantSpec(granularity="group", group_size=g)
    shape = tuple(lead) + (k,)
    x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) + 1.0
    G = grouped(x, spec)
    ng = -(-k // g)
    assert G.shape == tuple(lead) + (ng, g)
    p = np.arange(np.prod(param_shape(shape, spec)), dtype=np.float64).reshape(param_shape(shape, spec))
    E = expand(p, shape, spec)
    for idx in np.ndindex(*lead):
        for i in range(k):                                   # naive oracle: g_idx = i // g
            assert G[idx + (i // g, i % g)] == x[idx + (i,)]
            assert E[idx + (i,)] == p[idx + (i // g,)]
        # padding of the short last group is NaN, nothing else is
        n_pad = ng * g - k
        assert np.isnan(G[idx + (ng - 1,)]).sum() == n_pad
        assert not np.isnan(G[idx + (slice(0, ng - 1),)]).any()


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_grouped_and_expand_channel_any_axis(shape, data):
    shape = tuple(shape)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    spec = QuantSpec(granularity="channel", axis=axis)
    x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    G = grouped(x, spec)
    ax = axis % len(shape)
    assert G.shape == (shape[ax], x.size // shape[ax])
    p = np.arange(shape[ax], dtype=np.float64) * 10
    E = np.broadcast_to(expand(p, shape, spec), shape)
    for idx in np.ndindex(*shape):                             # naive oracle: channel = idx[axis]
        assert E[idx] == p[idx[ax]]
        assert x[idx] in G[idx[ax]]


def test_expand_wrong_parameter_shape():
    with pytest.raises(ValueError, match=r"parameter shape \(4,\) does not match \(3, 5\)"):
        expand(np.ones(4), (3, 576), QuantSpec(granularity="group", group_size=128))


@pytest.mark.parametrize("zero_point, shown", [
    (2**32 + 3, "4294967299"), (-2**31 - 1, "-2147483649"), (2**31, "2147483648"),
    (2**70, "1180591620717411303424"), (np.uint64(2**63), "9223372036854775808"),
    (np.int64(-2**40), "-1099511627776"), (2.0**40, "1099511627776.0")])
def test_qparams_rejects_zero_points_outside_int32(zero_point, shown):
    """A zero point that int32 cannot hold raises instead of wrapping (2**32 + 3 used to become 3);
    the message names the value (oracle: the int32 range, [-2**31, 2**31 - 1], by hand)."""
    with pytest.raises(ValueError, match=rf"zero_point {re.escape(shown)} is outside the int32 range"):
        QParams(1.0, zero_point)


def test_qparams_zero_point_int32_edges_and_arrays():
    """The int32 edges are kept exactly; in an array the first offending element is named."""
    assert QParams([1.0, 1.0], [2**31 - 1, -2**31]).zero_point.tolist() == [2**31 - 1, -2**31]
    with pytest.raises(ValueError, match="zero_point 8589934592 is outside"):
        QParams(np.ones(3), np.array([0, 2**33, -2**35]))
    with pytest.raises(ValueError, match=r"zero_point must hold integers, got 0\.5"):
        QParams(np.ones(2), [1.0, 0.5])


def test_qparams_check_names_the_zero_point():
    with pytest.raises(ValueError, match=r"zero_point 16 outside the code range \[0, 15\]"):
        QParams([1.0, 1.0], [3, 16]).check(QuantSpec(bits=4, symmetric=False))
