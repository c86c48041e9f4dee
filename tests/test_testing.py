"""Tests of refquant.testing: the strategies produce what they promise, and the assertions pass
exactly when they should (and fail with the promised message)."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refquant as rq
from refquant.schemes.spec import expand
from refquant.formats import ggml
from refquant.schemes.numerics import SUPPORTED_BITS
from refquant.testing import (STRESS_KINDS, assert_ggml_equal, assert_quantized_close,
                              quant_specs, specs_and_tensors, stress_tensor, stress_tensors,
                              tie_tensor, tie_tensors)


# --- strategies ---------------------------------------------------------------------------------

@settings(max_examples=60)
@given(data=st.data(), k=st.integers(1, 200))
def test_quant_specs_are_valid_for_the_shape(data, k):
    shape = (3, k)
    spec = data.draw(quant_specs(shape=shape))
    assert isinstance(spec, rq.QuantSpec)
    if spec.granularity == "group":
        assert k % spec.group_size == 0
    if spec.granularity == "channel":
        assert 0 <= spec.axis < 2
    assert not (spec.restricted and not spec.symmetric)


def test_quant_specs_cover_every_bit_width_and_granularity():
    seen = set()

    @settings(max_examples=200)
    @given(quant_specs(shape=(4, 64)))
    def collect(spec):
        seen.add((spec.bits, spec.granularity, spec.symmetric))

    collect()
    assert {b for b, _, _ in seen} == set(SUPPORTED_BITS)
    assert {g for _, g, _ in seen} == {"tensor", "channel", "group"}
    assert {s for _, _, s in seen} == {True, False}


@pytest.mark.parametrize("kind", STRESS_KINDS)
def test_stress_tensor_kinds(kind):
    x = stress_tensor(kind, (8, 64), seed=2)
    assert x.dtype == np.float32 and x.shape == (8, 64) and np.isfinite(x).all()
    tiny = np.finfo(np.float32).tiny
    if kind == "subnormal":
        assert ((x != 0) & (np.abs(x) < tiny)).sum() > 50
    if kind == "constant_rows":
        assert (x == x[:, :1]).all()
    if kind == "zeros":
        assert (x == 0).all()
    if kind == "outlier_channels":
        col_max = np.abs(x).max(axis=0)
        assert col_max.max() > 20 * np.median(col_max)
    if kind == "clip_edges":
        at_edge = (x == x.min(axis=1, keepdims=True)) | (x == x.max(axis=1, keepdims=True))
        assert at_edge.mean() > 0.15
    if kind == "signed_zeros":
        zeros = x == 0
        assert np.signbit(x[zeros]).any() and (~np.signbit(x[zeros])).any()
    with pytest.raises(ValueError, match="unknown stress kind"):
        stress_tensor("spiky", (2, 2))


@settings(max_examples=50)
@given(data=st.data())
def test_tie_tensors_sit_exactly_on_ties(data):
    shape = (data.draw(st.integers(1, 6)), data.draw(st.integers(2, 48)))
    spec = data.draw(quant_specs(shape=shape, bits=(2, 3, 4, 8)))
    x = data.draw(tie_tensors(spec, shape))
    qp = rq.calibrate(x, spec)
    s = np.broadcast_to(expand(qp.scale, shape, spec), shape).astype(np.float64)
    m, e = np.frexp(s)
    assert ((m * 2.0 ** (21 - spec.bits)) % 1 == 0).all()    # at most 21 - b significant bits
    frac = np.mod(x.astype(np.float64) / s, 1.0)
    # all but the one or two range-pinning elements of each group are exact ties
    n_groups = qp.scale.size
    assert (frac == 0.5).sum() >= x.size - 2 * n_groups


@settings(max_examples=30)
@given(stress_tensors(kinds=("normal", "heavy_tail")))
def test_stress_tensors_strategy(x):
    assert x.dtype == np.float32 and 1 <= x.ndim <= 2 and np.isfinite(x).all()


# --- assert_quantized_close -----------------------------------------------------------------------

def _tie_setup(seed=0):
    spec = rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=16)
    x = tie_tensor(spec, (4, 64), seed)
    qp = rq.calibrate(x, spec)
    q_even = rq.quantize(x, qp, spec)
    q_away = rq.quantize(x, qp, dataclasses.replace(spec, rounding="half_away"))
    return spec, x, qp, q_even, q_away


def test_identical_codes_pass():
    spec, x, qp, q, _ = _tie_setup()
    assert_quantized_close(q, q.copy(), spec)
    assert_quantized_close(rq.dequantize(q, qp, spec), rq.dequantize(q, qp, spec), spec, qparams=qp)


def test_tie_disagreements_allowed_exactly_as_stated():
    spec, x, qp, q_even, q_away = _tie_setup()
    n = int((q_even != q_away).sum())
    assert n > 10
    assert_quantized_close(q_away, q_even, spec, qparams=qp, x=x, max_tie_mismatches=n)
    with pytest.raises(AssertionError) as err:
        assert_quantized_close(q_away, q_even, spec, qparams=qp, x=x, max_tie_mismatches=n - 1)
    msg = str(err.value)
    assert f"Mismatched elements: {n} / 256" in msg
    assert f"verified rounding tie: {n} (allowed: {n - 1})" in msg
    assert "other mismatches: 0" in msg and "<-- tie" in msg


def test_off_by_one_away_from_a_tie_fails():
    spec = rq.QuantSpec(bits=8, symmetric=True, granularity="channel")
    x = stress_tensor("normal", (4, 32), seed=1)
    qp = rq.calibrate(x, spec)
    q = rq.quantize(x, qp, spec)
    bad = q.copy()
    frac = np.abs(np.mod(x / expand(qp.scale, x.shape, spec), 1.0) - 0.5)
    i = np.unravel_index(np.argmax(frac), x.shape)           # the element furthest from a tie
    bad[i] += 1 if bad[i] < 127 else -1
    with pytest.raises(AssertionError) as err:
        assert_quantized_close(bad, q, spec, qparams=qp, x=x, max_tie_mismatches=1000)
    msg = str(err.value)
    assert "Mismatched elements: 1 / 128" in msg and "in 1 / 4 parameter groups" in msg
    assert "other mismatches: 1 (largest code difference 1)" in msg
    assert f"Worst group {i[0]}" in msg and "<--" in msg


def test_off_by_two_at_a_tie_fails():
    spec, x, qp, q_even, q_away = _tie_setup()
    i = np.unravel_index(np.argmax(q_even != q_away), x.shape)
    e, a = int(q_even[i]), int(q_away[i])
    two_off = a + (a - e)                                     # one further step, 2 from expected
    assert 0 <= two_off <= 15
    bad = q_even.copy()
    bad[i] = two_off
    with pytest.raises(AssertionError, match="largest code difference 2"):
        assert_quantized_close(bad, q_even, spec, qparams=qp, x=x, max_tie_mismatches=100)


def test_dequantized_values_and_off_grid():
    spec, x, qp, q_even, q_away = _tie_setup(seed=3)
    v_even, v_away = rq.dequantize(q_even, qp, spec), rq.dequantize(q_away, qp, spec)
    n = int((q_even != q_away).sum())
    assert_quantized_close(v_away, v_even, spec, qparams=qp, x=x, max_tie_mismatches=n)
    off = v_even.copy()
    off[0, 5] += 0.3 * float(qp.scale[0, 0])                   # between two grid points
    with pytest.raises(AssertionError, match="off grid: 1"):
        assert_quantized_close(off, v_even, spec, qparams=qp, x=x, max_tie_mismatches=n)


def test_tie_tol_accepts_float32_reciprocal_rounding():
    # an implementation that computes round(x * fl32(1/s)) in float32 (as many frameworks do)
    # disagrees with refquant at exact ties and just beside them: the latter count as ties only
    # with an explicit tie_tol.
    spec = rq.QuantSpec(bits=8, symmetric=True, granularity="tensor")
    s = np.float32(0.1)
    k = np.arange(-120, 120, dtype=np.float64)
    x = ((k + 0.5) * np.float64(s)).astype(np.float32)           # float32 values nearest the ties
    x[0] = 127 * s
    qp = rq.QParams(s)
    ours = rq.quantize(x, qp, spec)
    theirs = np.clip(np.rint(x * (np.float32(1) / s)), -128, 127).astype(np.int8)
    n = int((ours != theirs).sum())
    assert n > 0
    with pytest.raises(AssertionError):
        assert_quantized_close(theirs, ours, spec, qparams=qp, x=x, max_tie_mismatches=n)
    assert_quantized_close(theirs, ours, spec, qparams=qp, x=x, max_tie_mismatches=n, tie_tol=2**-22)


def test_argument_errors():
    spec, x, qp, q, _ = _tie_setup()
    with pytest.raises(ValueError, match="shape"):
        assert_quantized_close(q[:, :8], q, spec)
    with pytest.raises(ValueError, match="x .* is required"):
        assert_quantized_close(q, q, spec, qparams=qp, max_tie_mismatches=1)
    with pytest.raises(ValueError, match="qparams is required"):
        assert_quantized_close(q.astype(np.float32), q.astype(np.float32), spec)
    with pytest.raises(ValueError, match="both be codes"):
        assert_quantized_close(q.astype(np.float32), q, spec, qparams=qp)


@settings(max_examples=60)
@given(specs_and_tensors(rounding="half_even", bits=(2, 3, 4, 8)))
def test_half_away_vs_half_even_differ_only_at_verified_ties(pair):
    spec, x = pair
    qp = rq.calibrate(x, spec)
    q_even = rq.quantize(x, qp, spec)
    q_away = rq.quantize(x, qp, dataclasses.replace(spec, rounding="half_away"))
    n = int((q_even != q_away).sum())
    assert_quantized_close(q_away, q_even, spec, qparams=qp, x=x, max_tie_mismatches=n)
    if n:
        with pytest.raises(AssertionError):
            assert_quantized_close(q_away, q_even, spec, qparams=qp, x=x, max_tie_mismatches=n - 1)


# --- assert_ggml_equal ----------------------------------------------------------------------------

def test_assert_ggml_equal_reports_the_worst_block():
    x = stress_tensor("normal", (2, 128), seed=4)
    b = ggml.quantize_q4_1(x)
    assert_ggml_equal(b, b.copy(), "Q4_1", x=x)
    bad = b.copy()
    bad[1, 20 + 5] ^= 0x11                                        # row 1, block 1: two codes
    bad[0, 10] ^= 0x01                                            # row 0, block 0: one code
    with pytest.raises(AssertionError) as err:
        assert_ggml_equal(bad, b, "Q4_1", x=x)
    msg = str(err.value)
    assert "differ in 2 / 8 blocks" in msg and "worst block 5" in msg
    assert "codes" in msg and "input" in msg


@settings(max_examples=20)
@given(quant_specs(shape=(3, 8), granularities=("channel",), axis=0, rounding="half_even"))
def test_quant_specs_fixed_axis_and_rounding(spec):
    assert spec.axis == 0 and spec.rounding == "half_even" and spec.granularity == "channel"


# --- the public surface ---------------------------------------------------------------------------

def test_public_names_are_the_documented_ones():
    """The README's stable list (oracle: the list written out here) is exactly ``__all__``, and
    every name is importable from ``refquant.testing`` itself."""
    import refquant.testing as rt
    documented = ["STRESS_KINDS", "GOLDEN_VERSION", "stress_tensor", "tie_tensor", "quant_specs",
                  "stress_tensors", "tie_tensors", "specs_and_tensors", "assert_quantized_close",
                  "assert_ggml_equal", "ReferenceCase", "reference_case", "reference_cases",
                  "load_case_file"]
    assert rt.__all__ == documented
    assert all(callable(getattr(rt, n)) or n in ("STRESS_KINDS", "GOLDEN_VERSION")
               for n in documented)


def test_importing_refquant_testing_does_not_import_hypothesis():
    """A fresh interpreter (oracle: its ``sys.modules``) imports the package, loads a golden case
    and runs an assertion without Hypothesis being imported."""
    import subprocess
    import sys
    code = ("import sys, numpy as np\n"
            "import refquant.testing as rt\n"
            "rt.assert_quantized_close(np.zeros(3, np.int8), np.zeros(3, np.int8), "
            "rt.reference_case('uniform_int8_sym_tensor').spec)\n"
            "print('hypothesis' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
