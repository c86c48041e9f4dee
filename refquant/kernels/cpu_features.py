"""Which CPU kernel path runs here, chosen at run time from the host CPU's features.

The Numba kernels are compiled for the host CPU (Numba passes llvmlite's host CPU name and
feature list to LLVM), so a path is usable exactly when the host reports the features its
instructions need. :func:`int8_path` picks the int8 GEMM path:

================  ==========================================  =======================================
path              needs (llvmlite feature names)              instruction, multiply-adds per instr.
================  ==========================================  =======================================
``avx512_vnni``   ``avx512vnni``, ``avx512bw``, ``avx512f``   ``vpdpbusd`` zmm: 64 (u8 x s8 -> i32)
``pmaddwd``       none (LLVM lowers the vector IR for the     ``vpmaddwd``: 16 (ymm) or 32 (zmm)
                  target: AVX2 ``vpmaddwd`` on x86-64)        (i16 x i16 -> i32)
================  ==========================================  =======================================

AVX-VNNI (the VEX-encoded 256-bit ``vpdpbusd`` of Alder Lake and Zen 5) is not a separate path
yet: those CPUs take ``pmaddwd``. The environment variable ``REFQUANT_INT8_PATH`` forces a path
(for tests and benchmarks); forcing one the CPU cannot run raises ``ValueError``, nothing falls
back silently.
"""

from __future__ import annotations

import functools
import os

INT8_PATHS = {
    "avx512_vnni": ("avx512f", "avx512bw", "avx512vnni"),
    "pmaddwd": (),
}
ENV = "REFQUANT_INT8_PATH"


@functools.lru_cache(maxsize=1)
def host_features() -> frozenset[str]:
    """The host CPU's features as llvmlite (hence Numba's code generator) reports them."""
    import llvmlite.binding as llvm
    feats = llvm.get_host_cpu_features()
    return frozenset(name for name, on in feats.items() if on)


@functools.lru_cache(maxsize=1)
def host_cpu_name() -> str:
    """llvmlite's name of the host CPU (e.g. ``"znver4"``, ``"skylake-avx512"``)."""
    import llvmlite.binding as llvm
    return llvm.get_host_cpu_name()


def missing_features(path: str) -> list[str]:
    """The features ``path`` needs that this CPU lacks (empty: the path can run here)."""
    if path not in INT8_PATHS:
        raise ValueError(f"unknown int8 kernel path {path!r}; choose from {sorted(INT8_PATHS)}")
    return [f for f in INT8_PATHS[path] if f not in host_features()]


def int8_path() -> tuple[str, str]:
    """``(path, why)``: the int8 GEMM path the ``"numba"`` backend runs here and the reason."""
    forced = os.environ.get(ENV)
    if forced:
        missing = missing_features(forced)
        if missing:
            raise ValueError(f"{ENV}={forced!r} needs CPU features {missing} that this CPU "
                             f"({host_cpu_name()}) does not report")
        return forced, f"forced by {ENV}"
    if not missing_features("avx512_vnni"):
        return "avx512_vnni", f"{host_cpu_name()} reports avx512vnni and avx512bw"
    return "pmaddwd", (f"{host_cpu_name()} lacks {missing_features('avx512_vnni')} for "
                       f"avx512_vnni")
