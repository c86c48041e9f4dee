"""Which CPU kernel path runs here, chosen at run time from the host CPU's features.

The Numba kernels are compiled for the host CPU (Numba passes llvmlite's host CPU name and
feature list to LLVM), so a path is usable exactly when the host reports the features its
instructions need. :func:`int8_path` picks the int8 GEMM path:

================  ==========================================  =======================================
path              needs (llvmlite feature names)              instruction, multiply-adds per instr.
================  ==========================================  =======================================
``avx512_vnni``   ``avx512vnni``, ``avx512bw``, ``avx512f``   ``vpdpbusd`` zmm: 64 (u8 x s8 -> i32)
``avx_vnni``      ``avxvnni`` (VEX), or ``avx512vnni`` and    ``vpdpbusd`` ymm: 32 (u8 x s8 -> i32)
                  ``avx512vl`` (its EVEX form)
``pmaddwd``       none (LLVM lowers the vector IR for the     ``vpmaddwd``: 16 (ymm) or 32 (zmm)
                  target: AVX2 ``vpmaddwd`` on x86-64)        (i16 x i16 -> i32)
================  ==========================================  =======================================

The first path in the table that the CPU can run is chosen: a CPU with AVX-VNNI but no AVX-512
(Alder Lake and later Intel client cores) takes ``avx_vnni``; one with AVX-512 VNNI takes
``avx512_vnni`` (``avx_vnni`` can be forced there: the same 256-bit kernel, EVEX-encoded). The
environment variable ``REFQUANT_INT8_PATH`` forces a path (for tests and benchmarks); forcing one
the CPU cannot run raises ``ValueError``, nothing falls back silently.

The W4 kernels choose the same way (:func:`w4_path`, :func:`w4a8_path`; variables
``REFQUANT_W4_PATH``, ``REFQUANT_W4A8_PATH``):

=======================  ================================  =====================================
path                     needs                             kernel
=======================  ================================  =====================================
W4A16 ``avx512``         ``avx512f``                       :mod:`refquant.kernels.cpu_w4_avx512`
                                                           (``vpermps`` table; ``K`` and the
                                                           group size multiples of 32)
W4A16 ``portable``       none                              :mod:`refquant.kernels.cpu_w4`
W4A8 ``avx512_vnni``     ``avx512vnni``, ``avx512bw``      :mod:`refquant.kernels.cpu_w4a8`
                                                           (``vpdpbusd``)
W4A8 ``portable``        none                              :mod:`refquant.kernels.cpu_w4a8`
                                                           (scalar loop)
=======================  ================================  =====================================

A W4A16 shape the ``avx512`` kernel does not cover (``K`` or the group size not a multiple of 32)
runs the ``portable`` kernel; :func:`refquant.kernels.backends` says so.
"""

from __future__ import annotations

import functools
import os

INT8_PATHS = {                  # in order of preference; a list holds alternative feature sets
    "avx512_vnni": ("avx512f", "avx512bw", "avx512vnni"),
    "avx_vnni": [("avxvnni",), ("avx512vnni", "avx512vl")],
    "pmaddwd": (),
}
ENV = "REFQUANT_INT8_PATH"
W4_PATHS = {"avx512": ("avx512f",), "portable": ()}
W4_ENV = "REFQUANT_W4_PATH"
W4A8_PATHS = {"avx512_vnni": ("avx512f", "avx512bw", "avx512vnni"), "portable": ()}
W4A8_ENV = "REFQUANT_W4A8_PATH"


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


def missing_features(path: str, paths: dict | None = None) -> list[str]:
    """The features ``path`` of ``paths`` (default :data:`INT8_PATHS`) needs that this CPU
    lacks (empty: the path can run here)."""
    paths = INT8_PATHS if paths is None else paths
    if path not in paths:
        raise ValueError(f"unknown kernel path {path!r}; choose from {sorted(paths)}")
    needs = paths[path]
    alternatives = needs if isinstance(needs, list) else [needs]
    missing = [[f for f in alt if f not in host_features()] for alt in alternatives]
    return [] if any(not m for m in missing) else missing[0]


def _choose(paths: dict, env: str, best: str) -> tuple[str, str]:
    """``(path, why)``: the path forced by ``env`` (refused if the CPU cannot run it), else
    ``best`` where the CPU has its features, else ``"portable"``."""
    forced = os.environ.get(env)
    if forced:
        missing = missing_features(forced, paths)
        if missing:
            raise ValueError(f"{env}={forced!r} needs CPU features {missing} that this CPU "
                             f"({host_cpu_name()}) does not report")
        return forced, f"forced by {env}"
    missing = missing_features(best, paths)
    if not missing:
        return best, f"{host_cpu_name()} reports {', '.join(paths[best])}"
    return "portable", f"{host_cpu_name()} lacks {missing} for {best}"


def w4_path() -> tuple[str, str]:
    """``(path, why)``: the W4A16 kernel path of the ``"numba"`` backend here (see the table)."""
    return _choose(W4_PATHS, W4_ENV, "avx512")


def w4a8_path() -> tuple[str, str]:
    """``(path, why)``: the W4A8 kernel path of the ``"numba"`` backend here (see the table)."""
    return _choose(W4A8_PATHS, W4A8_ENV, "avx512_vnni")


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
    if not missing_features("avx_vnni"):
        return "avx_vnni", (f"{host_cpu_name()} reports avxvnni and lacks "
                            f"{missing_features('avx512_vnni')} for avx512_vnni")
    return "pmaddwd", (f"{host_cpu_name()} lacks {missing_features('avx512_vnni')} for "
                       f"avx512_vnni and {missing_features('avx_vnni')} for avx_vnni")
