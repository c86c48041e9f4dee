#!/usr/bin/env bash
# The test suite, as CI runs it. Usage: bash scripts/test.sh [VENV_DIR]   (default: .venv)
# 1. everything but the slow end-to-end runs and the CUDA tests;
# 2. every docstring example in refquant/ as a doctest (the root conftest.py skips the deprecated
#    flat-path shims, which warn on import by design);
# 3. the notebooks in notebooks/, executed top to bottom (nbmake);
# 4. the CUDA kernel tests under Numba's CUDA simulator (the variable must be set before Numba
#    is imported, hence a separate pytest process). On a machine with a GPU, run
#    `python -m pytest -m cuda` without the variable to run the same file on the device.
# 5. the documentation site, warnings as errors, then tests/test_docs.py on the built site
#    (scripts/docs.sh, ~1 minute; so step 1 leaves tests/test_docs.py out).
set -euo pipefail
venv="${1:-.venv}"
py="$venv/bin/python"
export HYPOTHESIS_PROFILE=ci
# Debian's chromium, for the documentation's screenshots (tests/test_docs.py), where missing
if ! command -v chromium > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null
fi
"$py" -m pytest -q -m "not slow and not cuda" --durations=10 --ignore=tests/test_docs.py
# 2. the docstring examples
"$py" -m pytest -q -p no:cacheprovider --doctest-modules refquant
# 3. the notebooks, executed top to bottom
"$py" -m pytest -q --nbmake notebooks/ --durations=0
# 4. the CUDA kernels under the simulator (exit status 5: no test collected, e.g. no numba-cuda)
NUMBA_ENABLE_CUDASIM=1 "$py" -m pytest -q -m "cuda and not slow" || { rc=$?; [ "$rc" -eq 5 ] || exit "$rc"; }
# 5. the documentation site with -W --keep-going (see the header)
bash scripts/docs.sh "$venv"
