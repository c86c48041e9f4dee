"""Fake quantization: calibrate, quantize and dequantize in one call.

.. math::

    \\hat x = s\\,\\big(\\operatorname{clamp}(\\operatorname{round}(x / s) + z,\\; q_{min},\\; q_{max}) - z\\big)

with ``(s, z)`` from :func:`refquant.calibrate` (or given). The rounding itself is
:func:`refquant.quantize` / :func:`refquant.dequantize` (:mod:`refquant.schemes.uniform`).
This is refquant's one fake quantizer: QAT's forward pass (:class:`refquant.FakeQuant`) calls it,
and ``refquant.fake_quant(v, qp, spec)`` is a deprecated alias of
``fake_quantize(v, spec, qparams=qp)``.

Symbols
-------
=====  ========================================================================
x      real input, any shape
s, z   scale and zero point of each parameter group (:class:`refquant.QParams`)
x_hat  the fake-quantized output, the shape of ``x``
=====  ========================================================================
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
    x : array_like of float (or integer)
        Must be finite.
    spec : QuantSpec
    method : str
        Calibration method of :func:`refquant.calibrate` (``"minmax"``, ``"percentile"``,
        ``"mse"``, ``"kl"``), used when ``qparams`` is None.
    qparams : QParams, optional
        Use these parameters instead of calibrating on ``x``.
    **calib_kw
        Passed to the observer (e.g. ``percentile=99.9``) when calibrating.

    Returns
    -------
    numpy.ndarray, the dtype of ``x`` if floating (float32 otherwise), the shape of ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from refquant import QParams, QuantSpec
    >>> x = np.array([-1.0, -0.3, 0.0, 0.4, 1.5])
    >>> fake_quantize(x, QuantSpec(bits=3)).tolist()             # min-max: s = 1.5 / 3
    [-1.0, -0.5, 0.0, 0.5, 1.5]
    >>> fake_quantize(x, QuantSpec(bits=3), qparams=QParams(0.25)).tolist()   # codes -4..3
    [-1.0, -0.25, 0.0, 0.5, 0.75]
    >>> fake_quantize([1, 2, 3], QuantSpec(bits=4)).dtype        # integer input: float32
    dtype('float32')
    """
    out_dtype = np.asarray(x).dtype
    x = as_float_array(x)
    if qparams is None:
        qparams = calibrate(x, spec, method=method, **calib_kw)
    out_dtype = out_dtype if out_dtype.kind == "f" else np.dtype(np.float32)
    return dequantize(quantize(x, qparams, spec), qparams, spec, dtype=out_dtype)


__all__ = ["fake_quantize"]
