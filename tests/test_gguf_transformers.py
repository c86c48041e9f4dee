"""Hugging Face transformers reads refquant's GGUF files: the same logits as refquant's forward.

The oracle is transformers itself (``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``:
its own GGUF metadata reader, ``gguf``-based dequantization, its own Q/K un-permutation, torch's
Llama on the CPU in float32); refquant's side is :func:`refquant.load_model` of the same file.
Both dequantize the same bytes, so they differ only by float32 summation order.

The CI tests export the first :data:`N_BLOCKS` blocks of the real SmolLM2-135M weights (with its
real embedding, tokenizer and metadata; transformers' GGUF reading costs ~30 s a file whatever
the depth); the slow tests export the whole model. Measured (2-core AMD EPYC, torch 2.13.0,
transformers 5.24, 64 evaluation tokens): whole model max |diff| 5.9e-5 (Q8_0) and 9.0e-5
(Q4_K_M), argmax identical at every position. Asserted: 1e-3 and identical argmax.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")     # a local file: never ask the hub
torch = pytest.importorskip("torch", reason="needs torch (pip install '.[crosscheck]')")
transformers = pytest.importorskip("transformers", reason="needs transformers ('.[crosscheck]')")

import refquant as rq  # noqa: E402
from refquant.formats.gguf_export import export_gguf  # noqa: E402
from refquant.models.llama import forward  # noqa: E402
from refquant.pipeline.data import evaluation_tokens  # noqa: E402

LOGIT_TOL = 1e-3
N_BLOCKS = 2
N_TOKENS = 64


def first_blocks(model, n: int):
    """The model cut to its first ``n`` blocks (the same weights, a shallower configuration)."""
    return dataclasses.replace(model, config=dataclasses.replace(model.config, n_layers=n))


def _compare(path):
    pytest.importorskip("accelerate", reason="transformers needs accelerate to read a GGUF file")
    ours = rq.load_model(path)
    ids = evaluation_tokens(ours.tokenizer, N_TOKENS)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        b = theirs(torch.tensor(ids[None])).logits[0].numpy()
    a = forward(ours, ids[None])[0]
    diff = float(np.abs(a - b).max())
    assert diff <= LOGIT_TOL, f"max |logit diff| {diff:.3g} at {np.unravel_index(np.abs(a - b).argmax(), a.shape)}"
    assert np.array_equal(a.argmax(-1), b.argmax(-1))
    return diff


@pytest.mark.parametrize("mix", ["Q8_0", "Q4_K_M"])
def test_transformers_reads_refquant_gguf(tmp_path, mix):
    """First N_BLOCKS blocks of SmolLM2, exported in ``mix``: transformers' logits equal
    refquant's on 64 tokens of evaluation text."""
    model = first_blocks(rq.load_model(), N_BLOCKS)
    _compare(export_gguf(model, tmp_path / f"smollm-{mix}.gguf", mix))


@pytest.mark.slow
@pytest.mark.parametrize("mix", ["Q8_0", "Q4_K_M"])
def test_transformers_reads_whole_model(tmp_path, mix):
    """The whole SmolLM2-135M in ``mix`` (~1 min a file)."""
    _compare(export_gguf(rq.load_model(), tmp_path / f"smollm-{mix}.gguf", mix))
