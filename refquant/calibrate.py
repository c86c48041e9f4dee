"""Calibration observers: from data to a clipping range and quantization parameters.

Each observer sees data in batches (``update(x)``, any number of times) and then returns
:class:`~refquant.spec.QParams` (``qparams()``). :func:`calibrate` is the one-batch shortcut.
"""

from __future__ import annotations

import numpy as np

from .numerics import as_float_array
from .spec import QParams, QuantSpec, grouped, param_shape
from .uniform import qparams_from_range


class Observer:
    """Base class: keeps the spec and checks that every batch has the same parameter shape."""

    def __init__(self, spec: QuantSpec):
        if not isinstance(spec, QuantSpec):
            raise ValueError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        self.spec = spec
        self._pshape = None

    def _groups(self, x) -> np.ndarray:
        x = as_float_array(x)
        ps = param_shape(x.shape, self.spec)
        if self._pshape is not None and ps != self._pshape:
            raise ValueError(f"batch gives parameter shape {ps}, earlier batches gave {self._pshape}")
        self._pshape = ps
        return grouped(x, self.spec)

    def _require_data(self):
        if self._pshape is None:
            raise ValueError(f"{type(self).__name__}.qparams() called before any update()")


class MinMaxObserver(Observer):
    """Clipping range ``[min(x), max(x)]`` per parameter group, over all batches seen."""

    def __init__(self, spec: QuantSpec):
        super().__init__(spec)
        self.lo = self.hi = None

    def update(self, x) -> "MinMaxObserver":
        g = self._groups(x)
        lo, hi = np.nanmin(g, axis=-1), np.nanmax(g, axis=-1)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        return self

    def qparams(self) -> QParams:
        self._require_data()
        return qparams_from_range(self.lo, self.hi, self.spec)


OBSERVERS = {"minmax": MinMaxObserver}


def calibrate(x, spec: QuantSpec, method: str = "minmax", **kw) -> QParams:
    """Quantization parameters for ``x`` under ``spec`` by the named calibration ``method``.

    Parameters
    ----------
    x : array_like of float
    spec : QuantSpec
    method : str
        One of :data:`OBSERVERS`.
    **kw
        Passed to the observer's constructor (e.g. ``percentile=99.9``).
    """
    if method not in OBSERVERS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {sorted(OBSERVERS)}")
    return OBSERVERS[method](spec, **kw).update(x).qparams()
