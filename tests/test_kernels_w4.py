"""The W4 kernels on every CPU path: W4A16 (``refquant.kernels.w4_matmul``) and W4A8
(``refquant.kernels.w4a8_matmul``).

Oracles: the NumPy specification (``refquant.kernels.reference``) and, independently of it,
float64 dequantize-and-multiply and integer dot products written here from the unpacked codes;
ggml's own C Q8_0 quantizer (``tests/ggml_oracle.py``, ``ggml_quantize_chunk``) for the
activation codes. Every path this CPU can run is forced in turn (``REFQUANT_W4_PATH``,
``REFQUANT_W4A8_PATH``); a path it cannot run is skipped with the features it lacks.
"""

import numpy as np
import pytest

import ggml_oracle
import refquant as rq
from refquant.kernels import cpu_features, cpu_w4a8, reference, w4_tolerance, w4a8_matmul, \
    w4a8_tolerance


def _needs(path, paths):
    missing = cpu_features.missing_features(path, paths)
    if missing:
        pytest.skip(f"this CPU ({cpu_features.host_cpu_name()}) lacks {missing} for {path}")


def _case(rng, M, K, N, group_size, scale=1.0):
    G = -(-K // group_size)
    codes = rng.integers(0, 16, (N, K), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.1, (N, G)).astype(np.float32)
    zeros = rng.integers(0, 16, (N, G), dtype=np.int32)
    x = (scale * rng.standard_normal((M, K))).astype(np.float32)
    return x, codes, rq.pack(codes, 4, "int32"), scales, zeros


def _w_hat64(codes, scales, zeros, group_size):
    """float64 ``s (q - z)`` from the unpacked codes, written here."""
    g = np.arange(codes.shape[1]) // group_size
    return scales.astype(np.float64)[:, g] * (codes.astype(np.float64) - zeros[:, g])


# --- W4A16 ---------------------------------------------------------------------------------------

W4_PATHS = sorted(cpu_features.W4_PATHS)
W4_CASES = [(1, 576, 19, 128), (1, 4096, 33, 32), (3, 96, 5, 32), (2, 800, 6, 32), (2, 1536, 7, 64),
            (1, 640, 4, 160), (1, 64, 3, 256), (1, 100, 3, 16), (1, 37, 2, 8)]


@pytest.mark.parametrize("path", W4_PATHS)
@pytest.mark.parametrize("case", W4_CASES)
def test_w4_path_within_tolerance(path, case, monkeypatch):
    """Oracle: the specification (within ``w4_tolerance``) and float64 dequantize-and-multiply
    (within half of it: one side's bound)."""
    _needs(path, cpu_features.W4_PATHS)
    monkeypatch.setenv(cpu_features.W4_ENV, path)
    M, K, N, gs = case
    x, codes, packed, scales, zeros = _case(np.random.default_rng(K + N), M, K, N, gs)
    got = rq.w4_matmul(x, packed, scales, zeros, gs, backend="numba")
    tol = w4_tolerance(x, scales, zeros, gs)
    assert np.all(np.abs(got - reference.w4_matmul(x, packed, scales, zeros, gs)) <= tol)
    exact = x.astype(np.float64) @ _w_hat64(codes, scales, zeros, gs).T
    assert np.all(np.abs(got - exact) <= tol / 2)


@pytest.mark.parametrize("K, N, gs", [(576, 19, 128), (100, 5, 16), (37, 3, 8), (640, 4, 160),
                                      (60, 6, 12), (45, 3, 20)])
def test_dequantize_rows_is_the_specification_bitwise(K, N, gs):
    """Oracle: ``reference.dequantize_w4`` (NumPy ``s * (q - z)`` in float32), bit for bit, for
    every row block start, including groups that split a word and K not a multiple of 8."""
    from refquant.kernels import cpu_w4
    _, codes, packed, scales, zeros = _case(np.random.default_rng(K * N + gs), 1, K, N, gs)
    want = reference.dequantize_w4(packed, scales, zeros, gs, K)
    deq = cpu_w4.dequantize_rows()
    for n0, n1 in [(0, N), (1, N), (N - 1, N), (0, 1)]:
        got = deq(packed, scales, zeros, gs, K, n0, np.full((n1 - n0, K), np.nan, np.float32))
        assert np.array_equal(got.view(np.uint32), want[n0:n1].view(np.uint32)), (n0, n1)


@pytest.mark.parametrize("case", [(64, 576, 19, 128), (70, 100, 5, 16), (64, 45, 3, 20),
                                  (65, 1536, 40, 32)])
def test_w4_many_rows_take_the_blocked_blas_form(case, monkeypatch):
    """From ``BLAS_ROWS`` rows of x on, the numba backend multiplies dequantized blocks with BLAS
    (blocks made small here, so that several are used). Oracle: the specification (within
    ``w4_tolerance``) and float64 dequantize-and-multiply (within half of it)."""
    from refquant.kernels import cpu_w4
    M, K, N, gs = case
    assert M >= cpu_w4.BLAS_ROWS
    monkeypatch.setattr(cpu_w4, "BLAS_BLOCK_BYTES", 4 * K * 16)          # 16 rows per block
    calls = []
    blocked = cpu_w4.w4_matmul_blocked
    monkeypatch.setattr(cpu_w4, "w4_matmul_blocked", lambda *a: calls.append(1) or blocked(*a))
    x, codes, packed, scales, zeros = _case(np.random.default_rng(M + K + N), M, K, N, gs)
    got = rq.w4_matmul(x, packed, scales, zeros, gs, backend="numba")
    assert calls, "the blocked form was not taken"
    tol = w4_tolerance(x, scales, zeros, gs)
    assert np.all(np.abs(got - reference.w4_matmul(x, packed, scales, zeros, gs)) <= tol)
    exact = x.astype(np.float64) @ _w_hat64(codes, scales, zeros, gs).T
    assert np.all(np.abs(got - exact) <= tol / 2)


def test_w4_avx512_table_is_the_dequantized_weight_bitwise(monkeypatch):
    """One-hot rows of ``x`` read single weights: the ``vpermps`` table must be the
    specification's ``W_hat = fl32(s fl32(q - z))`` bit for bit (sums of exact zeros)."""
    _needs("avx512", cpu_features.W4_PATHS)
    monkeypatch.setenv(cpu_features.W4_ENV, "avx512")
    K, N, gs = 192, 9, 64
    _, codes, packed, scales, zeros = _case(np.random.default_rng(5), 1, K, N, gs)
    eye = np.eye(K, dtype=np.float32)
    got = rq.w4_matmul(eye, packed, scales, zeros, gs, backend="numba")          # [K, N]
    want = reference.dequantize_w4(packed, scales, zeros, gs, K).T
    assert np.array_equal(got.view(np.uint32), np.ascontiguousarray(want).view(np.uint32))


def test_w4_tolerance_fails_a_wrong_code(monkeypatch):
    """The bound is tight enough to catch one code off by one on the chosen path."""
    x, codes, packed, scales, zeros = _case(np.random.default_rng(2), 1, 256, 4, 32)
    wrong = codes.copy()
    wrong[0, 7] ^= 1
    got = rq.w4_matmul(x, rq.pack(wrong, 4, "int32"), scales, zeros, 32, backend="numba")
    want = reference.w4_matmul(x, packed, scales, zeros, 32)
    assert abs(got[0, 0] - want[0, 0]) > w4_tolerance(x, scales, zeros, 32)[0, 0]


def test_forcing_an_unknown_path_raises(monkeypatch):
    monkeypatch.setenv(cpu_features.W4_ENV, "avx9000")
    with pytest.raises(ValueError, match="avx9000"):
        cpu_features.w4_path()


def test_backends_detail_names_the_w4_paths():
    line = rq.backends(detail=True)["numba"]
    assert f"W4A16 path {cpu_features.w4_path()[0]}" in line
    assert f"W4A8 path {cpu_features.w4a8_path()[0]}" in line


# --- W4A8: activation codes --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "tiny", "huge"])
def test_act_codes_equal_ggml_q8_0(kind):
    """Oracle: ggml's ``quantize_row_q8_0_ref`` (through ``ggml_quantize_chunk``): its int8 codes
    bit for bit and its float16 ``d`` equal to ours rounded to float16."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 128)).astype(np.float32)
    if kind == "ties":                  # amax 127 -> d = 1, id = 1: x * id = k + 1/2 exactly
        x = np.round(rng.uniform(-120, 120, (4, 128))).astype(np.float32) + np.float32(0.5)
        x[:, ::32] = 127
    elif kind == "zeros":
        x[:, 32:64] = 0
    elif kind == "tiny":
        x[:, :32] *= np.float32(1e-30)
    elif kind == "huge":
        x *= np.float32(1e30)
    a, d = reference.quantize_act_q8(x)
    blocks = ggml_oracle.quantize(x, "Q8_0").reshape(4, 4, 34)                 # d f16, 32 i8
    assert np.array_equal(a.reshape(4, 4, 32), blocks[:, :, 2:].view(np.int8))
    with np.errstate(over="ignore"):                    # "huge": d is inf in float16 as in ggml
        d16 = d.astype(np.float16)
    assert np.array_equal(d16, blocks[:, :, :2].copy().view(np.float16)[..., 0])


# --- W4A8: the specification and the kernels -----------------------------------------------------

W4A8_PATHS = sorted(cpu_features.W4A8_PATHS)
W4A8_CASES = [(1, 576, 19, 128), (1, 4096, 33, 32), (3, 96, 5, 32), (2, 1536, 7, 64),
              (1, 640, 4, 160), (1, 256, 3, 256), (2, 2048, 17, 2048), (1, 32, 1, 32)]


@pytest.mark.parametrize("case", W4A8_CASES)
def test_w4a8_spec_equals_float64_oracle(case):
    """Oracle: ``sum_k (s (q - z)) (d a)`` in float64 from the unpacked codes and ggml's Q8_0
    codes; the specification rounds the same sum once to float32."""
    M, K, N, gs = case
    x, codes, packed, scales, zeros = _case(np.random.default_rng(K * N), M, K, N, gs)
    blocks = ggml_oracle.quantize(x, "Q8_0").reshape(M, K // 32, 34)
    a = blocks[:, :, 2:].copy().view(np.int8).reshape(M, K).astype(np.float64)
    _, d = reference.quantize_act_q8(x)
    x_hat = a * np.repeat(d.astype(np.float64), 32, axis=1)                     # [M, K]
    exact = x_hat @ _w_hat64(codes, scales, zeros, gs).T
    got = reference.w4a8_matmul(x, packed, scales, zeros, gs)
    assert np.all(np.abs(got - exact) <= 0.5 * np.spacing(np.abs(exact).astype(np.float32))
                  + 1e-12 * np.abs(x_hat) @ np.abs(_w_hat64(codes, scales, zeros, gs)).T)


@pytest.mark.parametrize("path", W4A8_PATHS)
@pytest.mark.parametrize("case", W4A8_CASES)
def test_w4a8_path_within_tolerance(path, case, monkeypatch):
    """Oracle: the specification, within ``w4a8_tolerance``."""
    _needs(path, cpu_features.W4A8_PATHS)
    monkeypatch.setenv(cpu_features.W4A8_ENV, path)
    M, K, N, gs = case
    x, codes, packed, scales, zeros = _case(np.random.default_rng(K + 7 * N), M, K, N, gs)
    got = w4a8_matmul(x, packed, scales, zeros, gs, backend="numba")
    want = w4a8_matmul(x, packed, scales, zeros, gs, backend="numpy")
    assert got.dtype == np.float32
    assert np.all(np.abs(got - want) <= w4a8_tolerance(x, scales, zeros, gs))


@pytest.mark.parametrize("path", W4A8_PATHS)
def test_w4a8_zero_and_tiny_blocks(path, monkeypatch):
    """Blocks of zeros and blocks whose ``1/d`` overflows contribute exactly nothing: with every
    block such, ``y`` is exactly 0 on every path (hand value)."""
    _needs(path, cpu_features.W4A8_PATHS)
    monkeypatch.setenv(cpu_features.W4A8_ENV, path)
    x, codes, packed, scales, zeros = _case(np.random.default_rng(3), 2, 256, 5, 32)
    x[0] = 0
    x[1] = np.float32(1e-40)
    assert np.array_equal(w4a8_matmul(x, packed, scales, zeros, 32, backend="numba"),
                          np.zeros((2, 5), np.float32))


@pytest.mark.parametrize("K", [128, 576, 4096])
def test_w4a8_vnni_word_dots_exact(K):
    """The ``vpdpbusd`` chunk dot products bit for bit; oracle: int64 dot products of 8
    consecutive codes and activation codes, written here from the unpacked codes."""
    _needs("avx512_vnni", cpu_features.W4A8_PATHS)
    x, codes, packed, scales, zeros = _case(np.random.default_rng(K), 3, K, 11, 32, scale=50.0)
    x[0, :] = np.where(np.arange(K) % 2, 127, -128).astype(np.float32)        # extremes
    codes[0] = 15
    packed = rq.pack(codes, 4, "int32")
    a, _ = reference.quantize_act_q8(x)
    n = 16 * (K // 128)
    want = np.einsum("nwi,mwi->mnw", codes[:, : 8 * n].reshape(11, n, 8).astype(np.int64),
                     a[:, : 8 * n].reshape(3, n, 8).astype(np.int64))
    assert np.array_equal(cpu_w4a8.word_dots(x, packed), want)


def test_w4a8_tolerance_fails_a_wrong_code():
    x, codes, packed, scales, zeros = _case(np.random.default_rng(4), 1, 256, 4, 32)
    wrong = codes.copy()
    wrong[0, 3] ^= 1
    got = w4a8_matmul(x, rq.pack(wrong, 4, "int32"), scales, zeros, 32, backend="numba")
    want = reference.w4a8_matmul(x, packed, scales, zeros, 32)
    assert abs(got[0, 0] - want[0, 0]) > w4a8_tolerance(x, scales, zeros, 32)[0, 0]


@pytest.mark.parametrize("mutate, msg", [
    (lambda a: dict(a, x=a["x"].astype(np.float64)), "x must have dtype float32"),
    (lambda a: dict(a, x=a["x"][:, :48], packed=a["packed"][:, :6]), "K % 32 == 0.*K=48"),
    (lambda a: dict(a, group_size=16, scales=np.ones((3, 4), np.float32),
                    zeros=np.zeros((3, 4), np.int32)), "group_size=16"),
    (lambda a: dict(a, scales=-a["scales"]), "scales must be finite and > 0, got -"),
    (lambda a: dict(a, scales=np.where(a["scales"] > 0, np.nan, 1).astype(np.float32)), "nan"),
    (lambda a: dict(a, zeros=a["zeros"] + 16), r"zeros must be integers in \[0, 15\]"),
    (lambda a: dict(a, packed=a["packed"].astype(np.int64)), "packed must have dtype int32"),
    (lambda a: dict(a, scales=a["scales"][:, :1]), "scales must have shape"),
    (lambda a: dict(a, backend="cuda"), "no 'cuda' kernel"),
    (lambda a: dict(a, backend="tpu"), "unknown backend 'tpu'"),
])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_w4a8_bad_input(mutate, msg, backend):
    x, codes, packed, scales, zeros = _case(np.random.default_rng(0), 1, 64, 3, 32)
    args = mutate(dict(x=x, packed=packed, scales=scales, zeros=zeros, group_size=32,
                       backend=backend))
    with pytest.raises(ValueError, match=msg):
        w4a8_matmul(args["x"], args["packed"], args["scales"], args["zeros"], args["group_size"],
                    backend=args["backend"])


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros_tiny", "huge"])
@pytest.mark.parametrize("gs", [32, 128, 160])
def test_w4a8_compiled_activation_pass_equals_numpy(kind, gs):
    """``cpu_w4a8.prepare_act`` (the kernel's compiled per-call pass) against the NumPy one
    (``_per_call`` on ``reference.quantize_act_q8``): codes, ``d`` and the arranged codes bit for
    bit, ``D_g`` equal (both float64 sums rounded once)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 640)).astype(np.float32)
    if kind == "ties":
        x = np.round(rng.uniform(-120, 120, (3, 640))).astype(np.float32) + np.float32(0.5)
        x[:, ::32] = 127
    elif kind == "zeros_tiny":
        x[0, :64] = 0
        x[1, 32:96] = np.float32(1e-40)
    elif kind == "huge":
        x *= np.float32(3e33)               # D_g = sum d A stays inside float32
    got = cpu_w4a8.prepare_act()(x, gs)
    want = cpu_w4a8._per_call(x, gs)[:5]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and np.array_equal(g, w)


