"""A weight quantizer given as functions, for AWQ's searches on grids a QuantSpec does not describe.

AWQ's two searches (:func:`refquant.algorithms.awq.awq_search_scale`,
:func:`refquant.algorithms.awq.awq_clip`) need only a fake quantizer ``Q``: weights in, their
quantize-dequantize out. A :class:`~refquant.schemes.spec.QuantSpec` is one such ``Q``
(min-max, uniform codes); :class:`WeightQuantizer` is any other, e.g. a GGML block format's own
quantizer with llama.cpp's importance matrix (:mod:`refquant.pipeline.gguf_methods`), so that the
scales are searched on the grid the weights will be stored on.

The scale ``s``
---------------
The searches quantize ``W diag(s)`` (the layer computes ``(W diag(s)) (x / s)``). A quantizer
that weights the rounding error of input column ``j`` by :math:`E[x_j^2]` (llama.cpp's imatrix
:math:`w_j`) must weight the columns of ``W diag(s)`` by the second moments of *its* inputs,

.. math:: w'_j = E[(x_j / s_j)^2] = w_j / s_j^2 ,

so ``quantize`` receives ``s`` beside the scaled weight. A quantizer that does not weight its
columns ignores it. :meth:`WeightQuantizer.folded` binds a scale already folded into the weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from refquant.schemes.numerics import check_positive_int


@dataclass(frozen=True)
class WeightQuantizer:
    """A fake quantizer as two functions, ``Q(W) = dequantize(quantize(W, s))``.

    Attributes
    ----------
    quantize : callable
        ``quantize(W, s) -> stored``: ``W`` float32 ``[out, in]``, ``s`` float32 ``[in]`` the
        factor its columns carry (ones for an unscaled weight; see the module docstring); any
        stored form (e.g. GGUF bytes).
    dequantize : callable
        ``dequantize(stored) -> W_hat`` float32 ``[out, in]``.
    group_size : int
        The columns the quantizer treats independently of the others (a GGML block: 32, or
        256 for the K-quants): the clipping search's groups, whose choices are then exact.
    name : str
        For messages (e.g. ``"Q5_0"``).
    """

    quantize: Callable[[np.ndarray, np.ndarray], Any]
    dequantize: Callable[[Any], np.ndarray]
    group_size: int
    name: str = "quantizer"

    def __post_init__(self):
        if not callable(self.quantize) or not callable(self.dequantize):
            raise ValueError(f"WeightQuantizer {self.name!r}: quantize and dequantize must be "
                             "callable")
        check_positive_int(self.group_size, "group_size")

    def encode(self, W: np.ndarray, s: np.ndarray | None = None):
        """``(stored, W_hat)`` of ``W [out, in]``; ``s`` [in] defaults to ones."""
        W = np.asarray(W, np.float32)
        s = np.ones(W.shape[1], np.float32) if s is None else np.asarray(s, np.float32)
        stored = self.quantize(W, s)
        W_hat = np.asarray(self.dequantize(stored), np.float32)
        if W_hat.shape != W.shape:
            raise ValueError(f"WeightQuantizer {self.name!r} returned shape {W_hat.shape} for "
                             f"a weight of shape {W.shape}")
        return stored, W_hat

    def __call__(self, W: np.ndarray, s: np.ndarray | None = None) -> np.ndarray:
        """``Q(W)``: float32 ``[out, in]``."""
        return self.encode(W, s)[1]

    def folded(self, s: np.ndarray) -> WeightQuantizer:
        """The quantizer of a weight whose columns already carry ``s`` [in] (folded by AWQ):
        ``quantize(W, t)`` becomes ``quantize(W, s * t)``."""
        s0 = np.asarray(s, np.float32)
        inner = self.quantize
        return WeightQuantizer(lambda W, t: inner(W, s0 * t), self.dequantize,
                               self.group_size, self.name)


__all__ = ["WeightQuantizer"]
