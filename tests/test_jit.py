"""refquant.schemes._jit: kernels built around intrinsics and dispatchers are found in Numba's
on-disk cache by the next process (before, each process compiled them again: ~3-4 s for the int8 GEMM
alone, and the cache index grew by one entry per process)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from refquant.schemes import _jit

# One small call into every compiled path the numba backend has (the int8 GEMM's packed and row
# forms, W4A16's row and blocked forms, W4A8, the W8A8 activation quantizer, GPTQ's and AWQ's
# inner loops, the integer ops); then every refquant dispatcher's cache hits and misses.
WORKLOAD = r"""
import gc, json, os, numpy as np
import refquant as rq
from numba.core.registry import CPUDispatcher
from refquant.algorithms.awq._fast import _fake_quantize
from refquant.integer import _numba_ops
from refquant.integer.w8a8 import _quantize_rows_int8_fast
from refquant.kernels import w4a8_matmul
rng = np.random.default_rng(0)
a = rng.integers(-128, 128, (16, 64), dtype=np.int8)
rq.int8_matmul(a, a.T.copy(), backend="numba")
from refquant.kernels import cpu_features
for other in ("avx_vnni", "avx512_vnni"):                  # the other builds this CPU runs
    if other != cpu_features.int8_path()[0] and not cpu_features.missing_features(other):
        os.environ[cpu_features.ENV] = other
        rq.int8_matmul(a, a.T.copy(), backend="numba")
        del os.environ[cpu_features.ENV]
rq.int8_matmul(a[:2], a.T.copy(), backend="numba")
packed = rq.pack(rng.integers(0, 16, (8, 128), dtype=np.uint8), 4, "int32")
s, z = np.full((8, 1), 0.5, np.float32), np.full((8, 1), 8, np.int32)
for m in (1, 64):
    rq.w4_matmul(rng.standard_normal((m, 128)).astype(np.float32), packed, s, z, 128, backend="numba")
w4a8_matmul(rng.standard_normal((1, 128)).astype(np.float32), packed, s, z, 128, backend="numba")
_quantize_rows_int8_fast(rng.standard_normal((2, 64)).astype(np.float32))
W = rng.standard_normal((8, 64)).astype(np.float32)
X = rng.standard_normal((64, 64))
spec = rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32, axis=0)
rq.gptq(W, X.T @ X, spec)
_fake_quantize(W, spec)
acc = rng.integers(-2**20, 2**20, (2, 64), dtype=np.int64).astype(np.int32)
_numba_ops.rescale_rows(acc, np.ones(2, np.int64), np.ones(2, np.int64), np.full(64, 1 << 30, np.int64),
                        np.full(64, 10, np.int64))
stats = {}
for obj in gc.get_objects():
    if isinstance(obj, CPUDispatcher) and obj.py_func.__module__.startswith("refquant"):
        st = obj.stats
        stats[obj.py_func.__module__ + "." + obj.py_func.__qualname__ + f"@{id(obj)}"] = (
            sum(st.cache_hits.values()), sum(st.cache_misses.values()))
print(json.dumps(stats))
"""


def _run_workload():
    env = dict(os.environ, NUMBA_DISABLE_JIT="0")
    out = subprocess.run([sys.executable, "-c", WORKLOAD], capture_output=True, text=True,
                         env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_every_kernel_from_the_cache():
    _run_workload()                                  # compiles (or loads) and writes the cache
    stats = _run_workload()
    used = {k: v for k, v in stats.items() if v != (0, 0)}
    # the workload reaches at least: int8 packed + rows, W4 row form + dequantize_rows, W4A8,
    # W8A8 quantizer, GPTQ columns, AWQ qdq + range, integer rescale
    assert len(used) >= 10, used
    missed = {k: v for k, v in used.items() if v[1]}
    assert not missed, f"compiled again in a second process (hits, misses): {missed}"


def _child_identity():
    code = ("from refquant.kernels import cpu_w4_avx512 as m\n"
            "from refquant.schemes._jit import identity\n"
            "print(identity(m.w4_row_table()))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_identity_is_the_same_in_every_process_and_names_the_builder():
    first, second = _child_identity(), _child_identity()
    assert first == second
    assert first.startswith("refquant:refquant.kernels.cpu_w4_avx512.w4_row_table.<locals>.")
    assert first.endswith(":" + _jit.source_digest())


def test_identity_tells_parameters_apart_and_is_what_numba_pickles():
    from refquant.kernels import cpu_int8_vnni
    wide, narrow = cpu_int8_vnni.dpbusd_tile(16), cpu_int8_vnni.dpbusd_tile(8)
    assert _jit.identity(wide) != _jit.identity(narrow)
    assert _jit.identity(narrow).endswith(f"(8):{_jit.source_digest()}")
    assert narrow._uuid == _jit.identity(narrow)     # the uuid Numba pickles into cache keys


def test_source_digest_follows_every_source_file(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(_jit, "_PACKAGE", tmp_path)
    _jit.source_digest.cache_clear()
    try:
        before = _jit.source_digest()
        _jit.source_digest.cache_clear()
        (tmp_path / "a.py").write_text("x = 2\n")
        assert _jit.source_digest() != before
    finally:
        _jit.source_digest.cache_clear()


def test_an_intrinsic_holding_llvmlite_objects_is_refused():
    from llvmlite import ir
    from numba import types
    from numba.core.extending import intrinsic

    v4 = ir.VectorType(ir.IntType(32), 4)            # held by the closure: its text gets cached

    @intrinsic
    def _bad(typingctx, x):
        def codegen(context, builder, signature, args):
            return ir.Constant(v4, [0] * 4)
        return types.int32(x), codegen

    with pytest.raises(TypeError, match=r"llvmlite objects \['v4'\]"):
        _jit.stable(_bad)


def test_an_object_pickled_before_keeps_its_own_identity():
    from numba import njit

    @njit
    def f(x):
        return x
    drawn = f._uuid                                  # drawn by Numba, as a pickle would
    assert _jit.stable(f) is f
    assert f._uuid == drawn and _jit.identity(f) is None


def test_stable_rejects_what_is_not_a_numba_object():
    with pytest.raises(TypeError, match="neither a Numba dispatcher nor an intrinsic"):
        _jit.stable(np.add)