# --- W4Weights: checked once ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("case", [(1, 576, 19, 128), (2, 4096, 9, 32), (1, 37, 3, 8)])
def test_w4weights_equal_the_per_call_api(case, backend):
    """Oracle: ``w4_matmul`` / ``w4a8_matmul`` on the same operands, bit for bit."""
    M, K, N, gs = case
    x, codes, packed, scales, zeros = _case(np.random.default_rng(K), M, K, N, gs)
    w = rq.kernels.W4Weights.prepare(packed, scales, zeros, gs, K)
    assert np.array_equal(w.matmul(x, backend=backend),
                          rq.w4_matmul(x, packed, scales, zeros, gs, backend=backend))
    if K % 32 == 0:
        assert np.array_equal(w.matmul_a8(x, backend=backend),
                              w4a8_matmul(x, packed, scales, zeros, gs, backend=backend))
    else:
        with pytest.raises(ValueError, match="K % 32"):
            w.matmul_a8(x, backend=backend)


def test_w4weights_check_once_and_then_x():
    x, codes, packed, scales, zeros = _case(np.random.default_rng(0), 1, 64, 3, 32)
    with pytest.raises(ValueError, match="scales must be finite and > 0"):
        rq.kernels.W4Weights.prepare(packed, -scales, zeros, 32, 64)
    with pytest.raises(ValueError, match=r"ceil\(K/8\)"):
        rq.kernels.W4Weights.prepare(packed, scales, zeros, 32, 128)
    w = rq.kernels.W4Weights.prepare(packed, scales, zeros, 32, 64)
    with pytest.raises(ValueError, match="K=64 columns"):
        w.matmul(x[:, :32])
    with pytest.raises(ValueError, match="float32"):
        w.matmul_a8(x.astype(np.float64))
    with pytest.raises(ValueError, match="NaN"):
        w.matmul(np.full_like(x, np.nan))
