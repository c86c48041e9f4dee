"""llama.cpp's importance-matrix files: the GGUF-based format and the legacy ``.dat``.

GGUF format (what current ``llama-imatrix`` writes, ``-o imatrix.gguf``) [1]_: a GGUF file with
the metadata

==========================  ==============  ===========================================
key                         type            value
==========================  ==============  ===========================================
``general.type``            string          ``"imatrix"``
``imatrix.datasets``        array[string]   the calibration text file(s)
``imatrix.chunk_count``     uint32          chunks processed
``imatrix.chunk_size``      uint32          tokens per chunk (``n_ctx / n_parallel``)
==========================  ==============  ===========================================

and, per weight ``<name>`` (``blk.0.attn_q.weight``), F32 tensors ``<name>.in_sum2`` (GGML shape
``[K, n_mat]``: the sums :math:`S` of squared inputs), ``<name>.counts`` (``[1, n_mat]``: the
tokens :math:`c`, stored as floats) and, in recent versions, ``<name>.in_sum`` (``[K, n_mat]``:
the sums :math:`A`), in sorted name order. ``llama-quantize`` refuses a GGUF imatrix without the
three ``imatrix.*`` keys, and so does :func:`read_imatrix`.

Legacy ``.dat`` format (``--output-format dat``; little-endian)::

    i32 n_entries
    n_entries x ( i32 len | len bytes name | i32 ncall | i32 nval | nval x f32 value )
    i32 chunk_count | i32 len | len bytes dataset        (optional trailer)

with ``value = S / c * ncall`` and ``ncall = ceil(max(c) / chunk_size)`` (1 for an entry with
``c = 0``; an entry with no count at all is not written), so that ``llama-quantize``'s ``value / ncall`` is the mean :math:`S / c` again. A
``.dat`` entry is read as ``in_sum2 = value``, ``counts = [ncall]`` (``[1]`` when ``ncall`` is 0,
where llama.cpp takes the values as they are): :func:`refquant.algorithms.imatrix.importance`
then gives what ``llama-quantize`` uses. The chunk size is not stored (read as 0).

Both readers check what llama.cpp checks and more: the structure (truncation, pairs of sums and
counts, F32, element counts), finite non-negative sums of squares and counts, finite sums;
every error names the file and the tensor. The GGUF container itself is parsed by the one GGUF
parser, :func:`refquant.models.gguffile.read_gguf`.

References
----------
.. [1] ggml-org/llama.cpp, ``tools/imatrix/imatrix.cpp`` (``save_imatrix``,
       ``save_imatrix_legacy``) and ``common/imatrix-loader.cpp`` (``common_imatrix_load``).
"""

from __future__ import annotations

import math
import os
import pathlib
import struct

import numpy as np

from refquant.algorithms.imatrix import Imatrix, ImatrixEntry
from refquant.models.errors import CorruptCheckpoint

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIXES = (".in_sum2", ".counts", ".in_sum")


class ImatrixFileError(CorruptCheckpoint):
    """An importance-matrix file that is malformed or holds unusable values (names the file
    and the tensor)."""


