"""How the site reads refquant's docstrings, and what it reports about them (Sphinx handlers).

numpydoc renders the function and class docstrings. Around it:

* a module docstring keeps its own sections (Symbols, Zero-range convention, ...) as reST;
* a docstring numpydoc cannot parse, or an aligned block written as plain text (which reST
  joins into one paragraph), is a Sphinx warning, so ``-W`` fails on it;
* a citation that starts with an initial (``M. Nagel``) is not taken for a lettered list, and a
  constant does not show its type's docstring (an ndarray's) as its own.
"""

from __future__ import annotations

import inspect
import re
import warnings


def is_data(obj) -> bool:
    return not (inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj))


def _where(obj, name: str) -> str:
    try:
        return f"{inspect.getsourcefile(obj)}:docstring of {name}"
    except TypeError:                                  # a constant: no source file of its own
        return f"docstring of {name}"


def drop_inherited_data_doc(app, what, name, obj, options, lines) -> None:
    """A constant (``NF4_LEVELS``) has no docstring of its own: do not show its type's."""
    if what in ("data", "attribute") and is_data(obj) and lines:
        type_doc = getattr(obj, "__doc__", None) or ""      # an ndarray's: its class's
        if " ".join(lines).split() == type_doc.split():
            lines[:] = []


def numpydoc_parse_warnings(app, what, name, obj, options, lines) -> None:
    """Report a docstring that numpydoc cannot parse as a Sphinx warning (fatal under ``-W``).

    numpydoc itself only emits a Python ``UserWarning`` and drops the section it did not
    understand (e.g. ``Attributes (after fit())``: an unknown section title); this runs before
    numpydoc's own handler, on the same lines.
    """
    from numpydoc.docscrape import NumpyDocString
    from sphinx.util import logging

    if what == "module":
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        NumpyDocString("\n".join(lines))
    where = _where(obj, name)
    for w in caught:
        message = str(w.message).split(" in the docstring of ")[0]
        logging.getLogger(__name__).warning("numpydoc cannot parse it: %s", message,
                                            type="numpydoc", subtype="parse", location=where)


def module_docstring_as_rest(app, what, name, obj, options, lines) -> None:
    """Keep a module docstring's own sections (Symbols, Zero-range convention, ...) as reST.

    refquant's module docstrings carry the symbol table and conventions in sections numpydoc
    does not know; numpydoc would drop them. They are plain reST sections instead: only the
    citations are renamed as numpydoc renames them (``[1]`` -> ``[R<hash>-1]``, shown as
    ``[1]`` again), so two modules' ``[1]`` do not collide, and numpydoc's marker tells it the
    docstring is done.
    """
    from numpydoc.numpydoc import DEDUPLICATION_TAG, rename_references

    if what == "module" and DEDUPLICATION_TAG not in lines:
        rename_references(app, what, name, obj, options, lines)
        lines += ["", "..", DEDUPLICATION_TAG]


INITIAL = re.compile(r"^(\s*\.\. \[[^\]]+\]\s+)([A-Z])\. ")
PLAIN_ROW = re.compile(r"^(\S+(?: \S+)?) {2,}\S")
NOT_PROSE = re.compile(r"^(\.\. |[-*+] |>>>|[0-9]+[.)] |[=\-~^+]+(\s+[=\-]+)*\s*$)")


def escape_citation_initials(app, what, name, obj, options, lines) -> None:
    """``.. [2] M. Nagel et al., ...`` on one line is an enumerated list ("M.") to docutils.

    The initial's full stop is escaped (``M\\.``), so the entry renders as the author's name.
    """
    for i, line in enumerate(lines):
        lines[i] = INITIAL.sub(r"\1\2\\. ", line)


def plain_text_tables(app, what, name, obj, options, lines) -> None:
    """Warn about an aligned two-column block written as plain text (``x   real input``).

    reST joins such lines into one paragraph (or, with indented continuation lines, fails), so
    the page shows a run-on sentence where the editor shows a table: it must be a reST simple
    table (``====  ====`` borders) or a definition list.
    """
    from sphinx.util import logging

    paragraphs, current, literal = [], [], False
    for line in lines + [""]:
        if line.strip():
            current.append(line)
            continue
        if current:
            if not literal:
                paragraphs.append(current)
            literal = current[-1].rstrip().endswith("::") or current[0].startswith(".. ")
        current = []
    for para in paragraphs:
        if len(para) > 2 and re.fullmatch(r"[=\-~^]{3,}", para[1].strip()):
            para = para[2:]                               # a section title right above it
        if para[0].startswith(" ") or any(NOT_PROSE.match(l) for l in para):
            continue
        rows = [PLAIN_ROW.match(l) for l in para if not l.startswith(" ")]
        columns = {m.end() - 1 for m in rows if m}
        if len(para) >= 2 and sum(bool(m) for m in rows) >= 2 and len(columns) == 1:
            logging.getLogger(__name__).warning(
                "plain-text table %r... renders as one paragraph: write it as a reST simple "
                "table", para[0].strip()[:40], type="refquant", subtype="plaintable",
                location=_where(obj, name))


def connect(app) -> None:
    """Register the handlers: before numpydoc's (priority 500), in this order."""
    app.connect("autodoc-process-docstring", escape_citation_initials, priority=300)
    app.connect("autodoc-process-docstring", plain_text_tables, priority=300)
    app.connect("autodoc-process-docstring", numpydoc_parse_warnings, priority=400)
    app.connect("autodoc-process-docstring", drop_inherited_data_doc, priority=400)
    app.connect("autodoc-process-docstring", module_docstring_as_rest, priority=450)
