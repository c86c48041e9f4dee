"""refquant: a reference implementation of neural-network quantization in NumPy.

The public API is re-exported here. Names are resolved lazily (PEP 562), so importing
``refquant`` loads NumPy only: nothing is compiled by Numba and no model is read until used.

The package is layered (see the README's "Where things are"); each name below lives in one of
``refquant.schemes``, ``calibration``, ``kernels``, ``algorithms``, ``integer``, ``training``,
``models``, ``formats`` and ``pipeline``.

>>> import refquant as rq
>>> spec = rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=128)
>>> rq.calibrate.__module__
'refquant.calibration.observers'
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_S = "refquant.schemes."
# public name -> module that defines it
_EXPORTS = {
    # schemes
    "QuantSpec": _S + "spec", "QParams": _S + "spec", "param_shape": _S + "spec",
    "int_range": _S + "numerics", "round_to_int": _S + "numerics",
    "qparams_from_range": _S + "uniform", "quantize": _S + "uniform",
    "dequantize": _S + "uniform", "clip_range": _S + "uniform",
    "pack": _S + "packing", "unpack": _S + "packing", "packed_length": _S + "packing",
    "cast_fp16": _S + "casts", "cast_bf16": _S + "casts", "bf16_bits": _S + "casts",
    "from_bf16_bits": _S + "casts", "fp16_bits": _S + "casts", "from_fp16_bits": _S + "casts",
    "float_bits": _S + "floats", "from_float_bits": _S + "floats", "cast_float": _S + "floats",
    "stochastic_round": _S + "stochastic", "stochastic_cast_float": _S + "stochastic",
    "FLOAT_FORMATS": _S + "floats", "FloatFormat": _S + "floats",
    "FloatSpec": _S + "float_quant",
    "LogSpec": _S + "nonuniform", "log_quantize": _S + "nonuniform",
    "log_dequantize": _S + "nonuniform", "log_calibrate": _S + "nonuniform",
    "log_fake_quantize": _S + "nonuniform", "codebook_quantize": _S + "nonuniform",
    "codebook_dequantize": _S + "nonuniform", "NF4_LEVELS": _S + "nonuniform",
    "nf4_quantize": _S + "nonuniform", "nf4_dequantize": _S + "nonuniform",
    "fit_lloyd_max": _S + "nonuniform", "LloydMaxResult": _S + "nonuniform",
    "size_report": _S + "sizes", "SizeReport": _S + "sizes", "CodebookSpec": _S + "sizes",
    "mx_quantize": _S + "mx", "mx_dequantize": _S + "mx", "MXArray": _S + "mx",
    "nvfp4_quantize": _S + "mx", "nvfp4_dequantize": _S + "mx", "NVFP4Array": _S + "mx",
    "pack_fp4": _S + "mx", "unpack_fp4": _S + "mx", "MX_FORMATS": _S + "mx",
    # calibration
    "calibrate": "refquant.calibration.observers",
    "MinMaxObserver": "refquant.calibration.observers",
    "PercentileObserver": "refquant.calibration.observers",
    "MSEObserver": "refquant.calibration.observers",
    "KLObserver": "refquant.calibration.observers",
    "fake_quantize": "refquant.calibration.fake",
    # kernels (the integer core)
    "int8_matmul": "refquant.kernels", "w4_matmul": "refquant.kernels",
    "backends": "refquant.kernels",
    # algorithms
    "gptq": "refquant.algorithms.gptq", "GPTQResult": "refquant.algorithms.gptq",
    "awq_search_scale": "refquant.algorithms.awq",
    "gptq_mx": "refquant.algorithms.gptq_mx", "gptq_nvfp4": "refquant.algorithms.gptq_mx",
    # training
    "FakeQuant": "refquant.training.qat", "LSQ": "refquant.training.qat",
    "fake_quant": "refquant.training.qat", "qat_swiglu_mlp": "refquant.training.qat_mlp",
    "quantize_gradient": "refquant.training.gradquant",
    "GradQuant": "refquant.training.gradquant",
    # models
    "load_model": "refquant.models.loaders",
    # pipeline
    "awq": "refquant.pipeline.awq_block", "awq_block": "refquant.pipeline.awq_block",
    "AWQBlockResult": "refquant.pipeline.awq_block", "perplexity": "refquant.pipeline.evaluate",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'refquant' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
