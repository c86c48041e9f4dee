"""Input checks shared by the AWQ modules (each raises ``ValueError`` naming the argument)."""

from __future__ import annotations

import numpy as np

from refquant.schemes.numerics import as_float_array
from refquant.schemes.spec import QuantSpec


def matrix(x, name: str) -> np.ndarray:
    """``x`` as a finite, non-empty 2-D float array."""
    a = as_float_array(x, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def quant_spec(spec, name="spec") -> QuantSpec:
    """``spec`` if it is a :class:`QuantSpec`."""
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"{name} must be a QuantSpec, got {type(spec).__name__}")
    return spec
