"""Storage size of a quantized tensor: codes, scales, zero points, tables, bits per weight.

:func:`size_report` counts the bytes a tensor of ``shape`` takes when stored under a scheme,
without quantizing anything. It is the arithmetic below, nothing hidden:

=============  ==============================================================================
part           bytes
=============  ==============================================================================
codes          ``rows * ceil(K * b / 8)``: ``b``-bit codes packed densely along the last axis
               (length ``K``), each row starting at a byte boundary, as :func:`refquant.pack`
               stores them (``rows`` = product of the other axes; 1 for 0-d and 1-D shapes)
scales         ``ceil(n_params * scale_bits / 8)``; ``n_params`` from
               :func:`refquant.param_shape` (uniform and log-scale specs) or one per block
zero points    ``ceil(n_params * zero_bits / 8)`` for asymmetric uniform specs, else 0;
               ``zero_bits`` defaults to the code width (zero points packed like codes, as in
               GPTQ checkpoints)
table          ``n_levels * float_bits / 8`` for a codebook fitted to this tensor (Lloyd-Max);
               0 for fixed tables (NF4, powers of two)
=============  ==============================================================================

``bits_per_weight = 8 * total_bytes / n_elements`` and ``saving = 1 - total_bytes /
float_bytes`` against the unquantized tensor at ``float_bits`` per element (32 by default).
Example (the numbers tested in ``tests/test_sizes.py``): INT8 per-channel of a float32
(4096, 4096) matrix with float32 scales is 16,777,216 + 16,384 bytes against 67,108,864:
8.0078125 bits per weight, a saving of 74.98%.

Schemes
-------
- :class:`refquant.QuantSpec` (uniform, any granularity), :class:`refquant.LogSpec`;
- :class:`refquant.FloatSpec` (FP8/FP6/FP4 elements of ``spec.bits`` bits, one scale per
  parameter group, blocks and per-token tiles included);
- ``"fp16"``, ``"bf16"``, ``"fp32"``: the casts of :mod:`refquant.schemes.casts` (no scales);
- ``"nf4"``: NF4 codes with one absmax scale per ``block_size`` block (QLoRA's default 64);
- :class:`CodebookSpec`: any codebook, with or without a stored table and blockwise scales;
- the microscaled formats of :mod:`refquant.schemes.mx` by name: ``"mxfp8_e4m3"``,
  ``"mxfp8_e5m2"``, ``"mxfp6_e2m3"``, ``"mxfp6_e3m2"``, ``"mxfp4"``, ``"mxint8"`` (one 8-bit
  E8M0 scale per 32 values along the last axis: MXFP4 4.25 bits per weight, MXFP6 6.25 with
  the elements packed densely, MXFP8/MXINT8 8.25) and ``"nvfp4"`` (one 8-bit E4M3 scale per 16
  values plus one float32 tensor scale: 4.5 bits per weight + 32 bits per tensor). The last
  axis must be a multiple of the block; ``scale_bits`` does not apply (the scale formats are
  fixed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from refquant.schemes.float_quant import FloatSpec
from refquant.schemes.floats import float_format
from refquant.schemes.mx import MX_FORMATS, NVFP4_BLOCK
from refquant.schemes.numerics import check_positive_int
from refquant.schemes.nonuniform import LogSpec
from refquant.schemes.spec import QuantSpec, param_shape

CAST_BITS = {"fp32": 32, "fp16": 16, "bf16": 16}
_MX_BLOCK = 32                                              # the OCP MX block
#: microscaled format -> (element bits, values per 8-bit block scale, tensor-scale bits)
MX_SIZES = {**{f: (8 if e == "int8" else float_format(e).nbits, _MX_BLOCK, 0)
               for f, (e, _) in MX_FORMATS.items()},
            "nvfp4": (4, NVFP4_BLOCK, 32)}


@dataclass(frozen=True)
class CodebookSpec:
    """A codebook scheme for size accounting: ``n_levels`` levels (codes of
    ``ceil(log2(n_levels))`` bits), one absmax scale per ``block_size`` elements along the last
    axis (``None``: one per tensor), and whether the table is stored with the tensor
    (``stored_table=True`` for a fitted Lloyd-Max table; False for a fixed table such as NF4)."""

    n_levels: int = 16
    block_size: int | None = None
    stored_table: bool = True

    def __post_init__(self):
        if check_positive_int(self.n_levels, "n_levels") < 2:
            raise ValueError(f"n_levels must be at least 2, got {self.n_levels!r}")
        if self.block_size is not None:
            check_positive_int(self.block_size, "block_size")

    @property
    def bits(self) -> int:
        return math.ceil(math.log2(self.n_levels))


@dataclass(frozen=True)
class SizeReport:
    """Bytes of one quantized tensor (or, after ``+``, of several; ``shape`` is then None)."""

    label: str
    n_elements: int
    code_bytes: int
    scale_bytes: int
    zero_bytes: int
    table_bytes: int
    float_bytes: int
    shape: tuple | None = None

    @property
    def total_bytes(self) -> int:
        return self.code_bytes + self.scale_bytes + self.zero_bytes + self.table_bytes

    @property
    def bits_per_weight(self) -> float:
        """``8 * total_bytes / n_elements``: storage per element, parameters included."""
        return 8 * self.total_bytes / self.n_elements

    @property
    def saving(self) -> float:
        """Fraction of the float baseline saved: ``1 - total_bytes / float_bytes``."""
        return 1 - self.total_bytes / self.float_bytes

    @property
    def ratio(self) -> float:
        """Compression ratio ``float_bytes / total_bytes``."""
        return self.float_bytes / self.total_bytes

    def __add__(self, other):
        if not isinstance(other, SizeReport):
            return NotImplemented
        return SizeReport(self.label if self.label == other.label else "mixed",
                          self.n_elements + other.n_elements, self.code_bytes + other.code_bytes,
                          self.scale_bytes + other.scale_bytes, self.zero_bytes + other.zero_bytes,
                          self.table_bytes + other.table_bytes, self.float_bytes + other.float_bytes,
                          None)

    def __radd__(self, other):
        if isinstance(other, int) and other == 0:        # sum(reports) starts from 0
            return self
        return NotImplemented

    def as_row(self) -> dict:
        """The report as a flat dict (one row of a results table)."""
        return {"label": self.label, "shape": self.shape, "n_elements": self.n_elements,
                "code_bytes": self.code_bytes, "scale_bytes": self.scale_bytes,
                "zero_bytes": self.zero_bytes, "table_bytes": self.table_bytes,
                "total_bytes": self.total_bytes, "float_bytes": self.float_bytes,
                "bits_per_weight": self.bits_per_weight, "saving": self.saving}

    def __str__(self) -> str:
        shape = "" if self.shape is None else f" {self.shape}"
        return (f"{self.label}{shape}: {self.total_bytes:,} bytes (codes {self.code_bytes:,}, "
                f"scales {self.scale_bytes:,}, zero points {self.zero_bytes:,}, table "
                f"{self.table_bytes:,}) = {self.bits_per_weight:.4g} bits/weight, "
                f"{100 * self.saving:.2f}% smaller than {self.float_bytes:,} float bytes")


def _bytes(n_items: int, bits: int) -> int:
    return -(-int(n_items) * int(bits) // 8)


def _label(spec) -> str:
    if isinstance(spec, QuantSpec):
        g = {"tensor": "per-tensor", "channel": f"per-channel(axis={spec.axis})",
             "group": f"group{spec.group_size}"}[spec.granularity]
        return f"int{spec.bits} {'sym' if spec.symmetric else 'asym'} {g}"
    if isinstance(spec, LogSpec):
        return f"log{spec.levels} {spec.granularity}"
    if isinstance(spec, FloatSpec):
        g = {"tensor": "per-tensor", "channel": f"per-channel(axis={spec.axis})",
             "group": f"group{spec.group_size}", "token": f"per-token{spec.group_size or ''}",
             "block": "block{}x{}".format(*(spec.block_shape or (0, 0)))}[spec.granularity]
        return f"{spec.fmt} {g}"
    if isinstance(spec, CodebookSpec):
        return f"codebook{spec.n_levels}" + (f" block{spec.block_size}" if spec.block_size else "")
    return str(spec)


def size_report(shape, spec, *, scale_bits: int = 32, zero_bits: int | None = None,
                float_bits: int = 32, block_size: int = 64, label: str | None = None) -> SizeReport:
    """Bytes of a tensor of ``shape`` stored under ``spec`` (see the module docstring).

    Parameters
    ----------
    shape : tuple of int
        The tensor's shape (weights: (out_features, in_features)); must hold at least one element.
    spec : QuantSpec, LogSpec, FloatSpec, CodebookSpec or one of "fp32", "fp16", "bf16", "nf4"
        or a microscaled format name ("mxfp4", "nvfp4", ...; module docstring)
    scale_bits : int
        Bits per stored scale (32: refquant's float32 scales; 16: fp16 scales as in GPTQ
        checkpoints and GGUF blocks).
    zero_bits : int, optional
        Bits per stored zero point of an asymmetric QuantSpec (default: ``spec.bits``). Giving
        it for a scheme without zero points raises ``ValueError``.
    float_bits : int
        Bits per element of the unquantized baseline (and of a stored codebook table).
    block_size : int
        Elements per absmax block for ``"nf4"``.
    label : str, optional
        Name in the report (default: a description of ``spec``).

    Returns
    -------
    SizeReport

    Examples
    --------
    >>> from refquant import QuantSpec
    >>> r = size_report((4096, 4096), QuantSpec(bits=8, granularity="channel"))
    >>> r.total_bytes, r.bits_per_weight, round(r.saving, 4)
    (16793600, 8.0078125, 0.7498)
    """
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple of integers, got {shape!r}") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"shape has a negative dimension: {shape}")
    n = math.prod(shape)
    if n == 0:
        raise ValueError(f"shape {shape} holds no elements")
    scale_bits = check_positive_int(scale_bits, "scale_bits")
    float_bits = check_positive_int(float_bits, "float_bits")
    k = shape[-1] if shape else 1
    rows = n // k

    if isinstance(spec, str):
        if spec == "nf4":
            spec = CodebookSpec(16, block_size=check_positive_int(block_size, "block_size"),
                                stored_table=False)
        elif spec not in CAST_BITS and spec not in MX_SIZES:
            raise ValueError(f"unknown scheme {spec!r}; use a QuantSpec, LogSpec, CodebookSpec "
                             f"or one of {sorted(CAST_BITS) + ['nf4'] + sorted(MX_SIZES)}")
    has_zero = isinstance(spec, QuantSpec) and not spec.symmetric
    if zero_bits is not None and not has_zero:
        raise ValueError(f"zero_bits={zero_bits!r} given, but {_label(spec)!r} stores no zero points")
    if isinstance(spec, str) and spec in MX_SIZES:
        return _mx_size(shape, spec, rows, k, float_bits, label)

    table_bytes = zero_bytes = scale_bytes = 0
    if isinstance(spec, str):                                   # a cast: 16 or 32 bits, nothing else
        bits = CAST_BITS[spec]
    elif isinstance(spec, (QuantSpec, LogSpec, FloatSpec)):
        bits = spec.bits
        n_params = math.prod(param_shape(shape, spec))
        scale_bytes = _bytes(n_params, scale_bits)
        if has_zero:
            zb = spec.bits if zero_bits is None else check_positive_int(zero_bits, "zero_bits")
            zero_bytes = _bytes(n_params, zb)
    elif isinstance(spec, CodebookSpec):
        bits = spec.bits
        n_params = 1 if spec.block_size is None else rows * -(-k // spec.block_size)
        scale_bytes = _bytes(n_params, scale_bits)
        table_bytes = _bytes(spec.n_levels, float_bits) if spec.stored_table else 0
    else:
        raise ValueError(f"spec must be a QuantSpec, LogSpec, FloatSpec, CodebookSpec or a scheme "
                         f"name, got {type(spec).__name__}")
    return SizeReport(label or _label(spec), n, rows * _bytes(k, bits), scale_bytes, zero_bytes,
                      table_bytes, _bytes(n, float_bits), shape)


def _mx_size(shape, fmt: str, rows: int, k: int, float_bits: int, label) -> SizeReport:
    """Bytes of a microscaled format (module docstring): dense codes, one byte per block,
    and NVFP4's float32 tensor scale."""
    bits, block, tensor_bits = MX_SIZES[fmt]
    if k % block:
        raise ValueError(f"{fmt} needs a last axis that is a multiple of its block {block}; "
                         f"shape {shape} has {k}")
    n = rows * k
    scale_bytes = rows * (k // block) + tensor_bits // 8
    return SizeReport(label or f"{fmt} block{block}", n, rows * _bytes(k, bits), scale_bytes, 0,
                      0, _bytes(n, float_bits), shape)


__all__ = ["size_report", "SizeReport", "CodebookSpec"]
