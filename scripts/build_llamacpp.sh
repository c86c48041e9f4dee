#!/usr/bin/env bash
# Build llama.cpp from the llama-cpp-python sdist, CPU only and only what is needed (the shared
# libllama and ggml), for scripts/llamacpp_crosscheck.py and tests/test_llamacpp_crosscheck.py.
#
# Usage: bash scripts/build_llamacpp.sh [DIR] [VENV_DIR]   (defaults: build/llamacpp, .venv;
#        build/ is git-ignored)
# Then:  export LLAMA_CPP_LIB_PATH=DIR/build/bin PYTHONPATH=DIR/src:DIR/pydeps
#
# Why not `pip install llama-cpp-python`: there is no prebuilt wheel here, and its own build also
# compiles llama.cpp's common library, the multimodal library and cpp-httplib; on the 2-core
# AMD EPYC of this project it had not finished after 12 minutes (89 of 140 steps). The bindings
# are pure Python (ctypes) and load the library named by LLAMA_CPP_LIB_PATH, so the library
# alone (78 steps) is built here and the bindings are used from the same sdist.
# Measured: 816 s wall (nice -n 10, -j2, 2 cores shared with other jobs), 0.3.36's vendored
# llama.cpp (libllama 0.5.0, ggml 0.25.3).
set -euo pipefail
dir="${1:-build/llamacpp}"
py="$(cd "${2:-.venv}" && pwd)/bin/python"
version=0.3.36
mkdir -p "$dir"
cd "$dir"
if [ ! -d src ]; then
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d .
  tar xzf "llama_cpp_python-$version.tar.gz"
  mv "llama_cpp_python-$version" src
fi
# the bindings import diskcache; kept out of the project's virtual environment
"$py" -m pip install -q --target pydeps diskcache
start=$(date +%s)
cmake -S src/vendor/llama.cpp -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DGGML_OPENMP=OFF -DGGML_NATIVE=ON -DGGML_BLAS=OFF > /dev/null
nice -n 10 cmake --build build -j"$(nproc)" --target llama
echo "built in $(( $(date +%s) - start )) s: $(pwd)/build/bin"