def read_imatrix(path) -> Imatrix:
    """Read a GGUF or legacy ``.dat`` imatrix file (told apart by the GGUF magic, as llama.cpp
    does). Raises :class:`ImatrixFileError` naming the file and tensor at fault."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no imatrix file at {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    return _read_gguf(path) if magic == b"GGUF" else _read_dat(path)


def _check_entry(path, name: str, S, c, A) -> ImatrixEntry:
    S, c = np.asarray(S, np.float64), np.asarray(c, np.float64)
    for what, v in (("in_sum2", S), ("counts", c)):
        bad = ~np.isfinite(v) | (v < 0)
        if np.any(bad):
            i = int(np.argmax(bad.reshape(-1)))
            raise ImatrixFileError(f"{path}: tensor {name!r}: {what} must be finite and >= 0; "
                                   f"element {i} is {float(v.reshape(-1)[i])!r}")
    if A is not None:
        A = np.asarray(A, np.float64)
        if not np.all(np.isfinite(A)):
            i = int(np.argmax(~np.isfinite(A.reshape(-1))))
            raise ImatrixFileError(f"{path}: tensor {name!r}: in_sum element {i} is "
                                   f"{float(A.reshape(-1)[i])!r}, not finite")
    return ImatrixEntry(in_sum2=S, counts=np.rint(c).astype(np.int64), in_sum=A)


def _read_gguf(path: pathlib.Path) -> Imatrix:
    from refquant.models.gguffile import decode, read_gguf

    f = read_gguf(path)
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in f.metadata]
    if missing:
        raise ImatrixFileError(f"{path}: not a llama.cpp imatrix file: metadata {missing} missing")
    parts: dict[str, dict] = {}
    for tname, t in f.tensors.items():
        for suffix in SUFFIXES:
            if tname.endswith(suffix):
                if t.type_name != "F32":
                    raise ImatrixFileError(f"{path}: tensor {tname!r} is {t.type_name}, "
                                           "imatrix sums and counts must be F32")
                parts.setdefault(tname[: -len(suffix)], {})[suffix] = decode(t, path)
                break
    if not parts:
        raise ImatrixFileError(f"{path}: no <name>.in_sum2 / <name>.counts tensors")
    entries = {}
    for name, p in sorted(parts.items()):
        if ".in_sum2" not in p or ".counts" not in p:
            raise ImatrixFileError(f"{path}: tensor {name!r} has "
                                   f"{sorted(k.lstrip('.') for k in p)} but needs in_sum2 and counts")
        S, c, A = p[".in_sum2"], p[".counts"].reshape(-1), p.get(".in_sum")
        S = S.reshape(-1, S.shape[-1]) if S.ndim > 1 else S[None]
        if S.shape[0] != c.size or (A is not None and A.size != S.size):
            raise ImatrixFileError(f"{path}: tensor {name!r}: in_sum2 of shape {S.shape} does not "
                                   f"match {c.size} counts" + ("" if A is None else
                                                              f" and in_sum of {A.size} values"))
        entries[name] = _check_entry(path, name, S, c, None if A is None else A.reshape(S.shape))
    datasets = f.metadata[KEY_DATASETS]
    return Imatrix(entries=entries, chunk_count=int(f.metadata[KEY_CHUNK_COUNT]),
                   chunk_size=int(f.metadata[KEY_CHUNK_SIZE]),
                   datasets=tuple(datasets if isinstance(datasets, list) else [datasets]))


class _Bytes:
    def __init__(self, raw: bytes, path):
        self.raw, self.pos, self.path = raw, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.raw):
            raise ImatrixFileError(f"{self.path}: truncated .dat imatrix: the file ends inside "
                                   f"{what} (byte {self.pos}, needs {n} more, file has "
                                   f"{len(self.raw)})")
        out = self.raw[self.pos:self.pos + n]
        self.pos += n
        return out

    def i32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _read_dat(path: pathlib.Path) -> Imatrix:
    cur = _Bytes(path.read_bytes(), path)
    n = cur.i32("the entry count")
    if n < 1 or n > len(cur.raw):
        raise ImatrixFileError(f"{path}: neither a GGUF file nor a .dat imatrix (entry count {n})")
    entries = {}
    for k in range(n):
        size = cur.i32(f"the name length of entry #{k}")
        try:
            name = cur.take(size, f"the name of entry #{k}").decode("utf-8")
        except UnicodeDecodeError:
            raise ImatrixFileError(f"{path}: the name of entry #{k} is not UTF-8") from None
        ncall, nval = cur.i32(f"tensor {name!r}"), cur.i32(f"tensor {name!r}")
        if nval < 1 or ncall < 0:
            raise ImatrixFileError(f"{path}: tensor {name!r}: {nval} values, ncall {ncall} "
                                   "(expected >= 1 values and ncall >= 0)")
        values = np.frombuffer(cur.take(4 * nval, f"the values of tensor {name!r}"), "<f4")
        entries[name] = _check_entry(path, name, values[None], [max(ncall, 1)], None)
    chunk_count, datasets = 0, ()
    if cur.pos < len(cur.raw):
        chunk_count = cur.i32("the chunk count")
        if cur.pos < len(cur.raw):
            size = cur.i32("the dataset name length")
            datasets = (cur.take(size, "the dataset name").decode("utf-8", "replace"),)
    return Imatrix(entries=dict(sorted(entries.items())), chunk_count=chunk_count, chunk_size=0,
                   datasets=datasets)


def write_imatrix(path, imatrix: Imatrix, *, legacy: bool = False) -> pathlib.Path:
    """Write ``imatrix`` as llama.cpp writes it: GGUF (default) or the legacy ``.dat``
    (``legacy=True``, which needs ``imatrix.chunk_size > 0``). Written to a temporary name and
    renamed, so a failed write leaves no partial file."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        if legacy:
            tmp.write_bytes(_dat_bytes(imatrix))
        else:
            _write_gguf(tmp, imatrix)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_gguf(path: pathlib.Path, imatrix: Imatrix) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch="")
    w.kv_data[0].pop("general.architecture", None)    # llama.cpp's imatrix files have none
    w.add_type("imatrix")
    w.add_array(KEY_DATASETS, list(imatrix.datasets))
    w.add_uint32(KEY_CHUNK_COUNT, int(imatrix.chunk_count))
    w.add_uint32(KEY_CHUNK_SIZE, int(imatrix.chunk_size))
    for name, e in sorted(imatrix.entries.items()):
        w.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(e.in_sum2, np.float32))
        w.add_tensor(f"{name}.counts", e.counts.astype(np.float32)[:, None])
        if e.in_sum is not None:
            w.add_tensor(f"{name}.in_sum", np.ascontiguousarray(e.in_sum, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _dat_bytes(imatrix: Imatrix) -> bytes:
    if imatrix.chunk_size <= 0:
        raise ValueError("the legacy .dat format needs imatrix.chunk_size > 0 (its ncall is "
                         f"counts / chunk_size), got {imatrix.chunk_size!r}")
    # llama.cpp skips an entry whose every count is 0 ("has no data - skipping")
    kept = {n: e for n, e in sorted(imatrix.entries.items()) if int(e.counts.max()) > 0}
    out = [struct.pack("<i", len(kept))]
    for name, e in kept.items():
        ncall = math.ceil(int(e.counts.max()) / imatrix.chunk_size)     # "avoid accidental zeros"
        K = e.in_sum2.shape[-1]
        c = np.repeat(e.counts, K).astype(np.float32)                  # [n_mat K]
        S = e.in_sum2.reshape(-1).astype(np.float32)
        # llama.cpp, in float32: (value / count) * ncall, and 1 * ncall... for a zero count
        v = np.where(c > 0, S / np.where(c > 0, c, np.float32(1)), np.float32(1)) * np.float32(ncall)
        raw = name.encode("utf-8")
        out += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, v.size),
                v.astype("<f4").tobytes()]
    dataset = (imatrix.datasets[-1] if imatrix.datasets else "").encode("utf-8")
    out += [struct.pack("<ii", int(imatrix.chunk_count), len(dataset)), dataset]
    return b"".join(out)


__all__ = ["ImatrixFileError", "read_imatrix", "write_imatrix", "KEY_DATASETS",
           "KEY_CHUNK_COUNT", "KEY_CHUNK_SIZE"]
