"""Timing helper shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

import time

# OpenBLAS's worker threads keep spinning for a while after each call (2^28 cycles, about 0.1 s,
# by default: OPENBLAS_THREAD_TIMEOUT). A Numba kernel timed right after a NumPy matmul would
# share its cores with them, and a NumPy call timed after a pause would pay for waking them. So
# each side is timed in its own burst of calls, after a pause long enough for the other side's
# threads to go to sleep: both are measured warm and alone.
PAUSE = 0.3
BURST = 5


def best_pair(f, g, repeats):
    """Best times of ``f`` and ``g``: ``repeats`` rounds, each a warm-up call and a burst of
    timed calls of ``f``, a pause, then the same for ``g`` (rounds alternate, so both see the
    same machine load over the run)."""
    return tuple(best_of((f, g), repeats))


def best_time(f, repeats: int) -> float:
    """The best of ``repeats`` back-to-back timed calls of ``f``, after one warm-up call (for
    runs long enough that a pool's wake-up does not matter: a forward pass, a decode)."""
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def best_of(fns, repeats, burst=BURST):
    """Best times of each of ``fns``, timed as :func:`best_pair` times two: per round, for each
    function in turn, a pause, a warm-up call and a burst of ``burst`` back-to-back timed calls
    (a pool that sleeps when idle, like ggml's OpenMP threads, is woken by the warm-up call)."""
    best = [float("inf")] * len(fns)
    for _ in range(max(1, repeats // burst)):
        for side, fn in enumerate(fns):
            time.sleep(PAUSE)
            fn()
            for _ in range(burst):
                t = time.perf_counter()
                fn()
                best[side] = min(best[side], time.perf_counter() - t)
    return best


def print_machine() -> None:
    """Print the CPU model, its vector-extension flags and the BLAS kernel in use: figures from one
    machine are not another's (the CPU model changes between sessions)."""
    import os
    import platform

    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = sorted(f for f in flags if f.startswith(("avx", "fma", "amx")) or f == "f16c")
    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i['internal_api']} {i.get('architecture', '?')} x{i['num_threads']}"
                         for i in threadpool_info())
    except Exception:          # threadpoolctl missing: the CPU lines still say which machine
        blas = "unknown"
    print(f"cpu: {model}, {os.cpu_count()} logical cores")
    print(f"cpu flags: {' '.join(wanted) or 'none found'}")
    print(f"blas: {blas}")
