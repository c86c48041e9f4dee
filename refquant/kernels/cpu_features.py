"""Which CPU kernel path runs here, chosen at run time from the host CPU's features.

The Numba kernels are compiled for the host CPU (Numba passes llvmlite's host CPU name and
feature list to LLVM, or the target that ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` name), so a
path is usable exactly when that target has the features its instructions need
(:func:`host_features`). :func:`int8_path` picks the int8 GEMM path:

================  ==========================================  =======================================
path              needs (llvmlite feature names)              instruction, multiply-adds per instr.
================  ==========================================  =======================================
``amx_int8``      ``amx-tile``, ``amx-int8``, and Linux's     ``tdpbssd``: 16384 (s8 x s8 -> i32,
                  grant of the tile state to this process     a 16 x 16 tile of 64-deep dot
                  (pseudo-feature ``xtiledata``, below)       products)
``avx512_vnni``   ``avx512vnni``, ``avx512bw``, ``avx512f``   ``vpdpbusd`` zmm: 64 (u8 x s8 -> i32)
``avx_vnni``      ``avxvnni`` (VEX), or ``avx512vnni`` and    ``vpdpbusd`` ymm: 32 (u8 x s8 -> i32)
                  ``avx512vl`` (its EVEX form)
``pmaddwd``       none (LLVM lowers the vector IR for the     ``vpmaddwd``: 16 (ymm) or 32 (zmm)
                  target: AVX2 ``vpmaddwd`` on x86-64)        (i16 x i16 -> i32)
================  ==========================================  =======================================

The first path in the table that the CPU can run is chosen: a CPU with AMX (Sapphire Rapids and
later Intel server cores) takes ``amx_int8`` where the kernel lets the process use the tile
registers (:func:`os_features`: Linux 5.16 or later hands out the 8 KiB of tile state only on
request, and an AMX instruction without it is a fatal SIGILL); a CPU with AVX-VNNI but no AVX-512
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
    "amx_int8": ("amx-tile", "amx-int8", "xtiledata"),
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
    """The features of the CPU Numba compiles for: the host's, as llvmlite reports them, unless
    ``NUMBA_CPU_FEATURES`` sets the compile target's (to build for another machine, or to run a
    narrower instruction set on this one). Then only the features it turns on (``+name``) count:
    those it leaves to the ``NUMBA_CPU_NAME`` defaults count as absent, so a path is never chosen
    whose instructions the compiled code may not have."""
    from numba.core import config
    if config.CPU_FEATURES is not None:
        return frozenset(f.strip()[1:] for f in config.CPU_FEATURES.split(",") if f.strip().startswith("+"))
    import llvmlite.binding as llvm
    feats = llvm.get_host_cpu_features()
    return frozenset(name for name, on in feats.items() if on)


@functools.lru_cache(maxsize=1)
def host_cpu_name() -> str:
    """The name of the CPU Numba compiles for (e.g. ``"znver4"``, ``"skylake-avx512"``):
    ``NUMBA_CPU_NAME`` where set, else llvmlite's name of the host CPU."""
    from numba.core import config
    if config.CPU_NAME:
        return config.CPU_NAME
    import llvmlite.binding as llvm
    return llvm.get_host_cpu_name()


# Linux x86-64's arch_prctl(2): the syscall number and the codes that read and request the
# extended-state components a process may use (asm/prctl.h); component 18 is AMX's tile data.
_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1022, 0x1023, 18


@functools.lru_cache(maxsize=1)
def amx_permission() -> tuple[bool, str]:
    """``(granted, why)``: whether Linux lets this process use AMX's tile registers, asked for
    once (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``) and confirmed by reading the
    permitted components back. The grant covers every thread of the process, and it is asked for
    only on Linux x86-64 (the call number means something else elsewhere)."""
    import ctypes
    import platform
    import sys
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return False, ("AMX tile state is requested through Linux x86-64's arch_prctl, not on "
                       f"{sys.platform}/{platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
        err = ctypes.get_errno()
        return False, f"Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: {os.strerror(err)})"
    mask = ctypes.c_uint64(0)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) != 0 \
            or not mask.value >> _XFEATURE_XTILEDATA & 1:
        return False, f"Linux did not confirm the AMX tile state (permitted components {mask.value:#x})"
    return True, "Linux granted the AMX tile state"


def os_features() -> frozenset[str]:
    """Pseudo-features the operating system grants: ``"xtiledata"`` where the CPU reports
    ``amx-tile`` and :func:`amx_permission` is granted (asked for only then)."""
    if "amx-tile" in host_features() and amx_permission()[0]:
        return frozenset({"xtiledata"})
    return frozenset()


def _match(path: str, paths: dict | None = None) -> tuple[tuple | None, list[str]]:
    """``(met, missing)``: the first of ``path``'s feature sets that this target has (``None`` if
    none) and what its first set lacks."""
    paths = INT8_PATHS if paths is None else paths
    if path not in paths:
        raise ValueError(f"unknown kernel path {path!r}; choose from {sorted(paths)}")
    needs = paths[path]
    alternatives = needs if isinstance(needs, list) else [needs]
    have = host_features()
    if any("xtiledata" in alt for alt in alternatives):
        have = have | os_features()
    met = next((alt for alt in alternatives if all(f in have for f in alt)), None)
    return met, [f for f in alternatives[0] if f not in have]


def missing_features(path: str, paths: dict | None = None) -> list[str]:
    """The features ``path`` of ``paths`` (default :data:`INT8_PATHS`) needs that this CPU
    (or, for ``xtiledata``, the operating system) lacks (empty: the path can run here)."""
    met, missing = _match(path, paths)
    return [] if met is not None else missing


def os_refusal(missing: list[str]) -> str:
    """Linux's answer in parentheses after a space, where ``missing`` holds ``xtiledata`` on a
    CPU that has AMX (the operating system, not the CPU, is what refused); else ``""``."""
    if "xtiledata" in missing and "amx-tile" in host_features():
        return f" ({amx_permission()[1]})"
    return ""


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
    """``(path, why)``: the int8 GEMM path the ``"numba"`` backend runs here and the reason: the
    first of :data:`INT8_PATHS` this machine can run, the reason naming what the ones before it
    lack."""
    forced = os.environ.get(ENV)
    if forced:
        missing = missing_features(forced)
        if missing:
            raise ValueError(f"{ENV}={forced!r} needs CPU features {missing} that this CPU "
                             f"({host_cpu_name()}) does not report{os_refusal(missing)}")
        return forced, f"forced by {ENV}"
    lacking = []
    for path in INT8_PATHS:
        have, missing = _match(path)
        if have is not None:
            cpu = [f for f in have if f != "xtiledata"]
            why = [f"{host_cpu_name()} reports {', '.join(cpu)}"] if cpu else [host_cpu_name()]
            if "xtiledata" in have:
                why.append(amx_permission()[1])
            return path, "; ".join(why + lacking)
        lacking.append(f"lacks {missing} for {path}")
    raise AssertionError("the last int8 path needs no features")     # pmaddwd needs none
