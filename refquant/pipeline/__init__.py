"""Whole models: block-by-block quantization (RTN, GPTQ, AWQ, mixed precision), AWQ on one Llama
block, recipes, perplexity and the deterministic text splits.

The only package that knows both the algorithms and the model. Its modules, bottom up:
:mod:`~refquant.pipeline.blocks` (layer names, a model view with replaced weights, chunked
forward passes), :mod:`~refquant.pipeline.recipes` (layer settings, sizes, mixed precision),
:mod:`~refquant.pipeline.awq_block` (AWQ on one block), :mod:`~refquant.pipeline.blockwise`
(the sequential pipeline), :mod:`~refquant.pipeline.data` (text and calibration batches) and
:mod:`~refquant.pipeline.evaluate` (perplexity). ``from refquant.pipeline import
quantize_model, LayerSetting, ...`` reaches the names of :mod:`refquant.pipeline.blockwise`.
"""

from refquant.pipeline.blockwise import *  # noqa: F401,F403
from refquant.pipeline.blockwise import __all__  # noqa: F401
