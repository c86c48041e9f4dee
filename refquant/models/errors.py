"""The exceptions of checkpoint reading and the checks that every reader shares.

Every error raised for a bad file is a :class:`CheckpointError` (a ``ValueError``) whose message
names the file and the tensor or key at fault::

    CheckpointError                  any checkpoint that cannot be used
    +-- ModelFormatError             cannot be loaded as a model: unsupported architecture or
    |   |                            tensor type, a missing or unused tensor, metadata that
    |   |                            disagrees with the tensor shapes or is implausible
    |   +-- CorruptCheckpoint        damaged bytes: a truncated file, a malformed header or JSON,
    |                                a misaligned or overlapping tensor, NaN/Inf in a stored value
    +-- GPTQCheckpointError          (refquant.formats.gptq) an incomplete or inconsistent GPTQ
                                     checkpoint

The checks here are the ones all readers apply in the same words: :func:`require_finite` on
every float array read from a file, and :func:`field` for every typed value of a JSON file or of
GGUF metadata (a wrong type, a missing key or an implausible value raises naming the key).
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint (GGUF file, Hugging Face or GPTQ directory) that cannot be used; the message
    names the file and the tensor or key at fault."""


class ModelFormatError(CheckpointError):
    """A checkpoint that cannot be loaded as a model: corrupt or truncated file, missing or unused
    tensor, unsupported architecture, tensor type or tokenizer, metadata that disagrees with the
    tensors. The message names the file (and tensor or key)."""


class CorruptCheckpoint(ModelFormatError):
    """A checkpoint file whose bytes are damaged: truncated, a malformed header or JSON document,
    misplaced tensor data, or NaN/Inf in a stored value (the message names the tensor or key)."""


_MISSING = object()
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
          dict: "an object", list: "a list"}


def field(obj: dict, key: str, kind: type, where, *, default=_MISSING, nullable: bool = False,
          lo=None, hi=None, error: type = CorruptCheckpoint):
    """``obj[key]`` checked to be of JSON type ``kind`` (and within ``[lo, hi]`` for numbers).

    Parameters
    ----------
    obj : dict
        A parsed JSON object or GGUF metadata.
    key : str
    kind : {int, float, bool, str, dict, list}
        ``int`` excludes ``bool``; ``float`` accepts integers and returns a float (finite).
    where : str or path
        The file (and object) named in the error, e.g. ``"ck/quantize_config.json"``.
    default : optional
        Returned when the key is absent; without it, a missing key raises.
    nullable : bool
        A JSON ``null`` also gives ``default`` (otherwise ``null`` is a value of the wrong type).
    lo, hi : number, optional
        Plausibility bounds, inclusive.
    error : exception class
        Raised on failure (a :class:`CheckpointError`).

    Examples
    --------
    >>> field({"bits": 4}, "bits", int, "q.json", lo=2, hi=8)
    4
    >>> field({"bits": None}, "bits", int, "q.json", default=4)
    Traceback (most recent call last):
    ...
    refquant.models.errors.CorruptCheckpoint: q.json: 'bits' must be an integer, got None
    """
    if not isinstance(obj, dict):
        raise error(f"{where}: expected a JSON object holding {key!r}, got {obj!r}")
    if key not in obj or (obj[key] is None and nullable):
        if default is _MISSING:
            raise error(f"{where}: key {key!r} missing")
        return default
    value = obj[key]
    ok = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))) or \
        (kind is float and isinstance(value, int) and not isinstance(value, bool))
    if kind is float and ok:
        value = float(value)
        ok = math.isfinite(value)
    if not ok:
        raise error(f"{where}: {key!r} must be {_KINDS[kind]}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise error(f"{where}: {key}={value!r} is outside the plausible range [{lo}, {hi}]")
    return value


def read_json_object(path, *, error: type = CorruptCheckpoint) -> dict:
    """The JSON object in ``path``; ``error`` naming the file if it is not valid JSON or not an
    object (a list, a number, ...)."""
    path = pathlib.Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def require_finite(W: np.ndarray, where, tensor: str) -> np.ndarray:
    """``W`` unchanged if every value is finite, else :class:`CorruptCheckpoint` naming the file,
    the tensor, the count of NaN/Inf values and the first one's index.

    >>> require_finite(np.array([1.0, np.nan]), "m.gguf", "norm.weight")
    Traceback (most recent call last):
    ...
    refquant.models.errors.CorruptCheckpoint: m.gguf: tensor 'norm.weight' holds 1 NaN or Inf value(s), the first nan at index (1,)
    """
    finite = np.isfinite(W)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise CorruptCheckpoint(f"{where}: tensor {tensor!r} holds {len(bad)} NaN or Inf value(s), "
                                f"the first {W[first]} at index {first}")
    return W


__all__ = ["CheckpointError", "ModelFormatError", "CorruptCheckpoint", "field", "read_json_object",
           "require_finite"]
