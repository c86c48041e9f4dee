"""Keep freed memory in the process for the long streaming commands (``refquant quantize``).

A streamed pass allocates and frees the same large arrays for every block (a 7B-shaped block:
the float32 weights, the activations, the ``[in, in]`` Hessians and GPTQ's work arrays, many
of them hundreds of MB). glibc's ``malloc`` serves every allocation above 32 MB with its own
``mmap`` and returns it to the kernel on ``free``, so the next block touches fresh pages that
the kernel zeroes first: in a profile of ``benchmarks/scale_7b.py`` (2 of 32 blocks, 2-core
Zen 4 class AMD EPYC) 23 % of the samples were the kernel's ``clear_page``. With
``mallopt(M_MMAP_MAX, 0)`` and a trim threshold of 2 GiB (the largest ``mallopt`` takes),
freed blocks stay in the heap and are reused: with the equivalent ``MALLOC_MMAP_MAX_=0``
environment setting quantize's wall time there went from 122 s to 106 s for 2 blocks, peak RSS
from 8.42 to 8.95 GiB (what the heap keeps past the peak of live arrays); the whole 32-block run
then took 1,418 s at a peak of 9.34 GiB (README, "Scale").

The results do not depend on it: it changes only where ``malloc`` finds memory. Where the C
library has no ``mallopt`` (not glibc) nothing changes. ``REFQUANT_KEEP_HEAP=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4         # glibc <malloc.h>
TRIM_THRESHOLD = 2**31 - 1                    # give back only a free top of the heap > 2 GiB


def keep_freed_memory() -> bool:
    """Ask glibc to serve large allocations from the heap and keep what is freed; True if
    both settings were accepted (``mallopt`` returns 1 on success)."""
    if os.environ.get("REFQUANT_KEEP_HEAP", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mallopt(M_MMAP_MAX, 0) == 1
