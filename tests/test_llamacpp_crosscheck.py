"""llama.cpp runs refquant's GGUF files (slow; needs the library of scripts/build_llamacpp.sh).

The oracle is llama.cpp itself through llama-cpp-python's bindings (``LLAMA_CPP_LIB_PATH`` and
``PYTHONPATH`` as ``scripts/llamacpp_crosscheck.py`` says; skipped where they cannot be
imported). llama.cpp quantizes the activations to 8 bits inside its dot products and keeps its
KV cache in float16, so logits are compared by what they decide, not bit for bit.

Measured (2-core AMD EPYC, llama-cpp-python 0.3.36's llama.cpp, 2 windows of 512 evaluation
tokens): Q8_0 perplexity 13.454 (llama.cpp) vs 13.449 (refquant), argmax equal at 96.8% of the
positions, largest logit difference 3.2. Asserted on one window: perplexities within 1% of each
other, argmax equal at >= 90% of the positions.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

pytestmark = pytest.mark.slow
llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp bindings: scripts/build_llamacpp.sh")

SCRIPT = pathlib.Path(__file__).parents[1] / "scripts" / "llamacpp_crosscheck.py"


def _script():
    spec = importlib.util.spec_from_file_location("llamacpp_crosscheck", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("mix", ["Q8_0", "Q4_K_M"])
def test_llamacpp_agrees_with_refquant(tmp_path, mix):
    """One window of 512 evaluation tokens through llama.cpp and refquant on the same file."""
    import refquant as rq
    from refquant.formats.gguf_export import export_gguf
    from refquant.pipeline.data import evaluation_tokens

    model = rq.load_model()
    windows = evaluation_tokens(model.tokenizer, 512)[None]
    r = _script().compare(export_gguf(model, tmp_path / f"{mix}.gguf", mix), windows, 2)
    assert abs(r["ppl_llamacpp"] / r["ppl_refquant"] - 1) < 0.01, r
    assert r["argmax_agree"] >= 0.90, r
