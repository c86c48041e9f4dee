"""Stable identities for the Numba objects that compiled kernels hold in their closures, so that
Numba's on-disk cache finds those kernels again in the next process.

Numba keys a cached kernel by its bytecode and by the pickled contents of its closure cells
(``numba.core.caching._CacheImpl``: the index key hashes ``dumps(cell contents)``). An intrinsic
(``@intrinsic``) or a dispatcher (``@njit``) pickles with a ``uuid`` drawn anew in every process,
so a kernel built in a function around one never met its own cache entry: every process compiled
it again (seconds per kernel) and appended one more entry to the index file.

:func:`stable` gives such an object, when it is created, an identity made of its qualified name,
the parameters it was built for and a digest of refquant's source: the same in every process
that runs the same source, different as soon as any of it changes (so an edit to a shared IR
helper in another file cannot leave a stale kernel behind). It changes what Numba's cache is
keyed by, never what a kernel computes.

An intrinsic's builder keeps its llvmlite types and constants inside the intrinsic's own
function, not in the scope around it: llvmlite objects cache their text the first time they are
printed into a module, so held in a closure they would pickle differently after the first
compile than before it, and the key written would never be the key looked up. :func:`stable`
refuses such an intrinsic.

It lives in the bottom layer because :mod:`refquant.schemes.numerics` builds one such object
(the rounding function the GPTQ, AWQ and W8A8 loops inline); the kernels use it too. Imports
nothing from refquant; nothing here imports Numba.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib

_PACKAGE = pathlib.Path(__file__).resolve().parent.parent        # refquant/


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """A SHA-256 digest (16 hex digits) of every ``.py`` file of the installed refquant package,
    in path order: what a stable identity is tied to."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(path.relative_to(_PACKAGE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _identity_for(obj, *params) -> str:
    fn = getattr(obj, "py_func", None) or getattr(obj, "_defn", None)
    if fn is None:
        raise TypeError(f"{obj!r} is neither a Numba dispatcher nor an intrinsic")
    args = ", ".join(repr(p) for p in params)
    return f"refquant:{fn.__module__}.{fn.__qualname__}({args}):{source_digest()}"


def identity(obj) -> str | None:
    """The identity :func:`stable` gave ``obj``:
    ``"refquant:<module>.<qualname>(<params>):<source digest>"``; ``None`` if it gave none."""
    return getattr(obj, "_refquant_identity", None)


def stable(obj, *params):
    """``obj`` (a Numba intrinsic or dispatcher, just created) with a stable identity (see
    :func:`identity`) made from its qualified name and ``params``; returned for use in place.

    ``params`` must tell apart the objects one builder makes (e.g. a register width): two live
    objects with one identity would share Numba's unpickling memo. An object that already has an
    identity (it was pickled before this call) keeps it: the kernels around it then miss the
    cache as before, and compute the same.
    """
    ident = _identity_for(obj, *params)
    defn = getattr(obj, "_defn", None)                       # an intrinsic's typing function
    cells = zip(defn.__code__.co_freevars, defn.__closure__ or ()) if defn is not None else ()
    held = [name for name, cell in cells
            if type(cell.cell_contents).__module__.startswith("llvmlite")]
    if held:
        raise TypeError(f"{ident}: the intrinsic's closure holds llvmlite objects {held}; build "
                        f"them inside the intrinsic (see refquant.schemes._jit)")
    try:
        obj._set_uuid(ident)                  # Numba asserts that no identity was drawn yet
    except AssertionError:
        return obj
    obj._refquant_identity = ident
    return obj
