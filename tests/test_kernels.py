"""The integer matmul core: the NumPy specification against independent oracles, and the Numba
backend against the specification (bit for bit for integers, a stated float32 bound for W4).

Oracles: Python-int loops (no overflow possible) and int64 NumPy products on small shapes; for
W4, a float64 dequantize-and-multiply computed here from the unpacked codes.
"""

import numpy as np
import pytest

import refquant as rq
from refquant.kernels import K_MAX, reference, uint8_int8_matmul, w4_tolerance

SHAPES = [(1, 1, 1), (1, 7, 5), (2, 3, 1), (7, 13, 17), (8, 16, 16), (9, 31, 33), (13, 64, 47),
          (31, 37, 29), (64, 300, 100), (5, 1000, 3), (40, 5, 70)]


def _rand_i8(rng, shape):
    return rng.integers(-128, 128, shape, dtype=np.int8)


def _python_matmul(a, b):
    """A scalar oracle in Python integers."""
    M, K = a.shape
    N = b.shape[1]
    return [[sum(int(a[m, k]) * int(b[k, n]) for k in range(K)) for n in range(N)] for m in range(M)]


# --- the specification against oracles ----------------------------------------------------


def test_reference_matches_python_integers():
    rng = np.random.default_rng(0)
    a, b = _rand_i8(rng, (3, 11)), _rand_i8(rng, (11, 4))
    assert reference.int8_matmul(a, b).tolist() == _python_matmul(a, b)


def test_reference_does_not_wrap_like_numpy_int8():
    a = np.full((1, 4), -128, np.int8)
    b = np.full((4, 1), -128, np.int8)
    assert (a @ b).dtype == np.int8                      # NumPy's own product wraps in int8...
    assert reference.int8_matmul(a, b)[0, 0] == 4 * 16384  # ...the specification does not


def test_reference_at_k_max_extremes():
    # K_MAX rows of (-128)(-128): 131071 * 2^14 = 2^31 - 2^14, the largest sum, still exact
    K = K_MAX
    a = np.full((1, K), -128, np.int8)
    b = np.full((K, 2), -128, np.int8)
    b[:, 1] = 127
    c = reference.int8_matmul(a, b)
    assert c.tolist() == [[K * 16384, -K * 16256]]
    assert K * 16384 <= 2**31 - 1 < (K + 1) * 16384


def test_k_above_bound_raises():
    with pytest.raises(ValueError, match="K=131072"):
        rq.int8_matmul(np.zeros((1, K_MAX + 1), np.int8), np.zeros((K_MAX + 1, 1), np.int8),
                       backend="numpy")


@pytest.mark.parametrize("bad", [
    (np.zeros((2, 3), np.int16), np.zeros((3, 2), np.int8), "dtype int8"),
    (np.zeros((2, 3), np.int8), np.zeros((3, 2), np.uint8), "dtype int8"),
    (np.zeros((2, 3), np.int8), np.zeros((4, 2), np.int8), "inner dimensions"),
    (np.zeros(3, np.int8), np.zeros((3, 2), np.int8), "2-D"),
    (np.zeros((0, 3), np.int8), np.zeros((3, 2), np.int8), "empty"),
])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_int8_bad_input(bad, backend):
    a, b, msg = bad
    with pytest.raises(ValueError, match=msg):
        rq.int8_matmul(a, b, backend=backend)


@pytest.mark.parametrize("backend", ["gpu", "", None, "NUMPY"])
def test_unknown_backend_raises(backend):
    a = np.zeros((1, 1), np.int8)
    with pytest.raises(ValueError, match="unknown backend"):
        rq.int8_matmul(a, a, backend=backend)


def test_backends_and_auto():
    avail = rq.backends()
    assert avail[:2] == ["numpy", "numba"]
    from refquant.kernels import auto_backend
    assert auto_backend() in avail
    if "cuda" not in avail:
        a = np.zeros((1, 1), np.int8)
        with pytest.raises(ValueError, match="not available"):
            rq.int8_matmul(a, a, backend="cuda")



