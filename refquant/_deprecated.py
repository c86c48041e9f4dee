"""Thin re-export modules for the flat import paths of refquant 0.1 (one release only).

``refquant.gptq``, ``refquant.calibrate``, ... moved into the layered packages (the README's
"Where things are" lists each old path and its new one). Importing an old path still works: it
re-exports every name of the new module and emits a :class:`DeprecationWarning` naming it.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings

# old flat path -> new module
MOVED = {
    "refquant.numerics": "refquant.schemes.numerics",
    "refquant.spec": "refquant.schemes.spec",
    "refquant.uniform": "refquant.schemes.uniform",
    "refquant.nonuniform": "refquant.schemes.nonuniform",
    "refquant.codebook": "refquant.schemes.codebook",
    "refquant.casts": "refquant.schemes.casts",
    "refquant.packing": "refquant.schemes.packing",
    "refquant.sizes": "refquant.schemes.sizes",
    "refquant.calibrate": "refquant.calibration.observers",
    "refquant.entropy": "refquant.calibration.entropy",
    "refquant.gptq": "refquant.algorithms.gptq",
    "refquant.awq": "refquant.algorithms.awq",
    "refquant.awq_block": "refquant.pipeline.awq_block",
    "refquant.intonly": "refquant.integer.intonly",
    "refquant.w8a8": "refquant.integer.w8a8",
    "refquant.nn": "refquant.training.nn",
    "refquant.qat": "refquant.training.qat",
    "refquant.qat_mlp": "refquant.training.qat_mlp",
    "refquant.recipes": "refquant.pipeline.recipes",
    "refquant.evaluate": "refquant.pipeline.evaluate",
    "refquant.data": "refquant.pipeline.data",
    "refquant.audit": "refquant.formats.audit",
    "refquant.resources": "refquant.models.resources",
    "refquant.formats.layout": "refquant.models.layout",
}
# names that left an old module for a module of their own (fake_quantize needs calibration)
ALSO_FROM = {
    "refquant.uniform": ("refquant.calibration.fake",),
    "refquant.awq": ("refquant.pipeline.awq_block",),
}


class _CallableShim(types.ModuleType):
    """An old module path that shares its name with a public function (``refquant.gptq`` and
    ``rq.gptq``). Importing the module makes Python bind ``refquant.gptq`` to it, so the shim
    forwards calls to the function: ``rq.gptq(W, H, spec)`` keeps working after an old import."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def reexport(old: str) -> None:
    """Fill the module ``old`` with the names of its new module and warn once per import."""
    new = MOVED[old]
    warnings.warn(f"{old} is deprecated and will be removed in refquant 0.3; import from {new}",
                  DeprecationWarning, stacklevel=3)
    module = sys.modules[old]
    names = []
    for source in (new,) + ALSO_FROM.get(old, ()):
        target = importlib.import_module(source)
        for name, value in vars(target).items():
            if not (name.startswith("__") and name.endswith("__")):
                setattr(module, name, value)
        names += getattr(target, "__all__", [])
    module.__all__ = names
    if callable(getattr(module, old.rsplit(".", 1)[1], None)):
        module.__class__ = _CallableShim
