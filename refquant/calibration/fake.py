"""Fake quantization: calibrate, quantize and dequantize in one call.

.. math::

    \\hat x = s\\,\\big(\\operatorname{clamp}(\\operatorname{round}(x / s) + z,\\; q_{min},\\; q_{max}) - z\\big)

with ``(s, z)`` from :func:`refquant.calibrate` (or given). The rounding itself is
:func:`refquant.quantize` / :func:`refquant.dequantize` (:mod:`refquant.schemes.uniform`).
"""

from __future__ import annotations

import numpy as np

from refquant.calibration.observers import calibrate
from refquant.schemes.numerics import as_float_array
from refquant.schemes.spec import QParams, QuantSpec
from refquant.schemes.uniform import dequantize, quantize


def fake_quantize(x, spec: QuantSpec, method: str = "minmax", qparams: QParams | None = None,
                  **calib_kw) -> np.ndarray:
    """Quantize-dequantize: ``dequantize(quantize(x, qp), qp)`` with ``qp`` from calibration.

    Parameters
    ----------
    x : array_like of float
    spec : QuantSpec
    method : str
        Calibration method passed to :func:`refquant.calibration.observers` when ``qparams`` is None.
    qparams : QParams, optional
        Use these parameters instead of calibrating on ``x``.

    Returns
    -------
    numpy.ndarray, the dtype of ``x`` if floating (float32 otherwise), the shape of ``x``.
    """
    x = as_float_array(x)
    if qparams is None:
        qparams = calibrate(x, spec, method=method, **calib_kw)
    out_dtype = x.dtype if x.dtype.kind == "f" else np.float32
    return dequantize(quantize(x, qparams, spec), qparams, spec, dtype=out_dtype)


__all__ = ["fake_quantize"]
