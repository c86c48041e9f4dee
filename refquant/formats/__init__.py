"""Checkpoint formats: GGML block formats (:mod:`refquant.formats.ggml`) and GPTQ-style packed
checkpoints (:mod:`refquant.formats.gptq`)."""
