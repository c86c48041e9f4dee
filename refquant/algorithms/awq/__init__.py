"""AWQ: activation-aware weight quantization (Lin et al., MLSys 2024), one weight at a time.

The scale search and folding are in :mod:`refquant.algorithms.awq.scale`, the clipping search in
:mod:`refquant.algorithms.awq.clip`, a quantizer given as functions (for grids a QuantSpec does
not describe, e.g. GGML block formats) in :mod:`refquant.algorithms.awq.quantizer`; every name
is re-exported here.

AWQ [1]_ protects the weights that see large activations. Multiplying input channel ``j`` of a
weight by ``s_j > 1`` and dividing the activation by the same ``s_j`` leaves the float layer
unchanged, ``W x = (W diag(s)) (diag(s)^{-1} x)``, but shrinks the *relative* rounding error of
that channel's weights. The scales are found by a grid search over one exponent,

.. math::

    \\mathbf s = \\mathbf s_x^{\\alpha}, \\qquad
    \\alpha^* = \\arg\\min_{\\alpha \\in \\{0, 1/n, \\dots, (n-1)/n\\}}
    \\big\\lVert f(W;\\, X) - f\\big(Q(W \\operatorname{diag}(\\mathbf s))
    \\operatorname{diag}(\\mathbf s)^{-1};\\, X\\big)\\big\\rVert^2 ,

where ``s_x`` is the mean activation magnitude of each input channel and ``f`` the real output
of the block (or sub-module) that the weights feed, then folded into the operation before the
weights (an RMSNorm's weight or the rows of the previous linear), so the float model is
unchanged. A second grid search then narrows each group's clipping range (:func:`awq_clip`):
by default both ends of its min-max range shrink by ``beta``; ``rule="reference"`` clamps
at ``+-beta max|w|`` as the authors' code does [2]_ (its symbols: :mod:`refquant.algorithms.awq.clip`).
The block-level recipe for a Llama block is :func:`refquant.pipeline.awq_block.awq_block`.

Symbols
-------
=====  =========  ==========================================================================
X      [n, in]    calibration inputs of the weights (tokens flattened)
W      [out, in]  one weight (out_features, in_features); several ``W`` may share ``X``
s_x    [C]        ``mean |X|`` of each input channel (C = in, or fewer shared channels, below)
alpha  scalar     the exponent, on the grid ``k / n_grid``, ``k = 0..n_grid-1``
s      [C]        the per-channel scale ``s_x^alpha``, normalized (below)
Q                 the fake quantizer of the spec (min-max calibration,
                  :func:`refquant.fake_quantize`)
f                 ``forward_fn``: candidate weights -> the output whose error is measured
c      [in]       ``channel_map``: input channel ``j`` of ``W`` uses scale ``s[c_j]``
                  (identity by default; grouped-query attention shares one scale among the
                  query heads that read the same key/value head, see :func:`fold_scales`)
=====  =========  ==========================================================================

Normalization of s
------------------
``s = max(s_x^alpha, 1e-4) / sqrt(max(.) * min(.))``, as in the reference implementation [2]_:
the geometric centre of the scales is 1, so the weights are scaled up and down by comparable
factors and stay in the float range of the original ones. In exact arithmetic any positive
common factor ``c`` is immaterial (``Q(c W) = c Q(W)`` for min-max quantizers whose parameter
groups lie along the rows, and it cancels in the fold); the floor ``1e-4`` keeps channels that
never fire (``s_x = 0``) finite. ``alpha = 0`` gives ``s = 1``: exactly round-to-nearest.

The loss is the mean squared error over all elements of ``f``'s output, in float64. Ties keep the
smaller ``alpha`` (the first strict minimum), so the chosen loss is never above the RTN loss.

References
----------
.. [1] J. Lin, J. Tang, H. Tang, S. Yang, W.-M. Chen, W.-C. Wang, G. Xiao, X. Dang, C. Gan,
       S. Han, "AWQ: Activation-aware Weight Quantization for On-Device LLM Compression and
       Acceleration", MLSys 2024, arXiv:2306.00978.
.. [2] MIT HAN Lab, llm-awq (the authors' code), ``awq/quantize/auto_scale.py`` and
       ``auto_clip.py``.
"""

from refquant.algorithms.awq.clip import (CLIP_RULES, AWQClipResult, awq_clip, clip_range,
                                          group_output_error)
from refquant.algorithms.awq.quantizer import WeightQuantizer
from refquant.algorithms.awq.scale import (AWQScaleResult, FoldResult, activation_scale,
                                           awq_search_scale, fold_scales, scale_from_alpha,
                                           scaled_fake_quantize)

__all__ = ["activation_scale", "scale_from_alpha", "scaled_fake_quantize", "awq_search_scale",
           "AWQScaleResult", "fold_scales", "FoldResult", "awq_clip", "AWQClipResult",
           "clip_range", "CLIP_RULES", "group_output_error", "WeightQuantizer"]
