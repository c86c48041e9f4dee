"""Where every tensor of a GGUF or safetensors file lies, checked before any data is read.

:func:`scan_gguf` lists the byte ranges that :func:`refquant.models.gguffile.read_gguf` (the one
GGUF parser, with its checks) found; :func:`scan_safetensors` is the one safetensors header
reader, used by the Hugging Face loader, the GPTQ reader and ``refquant inspect``, and
:func:`read_safetensors_tensor` reads one tensor of a scanned file. A damaged file raises
:class:`~refquant.models.errors.CorruptCheckpoint` naming the tensor or key at fault, so a
truncated checkpoint never yields a partial model or report.

safetensors layout [1]_::

    u64 n | n bytes of JSON header | data buffer of D = file size - 8 - n bytes

The header maps each tensor name to ``{"dtype": str, "shape": [int, ...], "data_offsets":
[lo, hi]}`` (offsets into the data buffer) and may hold ``"__metadata__"``: ``{str: str}``.
Checks: a JSON object of that structure, a known dtype, non-negative integer dims,
:math:`hi - lo = \\prod \\text{shape} \\cdot \\text{itemsize}`, and the rule of the reference
implementation: sorted by ``lo``, the tensors tile the buffer exactly,

.. math:: lo_0 = 0, \\qquad lo_i = hi_{i-1}, \\qquad hi_{last} = D

(no gap, no overlap, nothing after the last tensor; a tensor that runs past the end of the file
is reported as truncated).

References
----------
.. [1] huggingface/safetensors, ``README.md`` (format) and ``safetensors/src/tensor.rs``
       (``Metadata::validate``).
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from dataclasses import dataclass

import numpy as np

from refquant.models.errors import CorruptCheckpoint, require_finite
from refquant.schemes.casts import from_bf16_bits

MAX_HEADER_BYTES = 100_000_000                # the safetensors library's own limit


@dataclass(frozen=True)
class TensorSpan:
    """One tensor's place in a file.

    Attributes
    ----------
    name : str
    type_name : str     GGML type name (``"Q4_1"``, ``"F32"``, ...) or safetensors dtype (``"F16"``)
    shape : tuple       NumPy order (outermost first)
    start : int         absolute byte offset of the data in the file
    n_bytes : int       bytes the data occupies
    """

    name: str
    type_name: str
    shape: tuple
    start: int
    n_bytes: int


def scan_gguf(path) -> tuple[list[TensorSpan], dict]:
    """``(tensors, metadata)`` of a GGUF file, after every check of
    :func:`~refquant.models.gguffile.read_gguf` (``metadata`` maps keys to values, arrays as
    lists). Raises :class:`CorruptCheckpoint` naming the tensor (or metadata key) at fault."""
    from refquant.models.gguffile import read_gguf

    f = read_gguf(path)
    spans = [TensorSpan(t.name, t.type_name, t.shape, t.offset, t.n_bytes)
             for t in f.tensors.values()]
    return spans, f.metadata


# safetensors dtype -> NumPy dtype of the stored values (BF16: its bit patterns)
ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
             "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
             "BOOL": "?", "F8_E4M3": "u1", "F8_E5M2": "u1"}
ST_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def _header(path: pathlib.Path, size: int) -> tuple[dict, int]:
    """The parsed JSON header (an object) and the byte where the data buffer starts."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpoint(f"{path}: the file ends inside the safetensors header length "
                                    f"({size} bytes, truncated)")
        n = struct.unpack("<Q", head)[0]
        if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
            raise CorruptCheckpoint(f"{path}: safetensors header length {n} does not fit in the "
                                    f"{size}-byte file (corrupt header or truncated file)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptCheckpoint(f"{path}: safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CorruptCheckpoint(f"{path}: safetensors header is a JSON {type(header).__name__}, "
                                "not an object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CorruptCheckpoint(f"{path}: safetensors '__metadata__' must map strings to strings")
    return header, 8 + n


def _entry(path, name: str, info) -> tuple[str, tuple, int, int]:
    """``(dtype, shape, lo, hi)`` of one header entry, its structure and types checked."""
    if not isinstance(info, dict):
        raise CorruptCheckpoint(f"{path}: tensor {name!r}: header entry must be an object, got "
                                f"{info!r}")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise CorruptCheckpoint(f"{path}: tensor {name!r}: header entry has no {key!r}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in ST_DTYPES:
        raise CorruptCheckpoint(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(shape, list) or not all(is_int(d) for d in shape):
        raise CorruptCheckpoint(f"{path}: tensor {name!r}: 'shape' must be a list of "
                                f"non-negative integers, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_int(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise CorruptCheckpoint(f"{path}: tensor {name!r}: 'data_offsets' must be two integers "
                                f"0 <= begin <= end, got {offsets!r}")
    return dtype, tuple(shape), offsets[0], offsets[1]


def scan_safetensors(path) -> list[TensorSpan]:
    """Parse and check a safetensors header (see the module docstring); the tensors in the
    order of their data. Raises :class:`CorruptCheckpoint` naming the file and tensor."""
    path = pathlib.Path(path)
    size = os.path.getsize(path)
    header, start = _header(path, size)
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, lo, hi = _entry(path, name, info)
        need = int(np.prod(shape, dtype=object)) * np.dtype(ST_DTYPES[dtype]).itemsize
        if hi - lo != need:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} ({dtype}, shape {shape}) spans "
                                    f"{hi - lo} bytes, its shape needs {need}")
        if start + hi > size:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} ({dtype}, shape {shape}) is "
                                    f"truncated: it ends at byte {start + hi}, the file has {size}")
        entries.append((lo, hi, name, dtype, shape))
    entries.sort()
    end, previous = 0, None
    for lo, hi, name, dtype, shape in entries:
        if lo != end:
            where = "the start of the data" if previous is None else f"the end of {previous!r}"
            raise CorruptCheckpoint(f"{path}: tensor {name!r} data begins at {lo}, expected {end} "
                                    f"at {where} ({'overlap' if lo < end else 'gap'})")
        end, previous = hi, name
    if start + end != size:
        raise CorruptCheckpoint(f"{path}: {size - start - end} bytes follow the last tensor's data "
                                f"({previous!r}): the header does not describe the file")
    return [TensorSpan(name, dtype, shape, start + lo, hi - lo)
            for lo, hi, name, dtype, shape in entries]