def test_asking_for_numba_does_not_import_numba_cuda():
    # importing numba.cuda takes over a second; only backend="cuda" or "auto" needs it, and
    # "auto" only where a CUDA driver loads (or the simulator is on)
    import os
    import subprocess
    import sys
    code = ("import sys, numpy as np, refquant as rq\n"
            "a = np.zeros((1, 1), np.int8)\n"
            "rq.int8_matmul(a, a, backend='numba'); rq.int8_matmul(a, a, backend='numpy')\n"
            "print('numba.cuda' in sys.modules)\n"
            "from refquant.kernels import _cuda_driver_loadable, auto_backend\n"
            "auto_backend()\n"
            "print(_cuda_driver_loadable(), 'numba.cuda' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_ENABLE_CUDASIM", "NUMBA_CUDA_DRIVER")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out[0] == "False"                         # explicit backends probe only themselves
    driver, imported = out[1:]
    if driver == "False":
        assert imported == "False"                   # no driver: no GPU, numba.cuda not needed

# --- numba against the specification --------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_numba_int8_equals_reference(shape):
    M, K, N = shape
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    a, b = _rand_i8(rng, (M, K)), _rand_i8(rng, (K, N))
    got = rq.int8_matmul(a, b, backend="numba")
    assert got.dtype == np.int32 and got.shape == (M, N)
    assert np.array_equal(got, reference.int8_matmul(a, b))


@pytest.mark.parametrize("M", [1, 5, 12])
def test_numba_int8_extremes_large_k(M):
    # every product at its extreme: -128*-128 and -128*127, K large enough that a 16-bit or
    # float32 accumulator would be wrong (the sums reach ~2^30)
    K = 65537
    rng = np.random.default_rng(M)
    a = np.full((M, K), -128, np.int8)
    a[1:, 1::2] = 127                                   # row 0 all -128, others alternate
    b = _rand_i8(rng, (K, 19))
    b[:, 0] = -128                                      # C[0, 0] = K 2^14
    b[:, 1] = 127                                       # C[0, 1] = -K 16256
    want = a.astype(np.int64) @ b.astype(np.int64)                  # int64 oracle
    got = rq.int8_matmul(a, b, backend="numba")
    assert np.abs(want).max() > 2**29
    assert np.array_equal(got, want)


def test_numba_int8_at_k_max():
    K = K_MAX
    a = np.full((9, K), -128, np.int8)
    b = np.full((K, 3), -128, np.int8)
    got = rq.int8_matmul(a, b, backend="numba")
    assert np.all(got == K * 16384)


def test_numba_int8_noncontiguous_inputs_and_no_mutation():
    rng = np.random.default_rng(3)
    a = _rand_i8(rng, (20, 50))[::2, ::-1]                           # strided views
    b = _rand_i8(rng, (50, 30)).T.copy().T
    a0, b0 = a.copy(), b.copy()
    assert np.array_equal(rq.int8_matmul(a, b, backend="numba"), reference.int8_matmul(a, b))
    assert np.array_equal(a, a0) and np.array_equal(b, b0)


# --- uint8 x int8 with zero points -----------------------------------------------------------


def test_uint8_reference_matches_python_integers():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (3, 9), dtype=np.uint8)
    b = _rand_i8(rng, (9, 5))
    want = [[sum((int(a[m, k]) - 200) * (int(b[k, n]) + 7) for k in range(9)) for n in range(5)]
            for m in range(3)]
    assert reference.uint8_int8_matmul(a, b, 200, -7).tolist() == want


