"""A small NumPy training stack: just enough to train and fine-tune an MLP by hand.

Every layer has ``forward(x)`` (which remembers what its backward pass needs),
``backward(dy) -> dx`` (which also fills the ``grad`` of the layer's parameters) and
``parameters() -> list[Parameter]``. The quantizers of :mod:`refquant.training.qat` follow the same
protocol, so a fake-quantized activation is just another layer and a fake-quantized weight is a
quantizer handed to :class:`Linear`. Every backward pass is checked against central finite
differences in ``tests/test_nn.py``. The layers live in :mod:`refquant.training.layers`, the
optimizers and the loop in :mod:`refquant.training.optim`; this module gathers them.

The symbols (shapes of ``x``, ``W``, ``dy`` ...) are listed in :mod:`refquant.training.layers`,
the optimizers' constants in :mod:`refquant.training.optim`, each beside its references.
"""

from refquant.training.layers import (GELU, Linear, Parameter, ReLU, Sequential,  # noqa: F401
                                      softmax_cross_entropy)
from refquant.training.optim import SGD, Adam, FitResult, accuracy, fit  # noqa: F401

__all__ = ["Parameter", "Linear", "ReLU", "GELU", "Sequential", "softmax_cross_entropy",
           "SGD", "Adam", "fit", "FitResult", "accuracy"]
