"""Where every tensor of a GGUF or safetensors file lies, checked against the file's length.

These scanners read only the headers (the GGUF metadata and tensor-info table, the safetensors
JSON header) and return each tensor's byte range. A file that is truncated or whose header is
malformed raises :class:`CorruptCheckpoint` naming the tensor (or the metadata key) at fault,
before any reader touches the data: a truncated checkpoint never yields a partial report.

GGUF layout (versions 2 and 3, little endian) [1]_::

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv | n_kv x (string key, u32 type, value)
    | n_tensors x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset)
    | padding to general.alignment (default 32) | tensor data (offsets relative to here)

A string is ``u64 length`` + UTF-8 bytes; an array is ``u32 element type, u64 count, elements``.
``dims[0]`` is the fastest-varying (innermost) dimension, so a weight stored as ``[K, N]`` in
GGUF is an ``[N, K]`` array; a row of ``K`` values is stored as ``K / block_size`` blocks of
``type_size`` bytes.

References
----------
.. [1] GGUF file format specification, ``docs/gguf.md`` in the ggml repository.
"""

from __future__ import annotations

import json
import pathlib
import struct
from dataclasses import dataclass

import numpy as np


class CorruptCheckpoint(ValueError):
    """A checkpoint file is truncated or malformed (the message names the tensor or key)."""


@dataclass(frozen=True)
class TensorSpan:
    """One tensor's place in a file.

    Attributes
    ----------
    name : str
    type_name : str     GGML type name (``"Q4_1"``, ``"F32"``, ...) or safetensors dtype (``"F16"``)
    shape : tuple       NumPy order (outermost first)
    start : int         absolute byte offset of the data in the file
    n_bytes : int       bytes the data must occupy
    """

    name: str
    type_name: str
    shape: tuple
    start: int
    n_bytes: int


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, buf, what):
        self.buf, self.pos, self.what = buf, 0, what

    def take(self, n: int, context: str) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise CorruptCheckpoint(f"{self.what}: file ends inside {context} (needs {n} bytes at "
                                    f"offset {self.pos}, file has {len(self.buf)})")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, context: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), context))[0]

    def string(self, context: str) -> str:
        n = self.unpack("<Q", context)
        raw = self.take(n, context)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptCheckpoint(f"{self.what}: {context} is not valid UTF-8") from exc

    def value(self, vtype: int, context: str):
        if vtype in _GGUF_SCALARS:
            return self.unpack(_GGUF_SCALARS[vtype], context)
        if vtype == _STRING:
            return self.string(context)
        if vtype == _ARRAY:
            etype = self.unpack("<I", context)
            count = self.unpack("<Q", context)
            if etype in _GGUF_SCALARS:                     # skip numeric arrays in one step
                size = struct.calcsize(_GGUF_SCALARS[etype])
                raw = self.take(size * count, context)
                return np.frombuffer(raw, _GGUF_SCALARS[etype]) if count <= 64 else f"<{count} values>"
            if etype == _STRING:
                for _ in range(count):
                    n = self.unpack("<Q", context)
                    self.take(n, context)
                return f"<{count} strings>"
            raise CorruptCheckpoint(f"{self.what}: {context} has unsupported array element type {etype}")
        raise CorruptCheckpoint(f"{self.what}: {context} has unknown value type {vtype}")


