#!/usr/bin/env bash
# Build the documentation site into docs/_build/html with every warning an error, then check it
# as a person would see it (tests/test_docs.py on the built site: headless Chromium screenshots
# of the landing page, an API page with an equation and a notebook page under
# docs/_build/screenshots/, every public name's entry, every command's and notebook's page).
# Usage: bash scripts/docs.sh [VENV_DIR]   (default: .venv; needs the "docs" extra)
# The notebooks are shown as committed (never executed here); the API, CLI and notebook pages
# are generated at the start of the build by docs/_ext/refquant_docs.py.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
py="$venv/bin/python"
# Chromium (Debian's package) for the screenshots, installed where it is missing and we may
if ! command -v chromium > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null
fi
rm -rf docs/_build/html docs/_build/doctrees       # a fresh build: every docstring is read again
"$py" -m sphinx -b html -W --keep-going -d docs/_build/doctrees docs docs/_build/html
REFQUANT_DOCS_HTML="$PWD/docs/_build/html" HYPOTHESIS_PROFILE=ci \
  "$py" -m pytest -q -p no:cacheprovider tests/test_docs.py
