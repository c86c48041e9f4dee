"""A small, fast reader of the GGUF container (header, metadata, tensor table, memory-mapped data).

``gguf.GGUFReader`` builds a NumPy view for every string of the metadata; for a 49k-token
vocabulary that takes seconds (up to ~20 s on a busy 2-core machine), paid by every test and
command. This module parses the same layout with ``struct`` in well under a second and leaves
dequantization to ``gguf.quants.dequantize``. ``tests/test_loaders.py`` checks it against
``gguf.GGUFReader`` on the bundled file (every metadata value, every tensor's bytes).

Layout (GGUF v2/v3, little-endian; llama.cpp ``docs/gguf.md``): magic ``GGUF``, ``uint32``
version, ``uint64`` tensor count, ``uint64`` key/value count; the key/value pairs (``string``
key, ``uint32`` type, value; strings are ``uint64`` length + UTF-8 bytes; arrays are ``uint32``
element type + ``uint64`` count + elements); per tensor ``string`` name, ``uint32`` n_dims,
``uint64`` dims (fastest-varying first), ``uint32`` GGML type, ``uint64`` offset; padding to
``general.alignment`` (default 32); the tensor data.
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np

from refquant.models import ModelFormatError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# value type id -> struct format of a scalar (8 = string, 9 = array are handled apart)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
       10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: ``shape`` in NumPy order (rows first), raw bytes ``data``."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int          # absolute byte offset in the file
    n_bytes: int
    data: np.ndarray     # uint8 view of the memory map, [n_bytes]


@dataclasses.dataclass
class GGUFFile:
    path: str
    version: int
    metadata: dict
    tensors: dict[str, TensorInfo]


class _Cursor:
    def __init__(self, buf: memoryview, path):
        self.buf, self.pos, self.path = buf, 0, path

    def need(self, n: int):
        if self.pos + n > len(self.buf):
            raise ModelFormatError(f"{self.path}: truncated GGUF header (needs byte "
                                   f"{self.pos + n}, file has {len(self.buf)})")

    def scalar(self, fmt: str):
        n = struct.calcsize(fmt)
        self.need(n)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self) -> str:
        n = self.scalar("<Q")
        self.need(n)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"{self.path}: invalid UTF-8 string at byte "
                                   f"{self.pos - n}") from exc

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if etype in _NP:
                size = np.dtype(_NP[etype]).itemsize * count
                self.need(size)
                arr = np.frombuffer(self.buf, dtype=_NP[etype], count=count, offset=self.pos)
                self.pos += size
                return arr.astype(bool).tolist() if etype == 7 else arr.tolist()
            if etype in (_STRING, _ARRAY):
                return [self.value(etype) for _ in range(count)]
            raise ModelFormatError(f"{self.path}: unknown array element type {etype}")
        raise ModelFormatError(f"{self.path}: unknown metadata value type {vtype} at byte "
                               f"{self.pos}")


def read_gguf(path) -> GGUFFile:
    """Parse a GGUF file's metadata and tensor table; tensor bytes stay memory-mapped.

    Raises :class:`~refquant.models.ModelFormatError` (naming the file, and the tensor where
    there is one) on a bad magic, an unsupported version, a truncated header or tensor data, an
    unknown GGML type or a duplicated tensor name.
    """
    import gguf

    path = os.fspath(path)
    size = os.path.getsize(path)
    if size < 24:
        raise ModelFormatError(f"{path}: {size} bytes is too short for a GGUF file")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(memoryview(mm), path)
    cur.need(4)
    if bytes(mm[:4]) != GGUF_MAGIC:
        raise ModelFormatError(f"{path}: bad magic {bytes(mm[:4])!r}, not a GGUF file")
    cur.pos = 4
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise ModelFormatError(f"{path}: GGUF version {version} not supported (2 or 3)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    if n_tensors > size or n_kv > size:
        raise ModelFormatError(f"{path}: corrupt header (tensor count {n_tensors}, "
                               f"key/value count {n_kv})")
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.scalar("<I")
        if n_dims > 8:
            raise ModelFormatError(f"{path}: tensor {name!r} has {n_dims} dimensions (corrupt)")
        dims = [cur.scalar("<Q") for _ in range(n_dims)]
        infos.append((name, dims, cur.scalar("<I"), cur.scalar("<Q")))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise ModelFormatError(f"{path}: general.alignment={alignment} is not a power of two")
    start = -(-cur.pos // alignment) * alignment
    tensors = {}
    for name, dims, type_id, offset in infos:
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError) as exc:
            raise ModelFormatError(f"{path}: tensor {name!r} has unknown GGML type "
                                   f"{type_id}") from exc
        n = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if dims and dims[0] % block:
            raise ModelFormatError(f"{path}: tensor {name!r} row length {dims[0]} is not a "
                                   f"multiple of the {qtype.name} block size {block}")
        n_bytes = n // block * type_size
        begin = start + offset
        if begin + n_bytes > size:
            raise ModelFormatError(f"{path}: tensor {name!r} ends at byte {begin + n_bytes} "
                                   f"beyond the file's {size} bytes (truncated file)")
        if name in tensors:
            raise ModelFormatError(f"{path}: tensor {name!r} appears twice")
        tensors[name] = TensorInfo(name, tuple(int(d) for d in reversed(dims)), type_id,
                                   begin, n_bytes, mm[begin:begin + n_bytes])
    return GGUFFile(path, version, metadata, tensors)


def dequantize(t: TensorInfo, path) -> np.ndarray:
    """Float32 array of shape ``t.shape`` from the tensor's bytes, via ``gguf.quants``."""
    import gguf
    import gguf.quants

    qtype = gguf.GGMLQuantizationType(t.type_id)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows = t.shape[:-1]
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.frombuffer(t.data, dtype="<f4").reshape(t.shape).copy()
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.frombuffer(t.data, dtype="<f2").reshape(t.shape).astype(np.float32)
    raw = np.asarray(t.data).reshape(*rows, t.shape[-1] // block * type_size)
    try:
        W = gguf.quants.dequantize(raw, qtype)
    except NotImplementedError as exc:
        raise ModelFormatError(f"{path}: tensor {t.name!r} has type {qtype.name}, which "
                               f"gguf cannot dequantize") from exc
    return np.asarray(W, dtype=np.float32).reshape(t.shape)
