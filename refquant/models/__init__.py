"""Real Llama models in NumPy: loaders (GGUF, Hugging Face safetensors), tokenizer, forward pass.

- :mod:`refquant.models.llama`: ``LlamaConfig``, ``LlamaModel`` and the forward pass with a
  pluggable ``linear``.
- :mod:`refquant.models.loaders`: ``load_model(path=None)`` (``None`` = the bundled GGUF) and
  ``save_hf(model, directory)``.
- :mod:`refquant.models.tokenizer`: the checkpoint's own tokenizer.
- :mod:`refquant.models.gguffile`: the GGUF container (metadata, tensor table, memory map).
"""

from __future__ import annotations


class ModelFormatError(ValueError):
    """A checkpoint that cannot be read: corrupt or truncated file, missing tensor, unsupported
    architecture, tensor type or tokenizer. The message names the file (and tensor)."""
