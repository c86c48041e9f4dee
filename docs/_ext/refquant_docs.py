"""Sphinx extension that writes the generated parts of refquant's documentation site.

Generated at ``config-inited``, before Sphinx looks for source files, so a new module, a new
public name, a new command or a new notebook gets its page without anyone editing ``docs/``:

* ``api/gen/``: one page per layer (the package docstring and its own functions) and one per
  module (``automodule`` with its members), in DESIGN.md's layer order, plus ``public.rst``, the
  table of every name in ``refquant.__all__`` and ``refquant.testing.__all__`` with a link to the
  place it is defined;
* ``cli/gen/``: one page per ``refquant`` subcommand, from ``refquant.cli.build_parser()``
  (sphinx-argparse) and the command module's docstring;
* ``learn/nb/``: the committed notebooks, copied as they are (never executed by the build).

The public names are re-exported lazily from their defining modules, where autodoc documents
them; a cross-reference to the public path (``refquant.quantize``, ``refquant.testing.tie_tensor``)
is resolved to that definition by :func:`resolve_public_alias`. How docstrings are read (and what
is reported about them) is in ``refquant_docstrings.py``.

Files are rewritten only when their text changes, so an incremental build stays incremental.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re
import shutil

import numpy as np

import refquant_docstrings
from refquant_docstrings import is_data

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "refquant"

# DESIGN.md's layers, bottom first, with the one-line title of each page (commands and cli
# have the CLI pages instead)
LAYERS = {
    "schemes": "what a number becomes",
    "calibration": "from data to a clipping range",
    "kernels": "the integer matmul core",
    "algorithms": "one weight matrix at a time",
    "integer": "integer-only execution",
    "training": "training and quantization-aware training",
    "models": "checkpoints and the Llama model",
    "formats": "bytes on disk",
    "pipeline": "whole models",
    "testing": "refquant as the oracle in other projects' tests",
}


def write_if_changed(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to ``path`` unless it already holds exactly that (keeps mtimes stable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def prune(folder: pathlib.Path, keep: set[str]) -> None:
    """Remove generated files in ``folder`` that are no longer generated (a module that went)."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and p.name not in keep:
                p.unlink()


def heading(title: str, char: str = "=") -> str:
    return f"{title}\n{char * len(title)}\n"


def layer_modules(layer: str) -> list[str]:
    """Modules and subpackages of one layer, at any depth, sorted by dotted name.

    Private modules (``_llvm.py``) are included: the site is for reviewers too, and the
    docstrings name the private helpers that do a public function's work for speed.
    """
    out = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) > 2 and not any(p.startswith("__") for p in parts):
            out.append(".".join(parts))
    return sorted(out)