def read_safetensors_tensor(path, span: TensorSpan, *, check_finite: bool = True) -> np.ndarray:
    """One tensor of a file checked by :func:`scan_safetensors`, as a new array in its stored
    NumPy dtype (BF16 widened to float32 by :func:`~refquant.schemes.casts.from_bf16_bits`).

    Float tensors must be finite: NaN or Inf raises :class:`CorruptCheckpoint` naming the file
    and tensor, when the tensor is read (``check_finite=False``, for ``refquant inspect``, which
    reports them instead, skips the check except for BF16, whose decoder always rejects them).
    """
    raw = np.fromfile(path, dtype=ST_DTYPES[span.type_name], offset=span.start,
                      count=span.n_bytes // np.dtype(ST_DTYPES[span.type_name]).itemsize)
    if span.type_name == "BF16":
        try:
            raw = from_bf16_bits(raw)
        except ValueError as exc:                          # a NaN or Inf bit pattern
            raise CorruptCheckpoint(f"{path}: tensor {span.name!r} (BF16): {exc}") from None
    W = raw.reshape(span.shape)
    if check_finite and span.type_name in ST_FLOAT_DTYPES:
        require_finite(W, path, span.name)
    return W


__all__ = ["CorruptCheckpoint", "TensorSpan", "scan_gguf", "scan_safetensors",
           "read_safetensors_tensor", "ST_DTYPES", "ST_FLOAT_DTYPES"]
