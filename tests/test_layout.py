"""The package's folders are its architecture: imports go down the layer order, never in a cycle.

The oracle is the source itself: every ``import`` statement in ``refquant/`` (at module level and
inside functions, found with :mod:`ast`) is resolved to the module it names, and checked against
the layer order of DESIGN.md. The deprecated flat paths (``refquant/gptq.py`` ...) are thin
re-export modules outside the layers; they are checked separately: each warns and re-exports.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys
import warnings

import pytest

import refquant
from refquant._deprecated import MOVED

PACKAGE = pathlib.Path(refquant.__file__).parent

# DESIGN.md's layout, bottom layer first: a package may import only from packages before it.
LAYERS = ["schemes", "calibration", "kernels", "algorithms", "integer", "training", "models",
          "formats", "pipeline", "testing", "commands", "cli"]
SHIMS = {old for old in MOVED}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_modules() -> dict[str, pathlib.Path]:
    mods = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: p for m, p in mods.items()
            if m not in SHIMS and m not in ("refquant", "refquant._deprecated")}


def imports_of(name: str, path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every refquant import in the file, at any depth."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "refquant"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "refquant":
                continue
            for a in node.names:   # "from refquant.x import y" where y is a submodule
                sub = f"{mod}.{a.name}"
                out.append((node.lineno, sub if _is_module(sub) else mod))
    return out


def _is_module(name: str) -> bool:
    rel = pathlib.Path(*name.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return LAYERS.index(parts[1])


def test_every_library_module_is_in_a_layer():
    """No flat module is left at the package root except the lazy public API and the shims."""
    stray = [m for m in library_modules() if layer(m) is None]
    assert stray == []


def test_imports_follow_the_layer_order():
    bad = []
    for name, path in library_modules().items():
        for line, target in imports_of(name, path):
            if target == "refquant" and layer(name) < LAYERS.index("commands"):
                bad.append(f"{path.name}:{line} imports the lazy public API 'refquant' "
                           "(import the defining module)")
                continue
            if target in SHIMS:
                bad.append(f"{name}:{line} imports the deprecated path {target}")
                continue
            t = layer(target)
            if t is not None and t > layer(name):
                bad.append(f"{name}:{line} imports {target} from a higher layer")
    assert bad == []


def test_no_import_cycles():
    mods = library_modules()
    graph = {m: {t for _, t in imports_of(m, p) if t in mods and t != m} for m, p in mods.items()}
    # a package's __init__ re-exporting its submodules is not a cycle with them
    for m in graph:
        graph[m] = {t for t in graph[m] if not (mods[m].name == "__init__.py"
                                                and t.startswith(m + "."))}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == []


def test_the_checker_finds_a_violation(tmp_path):
    """The import walker sees imports inside functions and resolves relative ones."""
    f = tmp_path / "probe.py"
    f.write_text("def f():\n    from ..pipeline import blockwise\n    import refquant.models\n")
    found = imports_of("refquant.schemes.probe", f)
    assert (2, "refquant.pipeline.blockwise") in found and (3, "refquant.models") in found
    assert layer("refquant.pipeline.blockwise") > layer("refquant.schemes.probe")


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_paths_warn_and_reexport(old):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shim = importlib.import_module(old)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(MOVED[old] in m for m in messages), messages
    new = importlib.import_module(MOVED[old])
    for name in getattr(new, "__all__", []):
        assert getattr(shim, name) is getattr(new, name)


def test_public_api_survives_an_old_import():
    """``import refquant.gptq`` binds the package attribute to the shim; calls still work."""
    import numpy as np

    import refquant as rq
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        importlib.import_module("refquant.gptq")
        importlib.import_module("refquant.calibrate")
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    spec = rq.QuantSpec(bits=4, granularity="channel")
    res = rq.gptq(w, np.eye(4), spec)
    qp = rq.calibrate(w, spec)
    from refquant.calibration.observers import calibrate
    assert np.array_equal(qp.scale, calibrate(w, spec).scale)
    assert np.array_equal(res.codes, rq.quantize(w, qp, spec))


MAX_MODULE_LINES = 420          # "~400": a module is read in one sitting
MAX_FUNCTION_CODE_LINES = 100   # lines holding code, docstring excluded; kernels/ exempt


def _code_lines(fn) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return len({n.lineno for b in body for n in ast.walk(b) if hasattr(n, "lineno")})


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in library_modules().items():
        src = path.read_text()
        if len(src.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(src.splitlines())} lines")
        if name.startswith("refquant.kernels"):
            continue
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _code_lines(node)
                if n > MAX_FUNCTION_CODE_LINES:
                    too_long.append(f"{name}.{node.name}: {n} code lines")
    assert too_long == []


def test_the_size_rule_counts_code_not_docstrings():
    fn = ast.parse('def f():\n    """doc\n    more"""\n    x = 1\n    return x\n').body[0]
    assert _code_lines(fn) == 2
