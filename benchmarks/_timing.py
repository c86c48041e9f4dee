"""Timing helper shared by the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""

import time


def best_pair(f, g, repeats):
    """Best times of f and g, timed alternately so both see the same machine load."""
    tf, tg = [], []
    for _ in range(repeats):
        t = time.perf_counter(); f(); tf.append(time.perf_counter() - t)
        t = time.perf_counter(); g(); tg.append(time.perf_counter() - t)
    return min(tf), min(tg)