def assigns(module: str, name: str) -> bool:
    """Whether ``module``'s source defines or assigns ``name`` at top level (found with ast)."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                for t in node.targets):
            return True
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            return True
    return False


def canonical(module: str, name: str) -> str:
    """Where the object that ``module`` exports as ``name`` is defined, as a dotted path.

    A function or class says so itself (``__module__``); a constant has no ``__module__``, so
    the module's source, then its package's other modules, are searched for the assignment.
    """
    obj = getattr(importlib.import_module(module), name)
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    package = module if (PACKAGE.joinpath(*module.split(".")[1:]) / "__init__.py").is_file() \
        else module.rsplit(".", 1)[0]
    for candidate in [module] + layer_modules(package.split(".")[1]):
        if candidate.startswith(package) and assigns(candidate, name):
            return f"{candidate}.{name}"
    raise LookupError(f"{name!r} is exported by {module} but assigned in no module of {package}")


def public_names() -> dict[str, str]:
    """Public path -> defining path, for ``refquant.__all__`` and ``refquant.testing.__all__``."""
    import refquant
    import refquant.testing

    out = {}
    for name in refquant.__all__:
        if name != "__version__":
            out[f"refquant.{name}"] = canonical(refquant._EXPORTS[name], name)
    for name in refquant.testing.__all__:
        out[f"refquant.testing.{name}"] = canonical("refquant.testing", name)
    return out


ROLE = re.compile(r":[a-z:]+:`(~?)([^`<]*?)(?: <[^>]*>)?`")
CITATION = re.compile(r"\s*\[[0-9A-Za-z-]+\]_")


def summary(obj) -> str:
    """The first paragraph of an object's docstring, on one line, as plain literals.

    Roles and citations (``:func:`x```, ``[1]_``) resolve only in the object's own module and
    docstring, so here they become literals and are dropped; '' for a constant.
    """
    if is_data(obj):
        return ""
    doc = inspect.getdoc(obj) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    def literal(m):                        # ~a.b.c shows as c, as the role would show it
        return f"``{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}``"
    return ROLE.sub(literal, CITATION.sub("", text))


CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*$")


def constants(module: str) -> list[str]:
    """Top-level ``UPPER_CASE`` names ``module`` assigns (tables, bounds, tile sizes), by ast.

    Docstrings refer to them (``:data:`OBSERVERS```); autodoc skips a constant without a
    ``#:`` comment, so each is named explicitly.
    """
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name) and CONSTANT.match(t.id)]
    return list(dict.fromkeys(names))


def module_page(module: str, data_names: list[str], package: bool = False) -> str:
    """``automodule`` of one module with its members, then ``autodata`` for its constants.

    Constants (the module's own ``UPPER_CASE`` names and the public ones it defines) are named
    explicitly, after the functions and classes, and left out of the member list so that none
    is documented twice; a value is shown where it fits on a line. For a layer's package
    (``package=True``) only the docstring is written here: its own members follow the list of
    its modules (:func:`package_members`).
    """
    mod = importlib.import_module(module)
    data_names = [n for n in dict.fromkeys(data_names + constants(module)) if hasattr(mod, n)]
    lines = [f".. automodule:: {module}"]
    if package:
        return "\n".join(lines) + "\n"
    # private helpers with a docstring are shown too (rule 9 of STYLE.md: what is done only
    # for speed is a named helper whose docstring says what it computes); a package's __all__
    # re-exports names documented where they are defined, so only its own members are here
    lines += ["   :members:", "   :private-members:", "   :ignore-module-all:",
              "   :show-inheritance:"]
    if data_names:
        lines.append("   :exclude-members: " + ", ".join(data_names))
    lines.append("")
    lines += autodata(module, data_names)
    return "\n".join(lines)


def autodata(module: str, names: list[str]) -> list[str]:
    mod = importlib.import_module(module)
    lines = []
    for name in names:
        lines.append(f".. autodata:: {module}.{name}")
        if isinstance(getattr(mod, name), np.ndarray) or len(repr(getattr(mod, name))) > 80:
            lines.append("   :no-value:")
        lines.append("")
    return lines


def package_members(package: str, data_names: list[str]) -> str:
    """The functions, classes and constants a layer's ``__init__.py`` defines itself (the
    kernels' dispatcher), under their own heading after the list of modules; '' if none."""
    mod = importlib.import_module(package)
    own = [(inspect.getsourcelines(obj)[1], name, obj) for name, obj in vars(mod).items()
           if (inspect.isfunction(obj) or inspect.isclass(obj))
           and obj.__module__ == package and obj.__doc__]
    data_names = [n for n in dict.fromkeys(data_names + constants(package)) if hasattr(mod, n)]
    if not own and not data_names:
        return ""
    lines = [heading(f"Defined in ``{package}``", "-"), f".. currentmodule:: {package}", ""]
    for _, name, obj in sorted(own, key=lambda t: t[0]):
        if inspect.isclass(obj):
            lines += [f".. autoclass:: {name}", "   :members:", "   :show-inheritance:", ""]
        else:
            lines += [f".. autofunction:: {name}", ""]
    return "\n".join(lines + autodata(package, data_names))


def write_api(aliases: dict[str, str]) -> None:
    """``api/gen/``: a page per layer and per module, and the public-name table."""
    out = DOCS / "api" / "gen"
    data_by_module: dict[str, list[str]] = {}
    for target in aliases.values():
        module, name = target.rsplit(".", 1)
        if is_data(getattr(importlib.import_module(module), name)):
            data_by_module.setdefault(module, []).append(name)
    written = set()
    for layer in LAYERS:
        package = f"refquant.{layer}"
        title = f"{package}: {LAYERS[layer]}"
        modules = layer_modules(layer)
        text = [f".. _api-{layer}:\n", heading(title), module_page(package, [], package=True),
                ".. toctree::\n   :maxdepth: 1\n   :caption: Modules\n"]
        text += [f"   {m}" for m in modules]
        text += ["", package_members(package, sorted(data_by_module.get(package, [])))]
        write_if_changed(out / f"{layer}.rst", "\n".join(text) + "\n")
        written.add(f"{layer}.rst")
        for m in modules:
            page = heading(f"``{m}``") + "\n" + module_page(m, sorted(data_by_module.get(m, [])))
            write_if_changed(out / f"{m}.rst", page)
            written.add(f"{m}.rst")
    write_if_changed(out / "public.rst", public_table(aliases))
    written.add("public.rst")
    prune(out, written)


def public_table(aliases: dict[str, str]) -> str:
    """The table of public names: public path, where it is defined (a link), first line."""
    rows = [".. list-table::", "   :header-rows: 1", "   :widths: 25 35 40", "",
            "   * - name", "     - defined in", "     - summary"]
    for public, target in sorted(aliases.items(), key=lambda kv: kv[0].lower()):
        module, name = target.rsplit(".", 1)
        obj = getattr(importlib.import_module(module), name)
        rows += [f"   * - ``{public}``", f"     - :py:obj:`{target}`", f"     - {summary(obj)}"]
    return "\n".join(rows) + "\n"


def write_cli() -> None:
    """``cli/gen/``: one page per subcommand of ``refquant``."""
    from refquant import cli

    out = DOCS / "cli" / "gen"
    written = set()
    for name, (module, help_text) in cli.COMMANDS.items():
        text = "\n".join([
            f".. _cli-{name}:\n", heading(f"``refquant {name}``"), help_text[0].upper() + help_text[1:] + ".\n",
            f".. automodule:: refquant.commands.{module}\n",
            heading("Arguments", "-"),
            ".. argparse::", "   :module: refquant.cli", "   :func: build_parser",
            "   :prog: refquant", f"   :path: {name}", "   :nodescription:", "",
        ])
        write_if_changed(out / f"{name}.rst", text)
        written.add(f"{name}.rst")
    # the pages in the order of ``refquant --help`` (cli/index.rst includes this)
    toc = ".. toctree::\n   :maxdepth: 1\n\n" + "".join(f"   gen/{n}\n" for n in cli.COMMANDS)
    write_if_changed(out / "toctree.inc", toc)
    written.add("toctree.inc")
    prune(out, written)


def copy_notebooks() -> None:
    """``learn/nb/``: the committed notebooks, byte for byte (outputs as committed)."""
    out = DOCS / "learn" / "nb"
    out.mkdir(parents=True, exist_ok=True)
    written = set()
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        dest = out / nb.name
        if not dest.is_file() or dest.read_bytes() != nb.read_bytes():
            shutil.copy2(nb, dest)
        written.add(nb.name)
    prune(out, written)


def resolve_public_alias(app, env, node, contnode):
    """Resolve a reference to a name by the path it is imported under, to its definition.

    ``refquant.quantize`` and ``refquant.testing.tie_tensor`` are the public paths of objects
    that autodoc documents where they are defined; and a docstring may name an object its module
    imports (``:class:`QuantSpec``` in :mod:`refquant.testing.golden`) as Python code would. Each
    resolves to the documented definition; anything else stays a broken reference.
    """
    if node.get("refdomain") != "py":
        return None
    aliases = app.config.refquant_public_aliases
    name, context = node.get("reftarget", ""), node.get("py:module")
    target = aliases.get(name) or (aliases.get(f"{context}.{name}") if context else None)
    if target is None and context and context.startswith("refquant") and name.isidentifier():
        target = imported_name(context, name)
    if target is None and name.startswith("refquant.") and "." in name:
        module, attr = name.rsplit(".", 1)            # refquant.formats.gptq.CheckpointWriter
        target = imported_name(module, attr)
    if target is None:
        return None
    domain = env.get_domain("py")
    node = node.deepcopy()
    node["reftarget"] = target
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], target, node,
                               contnode)


def imported_name(module: str, name: str) -> str | None:
    """Where ``name``, as seen from ``module``'s namespace, is defined (None if it is not there)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    obj = getattr(mod, name, None)
    if obj is None:
        return None
    if inspect.isclass(obj) or inspect.isroutine(obj):
        home = getattr(obj, "__module__", "") or ""
        return f"{home}.{obj.__qualname__}" if home.startswith("refquant") else None
    try:
        return canonical(module, name)
    except LookupError:
        return None


def generate(app, config) -> None:
    aliases = public_names()
    config.refquant_public_aliases = aliases
    write_api(aliases)
    write_cli()
    copy_notebooks()


def setup(app):
    app.add_config_value("refquant_public_aliases", {}, "env")
    app.connect("config-inited", generate)
    app.connect("missing-reference", resolve_public_alias)
    refquant_docstrings.connect(app)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
