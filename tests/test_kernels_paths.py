"""The CPU kernel paths chosen from the host's features (refquant.kernels.cpu_features).

Oracle: the NumPy specification ``refquant.kernels.reference.int8_matmul`` (int32 products of
int8 operands summed by NumPy), bit for bit, for every int8 path this CPU can run; a path the CPU
cannot run is skipped with the features it lacks, and forcing it raises.
"""

import numpy as np
import pytest

import refquant as rq
from refquant.kernels import K_MAX, cpu_features, cpu_int8, reference

PATHS = sorted(cpu_features.INT8_PATHS)


def _needs(path):
    missing = cpu_features.missing_features(path)
    if missing:
        pytest.skip(f"this CPU ({cpu_features.host_cpu_name()}) lacks {missing} for {path}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(8, 4, 32), (9, 7, 33), (16, 1, 1), (17, 300, 70),
                                   (64, 576, 1536), (40, 1027, 65), (8, 513, 31)])
def test_int8_path_equals_reference(path, shape, monkeypatch):
    _needs(path)
    monkeypatch.setenv(cpu_features.ENV, path)
    M, K, N = shape
    rng = np.random.default_rng(M * 1000 + K + N)
    a = rng.integers(-128, 128, (M, K), dtype=np.int8)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    assert cpu_features.int8_path()[0] == path
    assert np.array_equal(rq.int8_matmul(a, b, backend="numba"), reference.int8_matmul(a, b))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fill", [(-128, -128), (127, -128), (-128, 127)])
def test_int8_path_extremes_at_k_max(path, fill, monkeypatch):
    """At K = K_MAX the sum of (A + 128) B of the VNNI path leaves int32 (up to 255 * 128 * K);
    the wrapped difference must still be the exact product (hand value: K * a * b)."""
    _needs(path)
    monkeypatch.setenv(cpu_features.ENV, path)
    a = np.full((9, K_MAX), fill[0], np.int8)
    b = np.full((K_MAX, 3), fill[1], np.int8)
    got = rq.int8_matmul(a, b, backend="numba")
    assert (got == K_MAX * fill[0] * fill[1]).all()


@pytest.mark.parametrize("path", PATHS)
def test_int8_path_noncontiguous_inputs_not_mutated(path, monkeypatch):
    _needs(path)
    monkeypatch.setenv(cpu_features.ENV, path)
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (40, 130), dtype=np.int8)[:, ::2]
    b = rng.integers(-128, 128, (65, 70), dtype=np.int8).T[:, :65].T
    a0, b0 = a.copy(), b.copy()
    assert np.array_equal(rq.int8_matmul(a, b, backend="numba"), reference.int8_matmul(a, b))
    assert np.array_equal(a, a0) and np.array_equal(b, b0)


def test_forcing_a_path_the_cpu_cannot_run_raises(monkeypatch):
    monkeypatch.setattr(cpu_features, "host_features", lambda: frozenset({"avx2"}))
    monkeypatch.setenv(cpu_features.ENV, "avx512_vnni")
    with pytest.raises(ValueError, match="avx512vnni"):
        cpu_features.int8_path()
    monkeypatch.delenv(cpu_features.ENV)
    path, why = cpu_features.int8_path()
    assert path == "pmaddwd" and "avx512vnni" in why          # never selected where it cannot run


def test_unknown_path_raises(monkeypatch):
    monkeypatch.setenv(cpu_features.ENV, "sse9")
    with pytest.raises(ValueError, match="sse9"):
        cpu_features.int8_path()


def test_backends_detail_names_the_path():
    info = rq.backends(detail=True)
    assert list(info) == rq.backends()
    assert cpu_features.int8_path()[0] in info["numba"]


def test_pmaddwd_form_is_kept_for_any_m():
    """The pmaddwd packed form stays callable directly (the AVX2 machines' path)."""
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (13, 77), dtype=np.int8)
    b = rng.integers(-128, 128, (77, 19), dtype=np.int8)
    assert np.array_equal(cpu_int8.int8_matmul_pmaddwd(a, b), reference.int8_matmul(a, b))
