"""Worked example: refquant as the oracle for PyTorch's fake quantization.

Subject: ``torch.fake_quantize_per_channel_affine`` and ``torch.fake_quantize_per_tensor_affine``
(CPU). Oracle: ``refquant.fake_quantize`` with the same parameters, compared with
``refquant.testing.assert_quantized_close`` (dequantized values mapped back to codes).

Run it:  python -m pytest examples/test_oracle_torch.py -q      (skips cleanly without torch)

What it found (torch 2.13.0 CPU):

1. Same codes as refquant's half-to-even rounding on every stress tensor (normal, heavy tails,
   outlier channels, constant rows, zeros, float32 subnormals, clip edges, signed zeros), for
   2..8 bits, symmetric and asymmetric, per channel (either axis) and per tensor.
2. At exact rounding ties ``x = (k + 1/2) s`` torch is off by one code for a few percent of the
   ties, but only where ``1/s`` is not exact: torch computes ``nearbyint(x * fl32(1/s))`` in
   float32, and the rounded reciprocal moves the product off the tie (to either side).
   refquant divides, ``x / s`` in float64, which is exact at these ties. Every such disagreement
   is verified as an exact tie (``tie_tol=0``).
3. Values one float32 ulp beside a tie: torch's float32 product can round onto the tie (or
   across it), so such values may get the other code; they pass only with a relative
   ``tie_tol`` of 2^-23 (we state 2^-22 to cover the two float32 roundings plus the ulp of x).
4. No disagreement in the dequantized value itself: torch's ``(q - z) * s`` in float32 and
   refquant's float64 product rounded to float32 are the same single rounding.
"""

import numpy as np
import pytest
from hypothesis import given, settings

import refquant as rq
from refquant.schemes.spec import expand
from refquant.testing import (STRESS_KINDS, assert_quantized_close, specs_and_tensors,
                              stress_tensor, tie_tensor)

torch = pytest.importorskip("torch", reason="torch is an optional cross-check dependency")


def torch_fake_quant(x, qp, spec):
    """PyTorch's fake quantization of ``x`` with refquant's parameters ``qp``."""
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    if spec.granularity == "tensor":
        out = torch.fake_quantize_per_tensor_affine(t, float(qp.scale), int(qp.zero_point),
                                                    spec.qmin, spec.qmax)
    else:
        out = torch.fake_quantize_per_channel_affine(
            t, torch.from_numpy(qp.scale), torch.from_numpy(qp.zero_point.astype(np.int32)),
            spec.axis % x.ndim, spec.qmin, spec.qmax)
    return out.numpy()


def compare(x, spec, **kw):
    qp = rq.calibrate(x, spec)
    expected = rq.fake_quantize(x, spec, qparams=qp)
    actual = torch_fake_quant(x, qp, spec)
    n_diff = int((actual != expected).sum())
    return qp, expected, actual, n_diff


@pytest.mark.parametrize("kind", STRESS_KINDS)
@pytest.mark.parametrize("spec", [
    rq.QuantSpec(bits=8, symmetric=False, granularity="channel", axis=0),
    rq.QuantSpec(bits=8, symmetric=True, granularity="channel", axis=1),
    rq.QuantSpec(bits=4, symmetric=False, granularity="channel", axis=0),
    rq.QuantSpec(bits=8, symmetric=False, granularity="tensor"),
], ids=["u8-ch0", "s8-ch1", "u4-ch0", "u8-tensor"])
def test_torch_equals_refquant_on_stress_tensors(spec, kind):
    x = stress_tensor(kind, (32, 96), seed=7)
    qp, expected, actual, n_diff = compare(x, spec)
    assert_quantized_close(actual, expected, spec, qparams=qp, x=x)   # no tolerance at all
    assert n_diff == 0


@settings(max_examples=40)
@given(specs_and_tensors(granularities=("tensor", "channel"), bits=(2, 3, 4, 5, 6, 7, 8),
                         rounding="half_even", restricted=False,
                         kinds=("normal", "heavy_tail", "outlier_channels", "clip_edges", "ties")))
def test_torch_differs_only_at_exact_ties(pair):
    spec, x = pair
    qp, expected, actual, n_diff = compare(x, spec)
    assert_quantized_close(actual, expected, spec, qparams=qp, x=x, max_tie_mismatches=n_diff)


def test_exact_ties_cause_is_the_float32_reciprocal():
    spec = rq.QuantSpec(bits=8, symmetric=False, granularity="channel", axis=0)
    x = tie_tensor(spec, (64, 256), seed=0)
    qp, expected, actual, n_diff = compare(x, spec)
    ties = int((np.mod(x / expand(qp.scale, x.shape, spec).astype(np.float64), 1) == 0.5).sum())
    assert 0 < n_diff < ties // 10, (n_diff, ties)
    assert_quantized_close(actual, expected, spec, qparams=qp, x=x, max_tie_mismatches=n_diff)
    # the rows whose scale is a power of two (1/s exact) agree completely
    m, _ = np.frexp(qp.scale)
    pow2 = m == 0.5
    assert pow2.any() and (actual[pow2] == expected[pow2]).all()
    # reproduce torch's arithmetic in NumPy float32: the same codes
    s = qp.scale[:, None]
    inv = (np.float32(1) / s).astype(np.float32)
    q = np.clip(np.rint((x * inv).astype(np.float32)) + qp.zero_point[:, None], 0, 255)
    np.testing.assert_array_equal(((q - qp.zero_point[:, None]) * s).astype(np.float32), actual)


def test_near_ties_need_a_stated_tolerance():
    spec = rq.QuantSpec(bits=4, symmetric=False, granularity="channel", axis=0)
    x = tie_tensor(spec, (64, 256), seed=2)
    x[::2] = np.nextafter(x[::2], np.float32(np.inf))             # one ulp above the ties
    x[1::4] = np.nextafter(x[1::4], np.float32(-np.inf))          # one ulp below
    qp, expected, actual, n_diff = compare(x, spec)
    assert n_diff > 0
    with pytest.raises(AssertionError, match="other mismatches"):
        assert_quantized_close(actual, expected, spec, qparams=qp, x=x, max_tie_mismatches=n_diff)
    assert_quantized_close(actual, expected, spec, qparams=qp, x=x, max_tie_mismatches=n_diff,
                           tie_tol=2**-22)
