"""The GGUF container: one parser of the header, metadata and tensor table, with every check.

:func:`read_gguf` is the only GGUF header parser of refquant: :func:`refquant.load_model` and
``refquant inspect`` (:mod:`refquant.formats.audit`) both read files through it, so they accept
and reject the same files. It parses the layout with ``struct`` and leaves the tensor bytes
memory-mapped; :func:`dequantize` turns one tensor into float32 (``gguf.quants`` for the block
formats) when it is read, and checks that every value is finite.

Layout (GGUF v2/v3, little-endian) [1]_::

    "GGUF" | u32 version | u64 n_tensors | u64 n_kv | n_kv x (string key, u32 type, value)
    | n_tensors x (string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset)
    | padding to general.alignment A (default 32) | tensor data (offsets relative to here)

A string is ``u64 length`` + UTF-8 bytes; an array is ``u32 element type, u64 count, elements``.
``dims[0]`` is the fastest-varying dimension, so a weight stored as ``[K, N]`` is an ``[N, K]``
array; a row of ``K`` values is ``K / block_size`` blocks of ``type_size`` bytes, so a tensor of
``n`` values occupies :math:`b = n \\cdot \\text{type\\_size} / \\text{block\\_size}` bytes.

Checks (each raises :class:`~refquant.models.errors.CorruptCheckpoint` naming the file and the
tensor or key): magic, version, plausible counts, every string and value inside the file, a
power-of-two integer ``A``, at most 4 dimensions, a known GGML type, a row length that is a
multiple of the block size, no duplicate names, and ggml's own placement rule [2]_: tensor ``i``
starts exactly where tensor ``i - 1`` ends, padded to ``A``,

.. math:: o_0 = 0, \\qquad o_i = o_{i-1} + \\lceil b_{i-1} / A \\rceil A

so an offset that is misaligned, overlaps or leaves a gap, a type byte that changes a tensor's
size, and a truncated file are all caught before any data is read; the data section may not run
on more than ``A`` bytes past the last tensor either.

References
----------
.. [1] GGUF file format specification, ``docs/gguf.md`` in the ggml repository.
.. [2] ggml-org/ggml, ``src/gguf.cpp`` (``gguf_init_from_file_impl``: "tensor ... has offset ...,
       expected ...").
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np

from refquant.models.errors import CorruptCheckpoint, ModelFormatError, require_finite
from refquant.schemes.casts import from_bf16_bits

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4                                   # GGML_MAX_DIMS

# value type id -> struct format of a scalar (8 = string, 9 = array are handled apart)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
       10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")
INTEGER_TYPES = ("I8", "I16", "I32", "I64")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: ``shape`` in NumPy order (rows first), raw bytes ``data``."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int          # absolute byte offset in the file
    n_bytes: int
    data: np.ndarray     # uint8 view of the memory map, [n_bytes]

    @property
    def type_name(self) -> str:
        """The GGML type name (``"Q4_1"``, ``"F32"``, ...)."""
        import gguf
        return gguf.GGMLQuantizationType(self.type_id).name


@dataclasses.dataclass
class GGUFFile:
    """A parsed GGUF file: ``metadata`` (key -> value, arrays as lists) and ``tensors`` (name ->
    :class:`TensorInfo`, in file order)."""

    path: str
    version: int
    metadata: dict
    tensors: dict[str, TensorInfo]
    alignment: int = DEFAULT_ALIGNMENT
    data_start: int = 0
    #: key -> (GGUF value type id, element type id of an array or None), for a typed copy
    metadata_types: dict = dataclasses.field(default_factory=dict)


class _Cursor:
    def __init__(self, buf: memoryview, path):
        self.buf, self.pos, self.path = buf, 0, path

    def need(self, n: int, what: str):
        if n < 0 or self.pos + n > len(self.buf):
            raise CorruptCheckpoint(f"{self.path}: truncated GGUF header: the file ends inside "
                                    f"{what} (needs byte {self.pos + n}, file has {len(self.buf)})")

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptCheckpoint(f"{self.path}: {what} is not valid UTF-8 (byte "
                                    f"{self.pos - n})") from exc

    def value(self, vtype: int, what: str):
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype, count = self.scalar("<I", what), self.scalar("<Q", what)
            if etype in _NP:
                size = np.dtype(_NP[etype]).itemsize * count
                self.need(size, what)
                arr = np.frombuffer(self.buf, dtype=_NP[etype], count=count, offset=self.pos)
                self.pos += size
                return arr.astype(bool).tolist() if etype == 7 else arr.tolist()
            if etype in (_STRING, _ARRAY):
                if count > len(self.buf):
                    raise CorruptCheckpoint(f"{self.path}: {what} claims {count} elements")
                return [self.value(etype, what) for _ in range(count)]
            raise CorruptCheckpoint(f"{self.path}: {what} has unknown array element type {etype}")
        raise CorruptCheckpoint(f"{self.path}: {what} has unknown value type {vtype} (byte "
                                f"{self.pos})")


def _header(cur: _Cursor, size: int):
    """Magic, version, metadata and the raw tensor table ``[(name, dims, type_id, offset)]``."""
    path = cur.path
    if bytes(cur.buf[:4]) != GGUF_MAGIC:
        raise CorruptCheckpoint(f"{path}: bad magic {bytes(cur.buf[:4])!r}, not a GGUF file")
    cur.pos = 4
    version = cur.scalar("<I", "the version")
    if version not in (2, 3):
        raise CorruptCheckpoint(f"{path}: GGUF version {version} not supported (2 or 3; "
                                "big-endian and v1 files are not read)")
    n_tensors, n_kv = cur.scalar("<Q", "the tensor count"), cur.scalar("<Q", "the key count")
    if n_tensors > size or n_kv > size:
        raise CorruptCheckpoint(f"{path}: corrupt header (tensor count {n_tensors}, "
                                f"key/value count {n_kv}, file of {size} bytes)")
    metadata, types = {}, {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.scalar("<I", f"the type of {key!r}")
        etype = struct.unpack_from("<I", cur.buf, cur.pos)[0] if vtype == _ARRAY and \
            cur.pos + 4 <= len(cur.buf) else None
        metadata[key] = cur.value(vtype, f"metadata {key!r}")
        types[key] = (vtype, etype)
    infos = []
    for i in range(n_tensors):
        name = cur.string(f"the name of tensor #{i}")
        what = f"the info of tensor {name!r}"
        n_dims = cur.scalar("<I", what)
        if not 1 <= n_dims <= MAX_DIMS:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} has {n_dims} dimensions (1 to "
                                    f"{MAX_DIMS})")
        dims = [cur.scalar("<Q", what) for _ in range(n_dims)]
        infos.append((name, dims, cur.scalar("<I", what), cur.scalar("<Q", what)))
    return version, metadata, types, infos


def read_gguf(path) -> GGUFFile:
    """Parse and check a GGUF file's header (see the module docstring); tensor bytes stay
    memory-mapped.

    Raises
    ------
    CorruptCheckpoint
        Naming the file and the tensor (or key) at fault.
    """
    import gguf

    path = os.fspath(path)
    size = os.path.getsize(path)
    if size < 24:
        raise CorruptCheckpoint(f"{path}: {size} bytes is too short for a GGUF file (truncated)")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(memoryview(mm), path)
    version, metadata, types, infos = _header(cur, size)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 \
            or alignment & (alignment - 1):
        raise CorruptCheckpoint(f"{path}: general.alignment={alignment!r} is not a power of two")
    start = -(-cur.pos // alignment) * alignment
    tensors, expected, previous = {}, 0, None
    for name, dims, type_id, offset in infos:
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise CorruptCheckpoint(f"{path}: tensor {name!r} has unknown GGML type id "
                                    f"{type_id}") from None
        if dims[0] % block:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} ({qtype.name}) row length {dims[0]} "
                                    f"is not a multiple of its block size {block}")
        n_bytes = int(np.prod(dims, dtype=object)) // block * type_size
        shape = tuple(int(d) for d in reversed(dims))
        if name in tensors:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} appears twice")
        if offset % alignment:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} data offset {offset} is not aligned "
                                    f"to general.alignment={alignment}")
        if offset != expected:
            after = ("the start of the data section" if previous is None else
                     f"the end of tensor {previous.name!r} ({previous.type_name}, shape "
                     f"{previous.shape}, {previous.n_bytes} bytes, padded to {alignment})")
            raise CorruptCheckpoint(f"{path}: tensor {name!r} ({qtype.name}) has data offset "
                                    f"{offset}, expected {expected} at {after}: a tensor's offset "
                                    "or type is wrong")
        begin = start + offset
        if begin + n_bytes > size:
            raise CorruptCheckpoint(f"{path}: tensor {name!r} ({qtype.name}, shape {shape}) is "
                                    f"truncated: its {n_bytes} bytes at offset {begin} end at "
                                    f"{begin + n_bytes}, beyond the file's {size} bytes")
        tensors[name] = previous = TensorInfo(name, shape, int(type_id), begin, n_bytes,
                                              mm[begin:begin + n_bytes])
        expected = offset + -(-n_bytes // alignment) * alignment
    if previous is not None and size > start + expected:
        raise CorruptCheckpoint(f"{path}: {size - start - expected} bytes follow the last tensor "
                                f"{previous.name!r} ({previous.type_name}, {previous.n_bytes} "
                                "bytes): a tensor's type or shape is wrong")
    return GGUFFile(path, version, metadata, tensors, alignment, start, types)


def decode(t: TensorInfo, path) -> np.ndarray:
    """Float32 array of shape ``t.shape`` from the tensor's bytes, values not checked.

    F32 as stored, F16 and BF16 widened exactly (BF16 by
    :func:`refquant.schemes.casts.from_bf16_bits`, which already rejects NaN/Inf patterns), the
    block formats via ``gguf.quants.dequantize``. Integer types and types ``gguf`` cannot
    dequantize raise :class:`~refquant.models.errors.ModelFormatError` (unsupported, not
    corrupt); a BF16 NaN/Inf pattern raises :class:`CorruptCheckpoint`.
    """
    import gguf
    import gguf.quants

    name = t.type_name
    if name in INTEGER_TYPES:
        raise ModelFormatError(f"{path}: tensor {t.name!r} has integer type {name}, not a float "
                               "or quantized weight type")
    if name == "F32":
        return np.frombuffer(t.data, dtype="<f4").reshape(t.shape).copy()
    if name == "F16":
        return np.frombuffer(t.data, dtype="<f2").reshape(t.shape).astype(np.float32)
    if name == "BF16":
        try:
            return from_bf16_bits(np.frombuffer(t.data, dtype="<u2")).reshape(t.shape)
        except ValueError as exc:                          # a NaN or Inf bit pattern
            raise CorruptCheckpoint(f"{path}: tensor {t.name!r} (BF16): {exc}") from None
    qtype = gguf.GGMLQuantizationType(t.type_id)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.asarray(t.data).reshape(*t.shape[:-1], t.shape[-1] // block * type_size)
    try:
        with np.errstate(all="ignore"):      # NaN/Inf in a stored scale: reported by the caller
            W = gguf.quants.dequantize(raw, qtype)
    except NotImplementedError as exc:
        raise ModelFormatError(f"{path}: tensor {t.name!r} has type {name}, which gguf cannot "
                               "dequantize") from exc
    return np.asarray(W, dtype=np.float32).reshape(t.shape)


def dequantize(t: TensorInfo, path) -> np.ndarray:
    """:func:`decode`, then :func:`~refquant.models.errors.require_finite`: a NaN or Inf in a
    stored weight, scale or norm raises :class:`CorruptCheckpoint` naming the file and tensor."""
    return require_finite(decode(t, path), path, t.name)


__all__ = ["GGUFFile", "TensorInfo", "read_gguf", "decode", "dequantize", "FLOAT_TYPES",
           "INTEGER_TYPES", "DEFAULT_ALIGNMENT"]
