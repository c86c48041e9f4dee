"""The observer protocol shared by every calibration method.

An observer sees data in batches (``update(x)``), chooses a clipping range (``clip_range()``,
two arrays of the spec's parameter shape) and turns it into :class:`~refquant.schemes.spec.QParams`
(``qparams()``). :class:`Observer` holds the spec and the grouping, :class:`MinMaxObserver`
streams the range; :class:`_KeepData` keeps
every batch for the methods whose result must not depend on how the data was split.
See :mod:`refquant.calibration.observers` for the methods and the clipping-range convention.
"""

from __future__ import annotations

import numpy as np

from refquant.schemes.float_quant import FloatSpec
from refquant.schemes.numerics import as_float_array
from refquant.schemes.spec import QParams, QuantSpec, grouped, param_shape
from refquant.schemes.uniform import qparams_from_range


class Observer:
    """Base class: keeps the spec and checks that every batch has the same parameter shape.

    Subclasses implement ``update(x) -> self`` and ``clip_range() -> (lo, hi)``.
    """

    def __init__(self, spec: QuantSpec):
        if not isinstance(spec, (QuantSpec, FloatSpec)):
            raise ValueError(f"spec must be a FloatSpec or QuantSpec, got {type(spec).__name__}")
        self.spec = spec
        self._pshape = None

    def _groups(self, x) -> np.ndarray:
        x = as_float_array(x)
        ps = param_shape(x.shape, self.spec)
        if self._pshape is not None and ps != self._pshape:
            raise ValueError(f"batch gives parameter shape {ps}, earlier batches gave "
                             f"{self._pshape}")
        grouped_x = grouped(x, self.spec)
        self._pshape = ps
        return grouped_x

    def _require_data(self):
        if self._pshape is None:
            raise ValueError(f"{type(self).__name__}.qparams() called before any update()")

    def clip_range(self) -> tuple[np.ndarray, np.ndarray]:
        """The chosen clipping range ``(lo, hi)``, float64 arrays of the parameter shape."""
        raise NotImplementedError

    def qparams(self) -> QParams:
        """Scale and zero point for the chosen clipping range."""
        lo, hi = self.clip_range()
        return qparams_from_range(lo, hi, self.spec)


class MinMaxObserver(Observer):
    """Clipping range ``[min(x), max(x)]`` per parameter group, over all batches seen.

    Symmetric specs use ``a = max(|min x|, |max x|)``.

    Examples
    --------
    >>> from refquant import QuantSpec
    >>> obs = MinMaxObserver(QuantSpec(bits=8, symmetric=False))
    >>> obs = obs.update([0.5, 2.0]).update([-1.0, 0.0])
    >>> [float(v) for v in obs.clip_range()]
    [-1.0, 2.0]
    """

    def __init__(self, spec: QuantSpec):
        super().__init__(spec)
        self.lo = self.hi = None

    def update(self, x) -> "MinMaxObserver":
        g = self._groups(x)
        lo, hi = np.nanmin(g, axis=-1), np.nanmax(g, axis=-1)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        return self

    def clip_range(self):
        self._require_data()
        lo, hi = np.asarray(self.lo, np.float64), np.asarray(self.hi, np.float64)
        if self.spec.symmetric:
            a = np.maximum(np.abs(lo), np.abs(hi))
            return -a, a
        return lo, hi


class _KeepData(Observer):
    """Observer that keeps every batch (grouped, ``param_shape + (m,)``, NaN-padded)."""

    def __init__(self, spec: QuantSpec):
        super().__init__(spec)
        self._batches = []
        self._range = None

    def update(self, x):
        self._batches.append(np.array(self._groups(x), copy=True))
        self._range = None
        return self

    def _data(self) -> np.ndarray:
        """All data seen, ``param_shape + (m_total,)``, in the (promoted) dtype of the batches."""
        self._require_data()
        if len(self._batches) > 1:
            self._batches = [np.concatenate(self._batches, axis=-1)]
        return self._batches[0]

    def clip_range(self):
        if self._range is None:
            self._range = self._choose(self._data())
        return self._range

    def _choose(self, g):
        raise NotImplementedError


def _covered_range(g64: np.ndarray, spec: QuantSpec):
    """The range a min-max quantizer covers: ``[-max|x|, max|x|]`` (symmetric) or
    ``[min(min x, 0), max(max x, 0)]`` (asymmetric); ``g64`` is ``[..., m]`` NaN-padded."""
    if spec.symmetric:
        a = np.nanmax(np.abs(g64), axis=-1)
        return -a, a
    return np.minimum(np.nanmin(g64, axis=-1), 0.0), np.maximum(np.nanmax(g64, axis=-1), 0.0)
