"""Whole models: block-by-block quantization (RTN, GPTQ, AWQ, mixed precision), AWQ on one Llama
block, recipes, perplexity and the deterministic text splits.

The only package that knows both the algorithms and the model. ``from refquant.pipeline import
quantize_model, LayerSetting, ...`` reaches the block-by-block pipeline
(:mod:`refquant.pipeline.blockwise`).
"""

from refquant.pipeline.blockwise import *  # noqa: F401,F403
from refquant.pipeline.blockwise import __all__  # noqa: F401
