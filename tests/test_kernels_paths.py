"""The CPU kernel paths chosen from the host's features (refquant.kernels.cpu_features).

Oracle: the NumPy specification ``refquant.kernels.reference.int8_matmul`` (int32 products of
int8 operands summed by NumPy), bit for bit, for every int8 path this CPU can run; a path the CPU
cannot run is skipped with the features it lacks, and forcing it raises. (``avx_vnni`` runs on a
CPU with AVX-512 VL and VNNI as the EVEX form of the same 256-bit kernel; ``amx_int8`` needs AMX
and Linux's grant of the tile state, the pseudo-feature ``xtiledata``.)
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


SPR = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avxvnni", "amx-tile", "amx-int8"}


@pytest.mark.parametrize("features, path", [
    (SPR | {"xtiledata"}, "amx_int8"),                                    # Sapphire Rapids class
    (SPR, "avx512_vnni"),                                                 # tile state not granted
    ({"avx2", "avxvnni"}, "avx_vnni"),                                    # Alder Lake class
    ({"avx2", "avx512f", "avx512vl", "avx512vnni"}, "avx_vnni"),          # no BW: not avx512_vnni
    ({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avxvnni"}, "avx512_vnni"),
    ({"avx2", "avx512f", "avx512bw"}, "pmaddwd"),
])
def test_int8_path_order(features, path, monkeypatch):
    """The first path of INT8_PATHS the (pretended) CPU can run is chosen; the avx_vnni path
    accepts either AVX-VNNI or the EVEX form (AVX-512 VL + VNNI)."""
    monkeypatch.setattr(cpu_features, "host_features", lambda: frozenset(features - {"xtiledata"}))
    monkeypatch.setattr(cpu_features, "os_features", lambda: frozenset(features & {"xtiledata"}))
    monkeypatch.delenv(cpu_features.ENV, raising=False)
    got, why = cpu_features.int8_path()
    assert got == path, why
    if path == "pmaddwd":
        assert "avx512vnni" in why and "avxvnni" in why
    if "amx-tile" in features and path != "amx_int8":
        assert "lacks ['xtiledata'] for amx_int8" in why


def test_amx_refused_by_the_os_is_never_selected_and_forcing_it_raises(monkeypatch):
    """A CPU that reports AMX in a process Linux refused the tile state (an older kernel, or a
    hypervisor that does not pass the state through) runs avx512_vnni; forcing amx_int8 raises
    with Linux's answer, and the kernel itself refuses to build (an AMX instruction would be a
    fatal SIGILL, not an exception)."""
    from refquant.kernels import cpu_int8_amx
    monkeypatch.setattr(cpu_features, "host_features", lambda: frozenset(SPR))
    monkeypatch.setattr(cpu_features, "amx_permission",
                        lambda: (False, "Linux refused the AMX tile state (arch_prctl "
                                        "ARCH_REQ_XCOMP_PERM: Invalid argument)"))
    monkeypatch.delenv(cpu_features.ENV, raising=False)
    assert cpu_features.int8_path()[0] == "avx512_vnni"
    monkeypatch.setenv(cpu_features.ENV, "amx_int8")
    with pytest.raises(ValueError, match="xtiledata.*Linux refused the AMX tile state"):
        cpu_features.int8_path()
    with pytest.raises(RuntimeError, match="AMX int8 kernel cannot run here.*Invalid argument"):
        cpu_int8_amx.require_tiles()
    with pytest.raises(RuntimeError, match="cannot run here"):
        cpu_int8_amx.int8_matmul(np.zeros((1, 1), np.int8), np.zeros((1, 1), np.int8))


def test_amx_permission_is_asked_only_where_the_cpu_has_amx(monkeypatch):
    def refuse():
        raise AssertionError("arch_prctl asked on a CPU without AMX")
    monkeypatch.setattr(cpu_features, "host_features", lambda: frozenset({"avx2", "avx512f"}))
    monkeypatch.setattr(cpu_features, "amx_permission", refuse)
    assert cpu_features.os_features() == frozenset()
    assert cpu_features.missing_features("amx_int8") == ["amx-tile", "amx-int8", "xtiledata"]


def test_amx_tile_config_layout():
    """The ldtilecfg block by hand from Intel's SDM (vol. 2, LDTILECFG): palette 1 in byte 0,
    bytes per row as little-endian uint16 at 16 + 2t, rows at 48 + t; 8 tiles of 16 x 64 bytes."""
    from refquant.kernels import cpu_int8_amx
    cfg = cpu_int8_amx.tile_config()
    assert cfg.dtype == np.uint8 and cfg.shape == (64,)
    assert cfg[0] == 1 and cfg[1:16].sum() == 0
    assert list(cfg[16:32].view("<u2")) == [64] * 8
    assert list(cfg[48:56]) == [16] * 8 and cfg[56:].sum() == 0


def test_avx_vnni_forced_where_only_avx2_raises(monkeypatch):
    monkeypatch.setattr(cpu_features, "host_features", lambda: frozenset({"avx2"}))
    monkeypatch.setenv(cpu_features.ENV, "avx_vnni")
    with pytest.raises(ValueError, match="avxvnni"):
        cpu_features.int8_path()


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


def test_avx_vnni_kernel_compiles_to_vex_for_an_avx_vnni_only_cpu(monkeypatch):
    """The 256-bit kernel cannot be run here on a CPU with AVX-VNNI and no AVX-512; its LLVM IR
    (taken from the host's compile) is compiled again for ``alderlake`` and must use the VEX
    ``vpdpbusd`` on ymm0-15 only: no zmm, no ymm16-31, no mask registers, no embedded broadcast.
    Oracle: LLVM's own instruction selection for that CPU."""
    import re
    _needs("avx_vnni")
    import llvmlite.binding as llvm
    from refquant.kernels import cpu_int8_vnni
    monkeypatch.setenv(cpu_features.ENV, "avx_vnni")
    a = np.ones((12, 64), np.int8)
    b = np.ones((64, 32), np.int8)
    assert (rq.int8_matmul(a, b, backend="numba") == 64).all()
    import numba
    cached = cpu_int8_vnni.gemm_packed(8)          # Numba shows no IR of code loaded from disk:
    gemm = numba.njit(**dict(cpu_int8_vnni.NJIT_OPTIONS, cache=False))(cached.py_func)
    sig = cached.signatures[0]                     # the same function compiled again, uncached
    gemm.compile(sig)
    module = llvm.parse_assembly(gemm.inspect_llvm(sig))
    tm = llvm.Target.from_triple(module.triple).create_target_machine(cpu="alderlake", opt=2)
    asm = tm.emit_assembly(module)
    assert re.search(r"\{vex\}\s+vpdpbusd\s+%ymm", asm)
    assert not re.search(r"zmm|ymm(1[6-9]|2\d|3[01])|%k[1-7]|\{1to", asm)


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("shape", [(1, 576, 1536), (3, 20, 64), (7, 33, 2049), (1, 1, 1)])
def test_row_form_both_variants_equal_reference(parallel, shape):
    """The row form (M < 8) on the thread pool and on the calling thread (below
    ROWS_SERIAL_MACS): the specification bit for bit, across column blocks of 2048."""
    M, K, N = shape
    rng = np.random.default_rng(M + K + N)
    a = rng.integers(-128, 128, (M, K), dtype=np.int8)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    assert np.array_equal(cpu_int8.gemm_rows(parallel)(a, b), reference.int8_matmul(a, b))


def test_features_follow_numbas_compile_target(monkeypatch):
    """With NUMBA_CPU_FEATURES (Numba's config) the paths follow the features the compiled code
    has, not the host's: only those it turns on count. Oracle: the feature string itself."""
    from numba.core import config
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,-avx512f,-avx512vnni,-amx-tile")
    monkeypatch.setattr(config, "CPU_NAME", "haswell")
    cpu_features.host_features.cache_clear()
    cpu_features.host_cpu_name.cache_clear()
    try:
        monkeypatch.delenv(cpu_features.ENV, raising=False)
        assert cpu_features.host_features() == frozenset({"avx2", "fma"})
        path, why = cpu_features.int8_path()
        assert path == "pmaddwd" and why.startswith("haswell")
        assert cpu_features.w4_path()[0] == "portable"
        assert cpu_features.os_features() == frozenset()          # no AMX grant asked for
    finally:
        monkeypatch.undo()
        cpu_features.host_features.cache_clear()
        cpu_features.host_cpu_name.cache_clear()


NARROW_BUILD = r"""
import numpy as np
import refquant as rq
from refquant.kernels import K_MAX, cpu_features, reference
path = cpu_features.int8_path()[0]
rng = np.random.default_rng(7)
for M, K, N in [(8, 4, 32), (9, 7, 33), (17, 300, 70), (64, 576, 1536), (40, 1027, 65)]:
    a = rng.integers(-128, 128, (M, K), dtype=np.int8)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    assert np.array_equal(rq.int8_matmul(a, b, backend="numba"), reference.int8_matmul(a, b)), (M, K, N)
a, b = np.full((9, K_MAX), -128, np.int8), np.full((K_MAX, 3), -128, np.int8)
assert (rq.int8_matmul(a, b, backend="numba") == K_MAX * 128 * 128).all()
print(path)
"""


@pytest.mark.parametrize("drop, path", [(("avx512", "amx", "avx10", "evex512"), "avx_vnni"),
                                        (("avx512", "amx", "avx10", "evex512", "avxvnni"), "pmaddwd")])
def test_narrower_builds_run_on_this_cpu(drop, path):
    """The kernels compiled for a target without AVX-512 and AMX (NUMBA_CPU_FEATURES: this
    host's features with those turned off, as on an Alder Lake core), and without AVX-VNNI as
    well (an AVX2-only core), run on this CPU in a fresh process: they choose ``avx_vnni`` (its
    VEX instruction) and ``pmaddwd`` (AVX2) and equal the specification. Skipped where the host
    lacks the features the narrower build keeps."""
    import os
    import subprocess
    import sys
    import llvmlite.binding as llvm
    host = llvm.get_host_cpu_features()
    keep = "avxvnni" if path == "avx_vnni" else "avx2"
    if not host.get(keep):
        pytest.skip(f"this CPU ({llvm.get_host_cpu_name()}) lacks {keep}")
    feats = ",".join(("+" if on and not name.startswith(drop) else "-") + name for name, on in host.items())
    env = dict(os.environ, NUMBA_CPU_FEATURES=feats, NUMBA_CPU_NAME=llvm.get_host_cpu_name())
    env.pop(cpu_features.ENV, None)
    out = subprocess.run([sys.executable, "-c", NARROW_BUILD], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == path
