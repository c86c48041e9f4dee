"""The committed notebooks are their sources, executed: every one teaches to the same outline.

Oracle: ``notebooks/src/NN_*.py`` (percent format) parsed by ``scripts/build_notebooks.py``; the
committed ``notebooks/NN_*.ipynb`` must hold the same cells, in order, with outputs (CI re-executes
them with nbmake in scripts/test.sh). Each notebook has an introduction, a figure, an exercise
whose check cell printed "correct", and a closing "What to try next" section.
"""

from __future__ import annotations

import importlib.util
import pathlib

import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "scripts" / "build_notebooks.py")
build_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_notebooks)

SOURCES = sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py"))


def test_percent_format_parser():
    src = "# %% [markdown]\n# # Title\n# text\n\n# %%\nx = 1\n\n# %%\nprint(x)\n"
    assert build_notebooks.cells_of(src) == [("markdown", "# Title\ntext"), ("code", "x = 1"),
                                             ("code", "print(x)")]


@pytest.mark.parametrize("src", SOURCES, ids=[s.stem for s in SOURCES])
def test_committed_notebook_equals_its_source_and_ran(src):
    nb = nbformat.read(ROOT / "notebooks" / (src.stem + ".ipynb"), as_version=4)
    expected = build_notebooks.cells_of(src.read_text())
    assert [(c.cell_type, c.source) for c in nb.cells] == expected, \
        f"{src.name} changed: rebuild with python scripts/build_notebooks.py {src.stem[:2]}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "committed without outputs"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == []
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "no figure"
    text = "\n".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "Exercise" in markdown and "correct" in text
    assert "What to try next" in markdown
    assert nb.cells[0].cell_type == "markdown" and "You will learn" in nb.cells[0].source