def scan_gguf(path) -> tuple[list[TensorSpan], dict]:
    """Parse a GGUF file's header; return ``(tensors, metadata)`` after checking that every
    tensor's data lies inside the file.

    ``metadata`` maps keys to scalars or strings (large arrays are summarized as strings).
    Raises :class:`CorruptCheckpoint` naming the tensor (or metadata key) at fault.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = pathlib.Path(path)
    size = path.stat().st_size
    mm = np.memmap(path, np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    buf = memoryview(mm)
    c = _Cursor(buf, str(path))
    if bytes(c.take(4, "the magic number")) != b"GGUF":
        raise CorruptCheckpoint(f"{path}: not a GGUF file (bad magic number)")
    version = c.unpack("<I", "the version")
    if version not in (2, 3):
        raise CorruptCheckpoint(f"{path}: unsupported GGUF version {version} (big-endian or v1 files "
                                "are not supported)")
    n_tensors = c.unpack("<Q", "the tensor count")
    n_kv = c.unpack("<Q", "the metadata count")
    if n_tensors > size or n_kv > size:
        raise CorruptCheckpoint(f"{path}: implausible header ({n_tensors} tensors, {n_kv} keys)")
    meta = {}
    for i in range(n_kv):
        key = c.string(f"metadata key #{i}")
        vtype = c.unpack("<I", f"the type of metadata {key!r}")
        meta[key] = c.value(vtype, f"metadata {key!r}")
    infos = []
    for i in range(n_tensors):
        name = c.string(f"the name of tensor #{i}")
        ctx = f"the info of tensor {name!r}"
        n_dims = c.unpack("<I", ctx)
        if n_dims > 8:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} claims {n_dims} dimensions")
        dims = [c.unpack("<Q", ctx) for _ in range(n_dims)]
        type_id = c.unpack("<I", ctx)
        offset = c.unpack("<Q", ctx)
        infos.append((name, dims, type_id, offset))
    alignment = int(meta.get("general.alignment", 32))
    if alignment <= 0 or alignment & (alignment - 1):
        raise CorruptCheckpoint(f"{path}: general.alignment {alignment} is not a power of two")
    data_start = -(-c.pos // alignment) * alignment
    spans = []
    for name, dims, type_id, offset in infos:
        try:
            qtype = GGMLQuantizationType(type_id)
        except ValueError:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} has unknown GGML type id {type_id}") from None
        block, type_size = GGML_QUANT_SIZES[qtype]
        n_el = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if not dims or dims[0] % block:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} ({qtype.name}) row length "
                                    f"{dims[0] if dims else 0} is not a multiple of its block size {block}")
        n_bytes = n_el // block * type_size
        start = data_start + offset
        if offset % alignment:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} data offset {offset} is not aligned to {alignment}")
        if start + n_bytes > size:
            raise CorruptCheckpoint(
                f"{path}: tensor {name!r} ({qtype.name}, shape {tuple(reversed(dims))}) is truncated: "
                f"its {n_bytes} bytes at offset {start} end at {start + n_bytes}, the file has {size} bytes")
        spans.append(TensorSpan(name, qtype.name, tuple(int(d) for d in reversed(dims)), start, n_bytes))
    return spans, meta


_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
              "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def scan_safetensors(path) -> list[TensorSpan]:
    """Parse a safetensors header; check every tensor's byte range against the file length
    and its dtype and shape. Raises :class:`CorruptCheckpoint` naming the tensor."""
    path = pathlib.Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpoint(f"{path}: file ends inside the safetensors header length")
        n = struct.unpack("<Q", head)[0]
        if 8 + n > size:
            raise CorruptCheckpoint(f"{path}: safetensors header of {n} bytes does not fit in the "
                                    f"{size}-byte file (truncated)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptCheckpoint(f"{path}: safetensors header is not valid JSON ({exc})") from exc
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (lo, hi) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CorruptCheckpoint(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in _ST_DTYPES:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        need = int(np.prod(shape, dtype=np.int64)) * _ST_DTYPES[dtype]
        if hi - lo != need:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} ({dtype}, shape {shape}) spans {hi - lo} "
                                    f"bytes, its shape needs {need}")
        if 8 + n + hi > size:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} ({dtype}, shape {shape}) is truncated: it "
                                    f"ends at byte {8 + n + hi}, the file has {size} bytes")
        spans.append(TensorSpan(name, dtype, shape, 8 + n + lo, need))
    return spans


__all__ = ["CorruptCheckpoint", "TensorSpan", "scan_gguf", "scan_safetensors"]