@pytest.mark.parametrize("zp", [(0, 0), (128, 0), (255, 0), (37, -3), (0, 127), (255, -128)])
@pytest.mark.parametrize("shape", [(1, 5, 3), (9, 33, 17), (16, 100, 20)])
def test_uint8_zero_points_numba_equals_reference(zp, shape):
    M, K, N = shape
    rng = np.random.default_rng(K + N)
    a = rng.integers(0, 256, (M, K), dtype=np.uint8)
    a[0, :] = 255
    b = _rand_i8(rng, (K, N))
    b[:, 0] = -128
    got = uint8_int8_matmul(a, b, *zp, backend="numba")
    assert np.array_equal(got, reference.uint8_int8_matmul(a, b, *zp))


def test_uint8_zero_point_extremes_near_bound():
    # (0 - 255) * (-128 - 127) = 65025 per product, K at the stated bound 32896 for |b_z| = 128
    K = (2**31 - 1) // (255 * 256)
    a = np.zeros((8, K), np.uint8)
    b = np.full((K, 2), -128, np.int8)
    got = uint8_int8_matmul(a, b, 255, 127, backend="numba")
    assert np.all(got == K * 255 * 255)
    with pytest.raises(ValueError, match="exceeds"):
        uint8_int8_matmul(np.zeros((1, K + 1), np.uint8),
                                     np.zeros((K + 1, 1), np.int8), 255, -128, backend="numba")


@pytest.mark.parametrize("zp", [(-1, 0), (256, 0), (0, 128), (1.5, 0), (True, 0)])
def test_uint8_bad_zero_points(zp):
    a = np.zeros((1, 2), np.uint8)
    b = np.zeros((2, 1), np.int8)
    with pytest.raises(ValueError, match="zero"):
        uint8_int8_matmul(a, b, *zp, backend="numpy")


# --- W4 ----------------------------------------------------------------------------------------


