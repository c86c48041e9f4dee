"""refquant: a reference implementation of neural-network quantization in NumPy.

The public API is re-exported here. Names are resolved lazily (PEP 562), so importing
``refquant`` loads NumPy only: nothing is compiled by Numba and no model is read until used.

>>> import refquant as rq
>>> spec = rq.QuantSpec(bits=4, symmetric=False, granularity="group", group_size=128)
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_EXPORTS = {
    # foundation
    "QuantSpec": "spec", "QParams": "spec", "param_shape": "spec",
    "int_range": "numerics", "round_to_int": "numerics",
    "qparams_from_range": "uniform", "quantize": "uniform", "dequantize": "uniform",
    "fake_quantize": "uniform", "clip_range": "uniform",
    "calibrate": "calibrate", "MinMaxObserver": "calibrate", "PercentileObserver": "calibrate",
    "MSEObserver": "calibrate", "KLObserver": "calibrate",
    "pack": "packing", "unpack": "packing", "packed_length": "packing",
    "cast_fp16": "casts", "cast_bf16": "casts",
    "LogSpec": "nonuniform", "log_quantize": "nonuniform", "log_dequantize": "nonuniform",
    "codebook_quantize": "nonuniform", "codebook_dequantize": "nonuniform",
    "NF4_LEVELS": "nonuniform", "fit_lloyd_max": "nonuniform",
    "size_report": "sizes", "SizeReport": "sizes",
    "bf16_bits": "casts", "from_bf16_bits": "casts", "fp16_bits": "casts", "from_fp16_bits": "casts", "log_calibrate": "nonuniform", "log_fake_quantize": "nonuniform", "nf4_quantize": "nonuniform", "nf4_dequantize": "nonuniform", "LloydMaxResult": "nonuniform", "CodebookSpec": "sizes",
    # algorithms
    "gptq": "gptq", "GPTQResult": "gptq",
    "awq": "awq",
    "awq_block": "awq_block", "AWQBlockResult": "awq_block", "awq_search_scale": "awq",
    "FakeQuant": "qat", "LSQ": "qat", "fake_quant": "qat", "qat_swiglu_mlp": "qat_mlp",
    # integer core
    "int8_matmul": "kernels", "w4_matmul": "kernels", "backends": "kernels",
    # model side
    "load_model": "models.loaders", "perplexity": "evaluate",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


# Names that are both a submodule and the function inside it (refquant/calibrate.py defines
# calibrate()). Importing a submodule sets it as an attribute of the package, which would hide
# the function; the module class below makes ``rq.calibrate`` always the function.
# (``from refquant.calibrate import MinMaxObserver`` still reaches the module.)
_SAME_NAME = frozenset(name for name, module in _EXPORTS.items() if name == module)


class _PublicAPI(types.ModuleType):
    def __getattribute__(self, name):
        if name in _SAME_NAME:
            return getattr(importlib.import_module(f"{__name__}.{name}"), name)
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _PublicAPI


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'refquant' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
