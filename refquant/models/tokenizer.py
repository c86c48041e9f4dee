"""The model's tokenizer, built from the checkpoint's own metadata with the ``tokenizers`` package.

- GGUF, ``tokenizer.ggml.model == "gpt2"``: byte-level BPE (Radford et al., "Language Models are
  Unsupervised Multitask Learners", 2019; BPE: Sennrich et al., ACL 2016, arXiv:1508.07909).
  The vocabulary (``tokenizer.ggml.tokens``, already spelled in GPT-2's byte-to-unicode
  alphabet), the merges (``tokenizer.ggml.merges``, "a b" per line, best first), the token types
  (3 = control -> special token, 4 = user-defined -> added token) and the BOS/EOS ids come from
  the metadata. The pre-tokenizer is chosen by ``tokenizer.ggml.pre`` as llama.cpp does:

  ===========================================  ============================================
  ``tokenizer.ggml.pre``                       pre-tokenization
  ===========================================  ============================================
  ``default``, ``gpt2`` (or absent)            GPT-2 regex (``ByteLevel(use_regex=True)``)
  ``smollm``, ``starcoder``, ``refact``,       every digit alone (``Digits``), then the
  ``codeshell``                                GPT-2 regex
  ``llama-bpe``, ``llama3``, ``llama-v3``      the Llama 3 split regex, then byte-level
  ===========================================  ============================================

  Any other value raises :class:`~refquant.models.ModelFormatError` rather than tokenizing with a
  pre-tokenizer the merges were not learned with.
- GGUF, ``tokenizer.ggml.model == "llama"`` (SentencePiece vocabularies): not supported yet
  (a clear error).
- Hugging Face directories: ``tokenizer.json`` as it is, BOS/EOS ids from ``config.json`` (or
  ``tokenizer_config.json``).

``encode`` applies the checkpoint's own BOS convention (``tokenizer.ggml.add_bos_token``, or the
``tokenizer.json`` post-processor); the bundled SmolLM2 adds none.

:meth:`Tokenizer.save` writes the Hugging Face files (``tokenizer.json``,
``tokenizer_config.json``) that ``transformers.AutoTokenizer`` loads; from a GGUF source the
unknown and padding tokens (``tokenizer.ggml.unknown_token_id``, ``padding_token_id``) and the
chat template (``tokenizer.chat_template``) go into ``tokenizer_config.json`` too.
"""

from __future__ import annotations

import json
import pathlib

from refquant.models.errors import ModelFormatError, field, read_json_object

# llama.cpp's split regex for Llama 3 style vocabularies
# (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_LLAMA3)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT2_PRE = {"default", "gpt2"}
_DIGITS_PRE = {"smollm", "starcoder", "refact", "codeshell"}
_LLAMA3_PRE = {"llama-bpe", "llama3", "llama-v3"}

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


class Tokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` with the model's BOS/EOS ids.

    Attributes: ``bos_id``, ``eos_id`` (int or None), ``vocab_size``, ``backend`` (the
    ``tokenizers.Tokenizer``), ``unk_id``, ``pad_id`` (int or None) and ``chat_template`` (str or
    None), which only :meth:`save` uses.
    """

    def __init__(self, backend, *, bos_id: int | None, eos_id: int | None, source=None,
                 unk_id: int | None = None, pad_id: int | None = None,
                 chat_template: str | None = None):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.source = source
        self.unk_id, self.pad_id, self.chat_template = unk_id, pad_id, chat_template

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (with BOS only where the checkpoint asks for it)."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return list(self.backend.encode(text, add_special_tokens=True).ids)

    def decode(self, ids) -> str:
        """Text of ``ids`` (special tokens kept)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def token(self, i: int) -> str | None:
        """The vocabulary entry of id ``i``."""
        return self.backend.id_to_token(int(i))

    def save(self, directory) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (the special tokens, the chat
        template) to ``directory``."""
        directory = pathlib.Path(directory)
        self.backend.save(str(directory / "tokenizer.json"))
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        for kind in ("bos", "eos", "unk", "pad"):
            if getattr(self, f"{kind}_id") is not None:
                cfg[f"{kind}_token"] = self.token(getattr(self, f"{kind}_id"))
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def _pre_tokenizer(pre: str | None, path):
    from tokenizers import Regex, pre_tokenizers

    if pre is None or pre in _GPT2_PRE:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_PRE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre in _LLAMA3_PRE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ModelFormatError(f"{path}: tokenizer.ggml.pre={pre!r} is not supported (known: "
                           f"{sorted(_GPT2_PRE | _DIGITS_PRE | _LLAMA3_PRE)})")


def tokenizer_from_gguf(metadata: dict, path) -> Tokenizer:
    """Build the tokenizer described by a GGUF file's ``tokenizer.ggml.*`` metadata.

    ``metadata`` maps the file's keys to values (:func:`refquant.models.gguffile.read_gguf`);
    ``path`` is named in errors.
    """
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, processors

    def get(key, kind, default=...):
        kw = {} if default is ... else {"default": default}
        return field(metadata, key, kind, path, error=ModelFormatError, **kw)

    def strings(key, kind=str):
        values = get(key, list)
        bad = next((v for v in values if not isinstance(v, kind) or isinstance(v, bool)), None)
        if bad is not None:
            raise ModelFormatError(f"{path}: {key} must hold {kind.__name__} values, got {bad!r}")
        return values

    kind = get("tokenizer.ggml.model", str)
    if kind == "llama":
        raise ModelFormatError(f"{path}: SentencePiece ('llama') tokenizers are not supported "
                               "yet; only byte-level BPE ('gpt2')")
    if kind != "gpt2":
        raise ModelFormatError(f"{path}: tokenizer.ggml.model={kind!r} is not supported "
                               "(only 'gpt2' byte-level BPE)")
    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    if any(len(m) != 2 for m in merges):
        raise ModelFormatError(f"{path}: tokenizer.ggml.merges has an entry without a space")
    types = strings("tokenizer.ggml.token_type", int) if "tokenizer.ggml.token_type" in metadata \
        else [1] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ModelFormatError(f"{path}: tokenizer.ggml.tokens has duplicate entries")
    try:
        backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    except Exception as exc:     # tokenizers raises a bare Exception on inconsistent merges
        raise ModelFormatError(f"{path}: inconsistent BPE vocabulary/merges ({exc})") from exc
    backend.pre_tokenizer = _pre_tokenizer(get("tokenizer.ggml.pre", str, None), path)
    backend.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_USER_DEFINED]
    backend.add_special_tokens(special)
    backend.add_tokens(user)
    bos = get("tokenizer.ggml.bos_token_id", int, None)
    eos = get("tokenizer.ggml.eos_token_id", int, None)
    # the unknown and padding ids only go into a saved tokenizer_config.json: one outside the
    # vocabulary is left out there rather than refusing a file that tokenizes correctly
    unk, pad = (get(f"tokenizer.ggml.{k}_token_id", int, None) for k in ("unknown", "padding"))
    unk, pad = (i if i is not None and 0 <= i < len(tokens) else None for i in (unk, pad))
    for key, value in (("bos", bos), ("eos", eos)):
        if value is not None and not 0 <= value < len(tokens):
            raise ModelFormatError(f"{path}: tokenizer.ggml.{key}_token_id={value} is outside the "
                                   f"vocabulary of {len(tokens)} tokens")
    if get("tokenizer.ggml.add_bos_token", bool, False):
        if bos is None:
            raise ModelFormatError(f"{path}: add_bos_token is set but bos_token_id is missing")
        backend.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B",
            special_tokens=[(tokens[bos], bos)])
    if backend.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ModelFormatError(f"{path}: tokenizer vocabulary size "
                               f"{backend.get_vocab_size(with_added_tokens=True)} != "
                               f"{len(tokens)} tokens in the metadata")
    return Tokenizer(backend, bos_id=bos, eos_id=eos, source=path, unk_id=unk, pad_id=pad,
                     chat_template=get("tokenizer.chat_template", str, None))


def tokenizer_from_hf(directory, config: dict | None = None) -> Tokenizer | None:
    """Load ``tokenizer.json`` from a Hugging Face directory; BOS/EOS ids from ``config``
    (``config.json``) or ``tokenizer_config.json``.

    A directory with weights only (no ``tokenizer.json``, no ``tokenizer.model``) gives ``None``;
    a SentencePiece ``tokenizer.model`` alone raises (not supported yet).
    """
    from tokenizers import Tokenizer as Backend

    directory = pathlib.Path(directory)
    file = directory / "tokenizer.json"
    if not file.is_file():
        if (directory / "tokenizer.model").is_file():
            raise ModelFormatError(f"{directory}: only a SentencePiece tokenizer.model, which is "
                                   "not supported yet (needs tokenizer.json)")
        return None
    try:
        backend = Backend.from_file(str(file))
    except Exception as exc:
        raise ModelFormatError(f"{file}: cannot be read ({exc})") from exc
    config = dict(config or {})
    tcfg_file = directory / "tokenizer_config.json"
    tcfg = read_json_object(tcfg_file) if tcfg_file.is_file() else {}

    def token_id(kind: str):
        key = f"{kind}_token_id"
        value = config.get(key)
        if isinstance(value, list):          # several EOS ids: the first
            value = value[0] if value else None
        if value is None:
            tok = tcfg.get(f"{kind}_token")
            if isinstance(tok, dict):
                tok = tok.get("content")
            if tok is not None and not isinstance(tok, str):
                raise ModelFormatError(f"{tcfg_file}: '{kind}_token' must be a string, got {tok!r}")
            value = backend.token_to_id(tok) if tok else None
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ModelFormatError(f"{directory / 'config.json'}: {key!r} must be an integer, got "
                                   f"{value!r}")
        return value

    return Tokenizer(backend, bos_id=token_id("bos"), eos_id=token_id("eos"), source=directory)
