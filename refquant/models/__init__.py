"""Real Llama models in NumPy: loaders (GGUF, Hugging Face safetensors), tokenizer, forward pass.

- :mod:`refquant.models.llama`: ``LlamaConfig``, ``LlamaModel`` and the forward pass with a
  pluggable ``linear``.
- :mod:`refquant.models.loaders`: ``load_model(path=None)`` (``None`` = the bundled GGUF) and
  ``save_hf(model, directory)``.
- :mod:`refquant.models.tokenizer`: the checkpoint's own tokenizer.
- The file-format toolkit every reader (and ``refquant inspect``) shares:
  :mod:`refquant.models.gguffile` (the one GGUF container parser and its checks),
  :mod:`refquant.models.layout` (tensor byte ranges; the one safetensors header reader),
  :mod:`refquant.models.gguf_hf` (GGUF <-> Hugging Face tensor names, the Q/K row permutation),
  :mod:`refquant.models.config_checks` (a ``LlamaConfig`` from GGUF metadata or ``config.json``,
  cross-checked against the tensors) and :mod:`refquant.models.errors` (the exceptions).
"""

from __future__ import annotations

from refquant.models.errors import CheckpointError, CorruptCheckpoint, ModelFormatError

__all__ = ["CheckpointError", "CorruptCheckpoint", "ModelFormatError"]
