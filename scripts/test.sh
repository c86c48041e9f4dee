#!/usr/bin/env bash
# The test suite, as CI runs it. Usage: bash scripts/test.sh [VENV_DIR]   (default: .venv)
# 1. everything but the slow end-to-end runs and the CUDA tests;
# 2. every docstring example in refquant/ as a doctest (the root conftest.py skips the deprecated
#    flat-path shims, which warn on import by design);
# 3. the notebooks in notebooks/, executed top to bottom (nbmake);
# 4. the CUDA kernel tests under Numba's CUDA simulator (the variable must be set before Numba
#    is imported, hence a separate pytest process). On a machine with a GPU, run
#    `python -m pytest -m cuda` without the variable to run the same file on the device.
set -euo pipefail
venv="${1:-.venv}"
py="$venv/bin/python"
export HYPOTHESIS_PROFILE=ci
"$py" -m pytest -q -m "not slow and not cuda" --durations=10
# 2. the docstring examples
"$py" -m pytest -q -p no:cacheprovider --doctest-modules refquant
# 3. the notebooks, executed top to bottom
"$py" -m pytest -q --nbmake notebooks/
# 4. the CUDA kernels under the simulator (exit status 5: no test collected, e.g. no numba-cuda)
NUMBA_ENABLE_CUDASIM=1 "$py" -m pytest -q -m "cuda and not slow" || { rc=$?; [ "$rc" -eq 5 ] || exit "$rc"; }
