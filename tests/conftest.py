"""Shared pytest configuration: the Hypothesis profiles used in CI and locally."""

import os

from hypothesis import HealthCheck, settings

# CI: derandomized and without the example database (the same examples every run, whatever
# earlier local runs saved) and no deadline (Numba compiles on first call).
settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
