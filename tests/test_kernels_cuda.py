"""The numba.cuda kernels against the NumPy specification.

CI runs this file in its own pytest process under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1 pytest -m cuda``; the variable must be set before Numba is imported),
where every GPU thread is a Python thread, so the shapes are tiny. On a machine with a GPU the
same file runs unchanged on the device (``pytest -m cuda``) and adds a large-K case.
"""

import os

import numpy as np
import pytest

import refquant as rq
from refquant.kernels import reference, uint8_int8_matmul, w4_tolerance

pytestmark = pytest.mark.cuda

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


@pytest.fixture(scope="module", autouse=True)
def _need_cuda():
    if "cuda" not in rq.backends():
        pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set "
                    "(run: NUMBA_ENABLE_CUDASIM=1 pytest -m cuda)")


def _rand_i8(rng, shape):
    return rng.integers(-128, 128, shape, dtype=np.int8)


# shapes: 1, primes, not multiples of the 16-step in k or of the 64 x 64 block tile, one exact
# k step, several k steps, several block tiles in M and N (the last ones partial)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 5, 3), (3, 17, 2), (16, 16, 16), (17, 7, 19),
                                   (2, 33, 5), (67, 19, 71)])
def test_cuda_int8_equals_reference(shape):
    M, K, N = shape
    rng = np.random.default_rng(M + 10 * K + 100 * N)
    a, b = _rand_i8(rng, (M, K)), _rand_i8(rng, (K, N))
    got = rq.int8_matmul(a, b, backend="cuda")
    assert got.dtype == np.int32 and got.shape == (M, N)
    assert np.array_equal(got, reference.int8_matmul(a, b))


def test_cuda_int8_extremes_accumulation():
    # -128*-128 and -128*127 at every k; K chosen so the sums pass 2^24 (float32 would round)
    # and 2^16; on a real GPU, K_MAX itself (sums up to 2^31 - 2^14)
    K = 1031 if SIMULATED else reference.K_MAX
    a = np.full((2, K), -128, np.int8)
    a[1, ::2] = 127
    b = np.full((K, 3), -128, np.int8)
    b[:, 1] = 127
    b[::5, 2] = 0
    want = a.astype(np.int64) @ b.astype(np.int64)                    # int64 oracle
    got = rq.int8_matmul(a, b, backend="cuda")
    assert np.abs(want).max() > 2**24
    assert np.array_equal(got, want)


def test_cuda_uint8_zero_points_equal_reference():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (3, 21), dtype=np.uint8)
    b = _rand_i8(rng, (21, 4))
    got = uint8_int8_matmul(a, b, 131, -9, backend="cuda")
    assert np.array_equal(got, reference.uint8_int8_matmul(a, b, 131, -9))


def _w4_case(rng, M, K, N, group_size):
    G = -(-K // group_size)
    codes = rng.integers(0, 16, (N, K), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.1, (N, G)).astype(np.float32)
    zeros = rng.integers(0, 16, (N, G), dtype=np.int32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    return x, codes, rq.pack(codes, 4, "int32"), scales, zeros


# (M, K, N, group_size): groups of whole words and not; more rows than one block's 32 (the last
# block and warp partly empty) and more words than a warp's 32 lanes
@pytest.mark.parametrize("case", [(1, 37, 3, 8), (2, 64, 2, 32), (1, 130, 2, 128), (1, 21, 2, 5),
                                  (2, 300, 37, 64), (1, 300, 9, 20)])
def test_cuda_w4_within_tolerance_of_reference(case):
    M, K, N, gs = case
    rng = np.random.default_rng(K + gs)
    x, codes, packed, scales, zeros = _w4_case(rng, M, K, N, gs)
    got = rq.w4_matmul(x, packed, scales, zeros, gs, backend="cuda")
    want = rq.w4_matmul(x, packed, scales, zeros, gs, backend="numpy")
    assert got.dtype == np.float32 and got.shape == (M, N)
    assert np.all(np.abs(got - want) <= w4_tolerance(x, scales, zeros, gs))
    # and an independent float64 dequantization from the unpacked codes
    g_idx = np.arange(K) // gs
    W = scales[:, g_idx].astype(np.float64) * (codes.astype(np.float64) - zeros[:, g_idx])
    assert np.allclose(got, x.astype(np.float64) @ W.T, rtol=1e-5, atol=1e-5)


def test_cuda_bad_input_raises_before_launch():
    with pytest.raises(ValueError, match="dtype int8"):
        rq.int8_matmul(np.zeros((2, 2), np.int16), np.zeros((2, 2), np.int8), backend="cuda")


def test_cuda_w4_bad_parameters_raise_before_launch():
    """Negative scales and out-of-range zero points are named, as on the other backends."""
    rng = np.random.default_rng(6)
    x, codes, packed, scales, zeros = _w4_case(rng, 1, 16, 2, 8)
    neg = scales.copy()
    neg[1, 1] = -0.25
    with pytest.raises(ValueError, match=r"got -0.25 at index \(1, 1\)"):
        rq.w4_matmul(x, packed, neg, zeros, 8, backend="cuda")
    big = zeros.copy()
    big[0, 1] = 16
    with pytest.raises(ValueError, match=r"got 16 at index \(0, 1\)"):
        rq.w4_matmul(x, packed, scales, big, 8, backend="cuda")
