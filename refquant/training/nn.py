"""A small NumPy training stack: just enough to train and fine-tune an MLP by hand.

Every layer has ``forward(x)`` (which remembers what its backward pass needs),
``backward(dy) -> dx`` (which also fills the ``grad`` of the layer's parameters) and
``parameters() -> list[Parameter]``. The quantizers of :mod:`refquant.training.qat` follow the same
protocol, so a fake-quantized activation is just another layer and a fake-quantized weight is a
quantizer handed to :class:`Linear`. Every backward pass is checked against central finite
differences in ``tests/test_nn.py``. The layers live in :mod:`refquant.training.layers`, the
optimizers and the loop in :mod:`refquant.training.optim`; this module gathers them.

Symbols
-------
=====  ==============================================================================
N      batch size (rows of ``x``)
K      input features, M output features, C classes
x      layer input ``[N, K]`` (or ``[..., K]``), y its output, dy = dL/dy, dx = dL/dx
W      weight ``[M, K]`` (the (out_features, in_features) convention), b bias ``[M]``
W_hat  the weight the layer multiplies with: ``W``, or its fake-quantized version
eta    learning rate; mu momentum; beta1, beta2, eps Adam's constants
=====  ==============================================================================

References
----------
.. [1] D. Hendrycks, K. Gimpel, "Gaussian Error Linear Units (GELUs)", arXiv:1606.08415, 2016.
.. [2] B. T. Polyak, "Some methods of speeding up the convergence of iteration methods",
       USSR Comp. Math. and Math. Physics 4(5), 1964 (heavy-ball momentum).
.. [3] D. P. Kingma, J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
       arXiv:1412.6980.
.. [4] K. He et al., "Delving Deep into Rectifiers", ICCV 2015, arXiv:1502.01852 (init).
"""

from refquant.training.layers import (GELU, Linear, Parameter, ReLU, Sequential,  # noqa: F401
                                      softmax_cross_entropy)
from refquant.training.optim import SGD, Adam, FitResult, accuracy, fit  # noqa: F401

__all__ = ["Parameter", "Linear", "ReLU", "GELU", "Sequential", "softmax_cross_entropy",
           "SGD", "Adam", "fit", "FitResult", "accuracy"]
