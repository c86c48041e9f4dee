"""Build the notebooks from their sources and execute them, so they are committed with outputs.

Usage (from the repository root, in the project's virtual environment)::

    python scripts/build_notebooks.py                 # every notebooks/src/NN_*.py
    python scripts/build_notebooks.py 03 06           # the notebooks whose names start so

Each source ``notebooks/src/NN_name.py`` is a plain Python file in the "percent" format: a line
``# %%`` starts a code cell, ``# %% [markdown]`` a Markdown cell whose lines are comments
(``# `` stripped). The script writes ``notebooks/NN_name.ipynb`` executed top to bottom (seeds are
fixed in the notebooks, so the outputs are reproducible) and prints each notebook's run time.
``tests/test_notebooks.py`` checks that every committed notebook equals its source, cell by cell.
"""

from __future__ import annotations

import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "notebooks" / "src"


def cells_of(source: str) -> list[tuple[str, str]]:
    """``[(kind, text)]`` of a percent-format source; kind is ``"code"`` or ``"markdown"``."""
    cells, kind, lines = [], None, []

    def flush():
        if kind is not None:
            text = "\n".join(lines).strip("\n")
            if text:
                cells.append((kind, text))

    for line in source.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind == "markdown":
            lines.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
        elif kind == "code":
            lines.append(line)
    flush()
    return cells


def notebook_of(path: pathlib.Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(t) if k == "markdown" else nbformat.v4.new_code_cell(t)
                for k, t in cells_of(path.read_text())]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def build(path: pathlib.Path) -> float:
    nb = notebook_of(path)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    seconds = time.perf_counter() - t0
    for i, cell in enumerate(nb.cells):      # nothing that changes from run to run:
        cell.id = f"cell-{i:02d}"              # fixed cell ids, no timings,
        cell.get("metadata", {}).pop("execution", None)
        if cell.cell_type == "code":           # and one output per stream however it was flushed
            cell.outputs = _merge_streams(cell.outputs)
    out = ROOT / "notebooks" / (path.stem + ".ipynb")
    nbformat.write(nb, out)
    return seconds


def _merge_streams(outputs: list) -> list:
    merged = []
    for out in outputs:
        if (out.output_type == "stream" and merged and merged[-1].output_type == "stream"
                and merged[-1].name == out.name):
            merged[-1].text += out.text
        else:
            merged.append(out)
    return merged


def main(argv: list[str]) -> int:
    sources = sorted(SRC.glob("[0-9][0-9]_*.py"))
    if argv:
        sources = [s for s in sources if any(s.name.startswith(a) for a in argv)]
        if not sources:
            raise SystemExit(f"no notebook source in {SRC} starts with {argv}")
    for src in sources:
        print(f"{src.stem}: {build(src):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
