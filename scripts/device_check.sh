#!/usr/bin/env bash
# The GPU checks, in one run on a machine with an NVIDIA GPU (the `device` tool's H100):
# the CUDA kernel tests unchanged (`pytest -m cuda`, no simulator), then benchmarks/gpu_kernels.py.
# Results go under $OUT (default /tmp/refquant-device). Needs numba, numba-cuda, numpy, pytest,
# hypothesis and torch or CuPy; refquant is used from this checkout (PYTHONPATH), nothing installed.
# SMOKE=1 runs the same steps under the CUDA simulator with tiny benchmark shapes (a dry run on CPU).
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/refquant-device}
mkdir -p "$OUT"
py=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# wheels carried to a machine that cannot download (.whl/, ignored by git) go first on the path:
# the device image's numba-cuda 0.30.4 fails to import with its NumPy 2.5 (np.row_stack is gone),
# so a NumPy 2.4 wheel travels with the run
if [ "${SMOKE:-0}" != 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
bench=(--repeats 20)
if [ "${SMOKE:-0}" = 1 ]; then export NUMBA_ENABLE_CUDASIM=1; bench=(--smoke); fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
  "$py" -c "import sys, numpy, numba; print(sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__)"
  "$py" -m pip show numba-cuda 2>/dev/null | head -2
} 2>&1 | tee "$OUT/env.txt"
"$py" -m pytest -q -p no:cacheprovider -m cuda tests/test_kernels_cuda.py 2>&1 | tee "$OUT/cuda_tests.txt"
rc_tests=$?
"$py" benchmarks/gpu_kernels.py "${bench[@]}" 2>&1 | tee "$OUT/gpu_bench.txt"
rc_bench=$?
echo "tests rc=$rc_tests bench rc=$rc_bench" | tee -a "$OUT/env.txt"
[ "$rc_tests" = 0 ] && [ "$rc_bench" = 0 ]