def _w4_case(rng, M, K, N, group_size):
    G = -(-K // group_size)
    codes = rng.integers(0, 16, (N, K), dtype=np.uint8)
    packed = rq.pack(codes, 4, "int32")
    scales = rng.uniform(0.001, 0.1, (N, G)).astype(np.float32)
    zeros = rng.integers(0, 16, (N, G), dtype=np.int32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    return x, codes, packed, scales, zeros


def _w4_oracle(x, codes, scales, zeros, group_size):
    """float64 dequantize-then-multiply from the unpacked codes, written here independently."""
    N, K = codes.shape
    W = np.empty((N, K))
    for k in range(K):
        g = k // group_size
        W[:, k] = scales[:, g].astype(np.float64) * (codes[:, k].astype(np.float64) - zeros[:, g])
    return x.astype(np.float64) @ W.T


W4_CASES = [(1, 8, 1, 8), (1, 64, 5, 32), (1, 37, 3, 8), (3, 100, 7, 16), (1, 576, 19, 128),
            (5, 200, 9, 64), (2, 45, 4, 5), (1, 30, 6, 7), (9, 130, 11, 128), (1, 9, 2, 1)]


@pytest.mark.parametrize("case", W4_CASES)
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_w4_matmul_within_tolerance_of_float64_oracle(case, backend):
    M, K, N, gs = case
    rng = np.random.default_rng(K * N + gs)
    x, codes, packed, scales, zeros = _w4_case(rng, M, K, N, gs)
    y = rq.w4_matmul(x, packed, scales, zeros, gs, backend=backend)
    assert y.dtype == np.float32 and y.shape == (M, N)
    err = np.abs(y - _w4_oracle(x, codes, scales, zeros, gs))
    tol = w4_tolerance(x, scales, zeros, gs) / 2            # one side's bound vs exact
    assert np.all(err <= tol), float((err / tol).max())


@pytest.mark.parametrize("case", W4_CASES)
def test_w4_numba_equals_reference_within_stated_tolerance(case):
    M, K, N, gs = case
    rng = np.random.default_rng(K + N + gs)
    x, codes, packed, scales, zeros = _w4_case(rng, M, K, N, gs)
    got = rq.w4_matmul(x, packed, scales, zeros, gs, backend="numba")
    want = rq.w4_matmul(x, packed, scales, zeros, gs, backend="numpy")
    assert np.all(np.abs(got - want) <= w4_tolerance(x, scales, zeros, gs))


def test_w4_tolerance_is_tight_enough_to_fail():
    # a single code off by one in one group moves the result by |x_k s| >> the tolerance
    rng = np.random.default_rng(9)
    x, codes, packed, scales, zeros = _w4_case(rng, 1, 256, 4, 64)
    codes2 = codes.copy()
    codes2[0, 10] = (codes2[0, 10] + 1) % 16
    y = rq.w4_matmul(x, rq.pack(codes2, 4, "int32"), scales, zeros, 64, backend="numba")
    err = np.abs(y - _w4_oracle(x, codes, scales, zeros, 64))
    assert err[0, 0] > w4_tolerance(x, scales, zeros, 64)[0, 0]


def test_w4_gemv_bundled_layer_shape():
    # a real-sized decoding GEMV: hidden 576 -> FFN 1536, groups of 128 (last group short at 576)
    rng = np.random.default_rng(11)
    x, codes, packed, scales, zeros = _w4_case(rng, 1, 576, 1536, 128)
    got = rq.w4_matmul(x, packed, scales, zeros, 128, backend="numba")
    assert np.all(np.abs(got - _w4_oracle(x, codes, scales, zeros, 128))
                  <= w4_tolerance(x, scales, zeros, 128) / 2)


@pytest.mark.parametrize("mutate, msg", [
    (lambda a: dict(a, x=a["x"].astype(np.float64)), "x must have dtype float32"),
    (lambda a: dict(a, x=np.where(np.arange(16) == 3, np.nan, a["x"]).astype(np.float32)), "NaN"),
    (lambda a: dict(a, packed=a["packed"].astype(np.int64)), "packed must have dtype int32"),
    (lambda a: dict(a, packed=a["packed"][:, :1]), r"ceil\(K/8\)"),
    (lambda a: dict(a, scales=a["scales"][:, :1]), "scales must have shape"),
    (lambda a: dict(a, zeros=a["zeros"] + 16), r"zeros must be integers in \[0, 15\]"),
    (lambda a: dict(a, zeros=a["zeros"].astype(np.float32)), "zeros must be integers"),
    (lambda a: dict(a, group_size=0), "group_size"),
    (lambda a: dict(a, scales=np.full_like(a["scales"], np.inf)), "finite"),
])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_w4_bad_input(mutate, msg, backend):
    rng = np.random.default_rng(0)
    x, codes, packed, scales, zeros = _w4_case(rng, 1, 16, 3, 8)
    args = mutate(dict(x=x, packed=packed, scales=scales, zeros=zeros, group_size=8))
    with pytest.raises(ValueError, match=msg):
        rq.w4_matmul(args["x"], args["packed"], args["scales"], args["zeros"], args["group_size"],
                     backend=backend)


def test_w4_nonzero_padding_bits_rejected():
    rng = np.random.default_rng(1)
    x, codes, packed, scales, zeros = _w4_case(rng, 1, 12, 2, 4)
    packed = packed.copy()
    packed[0, -1] |= np.int32(1 << 20)                       # code 13 of a K=12 row
    with pytest.raises(ValueError, match="padding"):
        rq.w4_matmul(x, packed, scales, zeros, 4, backend="numba")


# --- the operand checks name the offending value -------------------------------------------------


@pytest.mark.parametrize("bad_scale, shown", [(-0.5, "-0.5"), (0.0, "0.0"), (np.nan, "nan"),
                                              (-np.inf, "-inf")])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_w4_rejects_scales_not_finite_positive(bad_scale, shown, backend):
    """A scale <= 0 or not finite raises ValueError naming the value and its [n, g] index
    (oracle: the value planted here)."""
    rng = np.random.default_rng(2)
    x, codes, packed, scales, zeros = _w4_case(rng, 1, 16, 3, 8)
    scales = scales.copy()
    scales[2, 1] = bad_scale
    with pytest.raises(ValueError, match=rf"scales must be finite and > 0, got {shown} at index \(2, 1\)"):
        rq.w4_matmul(x, packed, scales, zeros, 8, backend=backend)


@pytest.mark.parametrize("bad_zero", [-1, 16, 255])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_w4_rejects_zero_points_outside_the_code_range(bad_zero, backend):
    """A zero point outside the 4-bit code range [0, 15] is named with its index."""
    rng = np.random.default_rng(3)
    x, codes, packed, scales, zeros = _w4_case(rng, 1, 16, 3, 8)
    zeros = zeros.copy()
    zeros[1, 0] = bad_zero
    with pytest.raises(ValueError, match=rf"\[0, 15\].*got {bad_zero} at index \(1, 0\)"):
        rq.w4_matmul(x, packed, scales, zeros, 8, backend=backend)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_w4_scales_must_match_the_float32_of_x(dtype, backend):
    """Scales of another float dtype are rejected (a backend would round them silently)."""
    rng = np.random.default_rng(4)
    x, codes, packed, scales, zeros = _w4_case(rng, 1, 16, 3, 8)
    with pytest.raises(ValueError, match=f"scales must have dtype float32.*got {np.dtype(dtype)}"):
        rq.w4_matmul(x, packed, scales.astype(dtype), zeros, 8, backend=backend)


def test_w4_nan_in_x_is_named():
    rng = np.random.default_rng(5)
    x, codes, packed, scales, zeros = _w4_case(rng, 2, 16, 3, 8)
    x = x.copy()
    x[1, 7] = np.inf
    with pytest.raises(ValueError, match=r"x contains NaN or Inf: inf at index \(1, 7\)"):
        rq.w4_matmul(x, packed, scales, zeros, 8, backend="numpy")


@pytest.mark.parametrize("zp, name, shown", [((256, 0), "a_zero", "256"), ((-1, 0), "a_zero", "-1"),
                                             ((0, 128), "b_zero", "128"), ((0, -129), "b_zero", "-129")])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_uint8_zero_point_errors_name_the_value(zp, name, shown, backend):
    a = np.zeros((1, 2), np.uint8)
    b = np.zeros((2, 1), np.int8)
    with pytest.raises(ValueError, match=rf"{name} must be an integer in \[.*\], got {shown}$"):
        uint8_int8_matmul(a, b, *zp, backend=backend)


def test_uint8_k_bound_for_zero_weight_zero_point_is_65793():
    """The stated product bound by hand: 255 * 128 = 32640 per product, floor((2^31 - 1) / 32640)
    = 65793; K = 65793 is accepted and exact (oracle: int64 NumPy), K = 65794 raises."""
    K = 65793
    assert K * 32640 <= 2**31 - 1 < (K + 1) * 32640
    a = np.zeros((1, K), np.uint8)
    b = np.full((K, 1), -128, np.int8)
    got = uint8_int8_matmul(a, b, 255, 0, backend="numpy")
    assert got[0, 0] == K * 255 * 128 == (a.astype(np.int64) - 255) @ b.astype(np.int64)
    with pytest.raises(ValueError, match="K=65794 exceeds 65793"):
        uint8_int8_matmul(np.zeros((1, K + 1), np.uint8), np.zeros((K + 1, 1), np.int8), 255, 0,
                          backend="numpy")


def test_importing_the_kernels_compiles_nothing():
    """A fresh interpreter imports refquant, the dispatcher and both CPU kernel modules without
    Numba compiling (oracle: ``numba`` absent from ``sys.modules`` afterwards)."""
    import os
    import subprocess
    import sys
    code = ("import sys, refquant, refquant.kernels, refquant.kernels.cpu, refquant.kernels.cuda\n"
            "print(any(m == 'numba' or m.startswith('numba.') for m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
