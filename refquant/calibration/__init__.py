"""From data to a clipping range: the observers (min-max, percentile, MSE, KL) behind
:func:`refquant.calibrate`, the entropy histograms of the KL search, and fake quantization.

Imports only :mod:`refquant.schemes`.
"""
