"""Check a third-party quantized checkpoint: what each tensor is, whether it is internally
consistent, and (given the float weights) how far it is from them and from refquant's RTN.

:func:`audit_checkpoint` reads a GGUF file or a GPTQ-format directory with the same parsers and
checks as :func:`refquant.load_model` (:func:`refquant.models.gguffile.read_gguf`, and for a
complete Llama GGUF the same configuration cross-check,
:func:`refquant.models.loaders.gguf_model_tensors`; :func:`refquant.formats.gptq.read_checkpoint`)
and returns an :class:`AuditReport`; the ``refquant inspect`` command prints it as a table or
JSON. A file those readers reject raises (a
:class:`~refquant.models.errors.CheckpointError` naming the tensor or key); what they accept is
checked tensor by tensor, and NaN/Inf values are reported rather than raised.

Checks per tensor
-----------------
GGML block formats Q8_0 / Q4_0 / Q4_1 (decoded with :mod:`refquant.formats.ggml`):

* ``byte_length``: the data holds exactly ``n_elements / 32`` blocks (checked for every type);
* ``scales_finite``: every stored ``d`` (and Q4_1 ``m``) is finite;
* ``scale_sign``: ``d >= 0`` for Q8_0 and Q4_1 (their reference quantizers cannot produce a
  negative scale; Q4_0's ``d = max / -8`` may have either sign);
* ``codes_in_range``: Q8_0 codes in [-127, 127] (-128 is never produced by ``roundf(x * 127 /
  max|x|)``); 4-bit nibbles are always in [0, 15];
* ``values_finite``: the dequantized tensor is finite.

Every other registered block type (``refquant.formats.ggml.TYPES``: Q5_0/Q5_1, the K-quants,
IQ4_NL/IQ4_XS, MXFP4 ...) is decoded with :func:`refquant.formats.ggml.dequantize` and gets
``byte_length``, ``values_finite`` and, where its layout has one: ``scales_finite`` (the
float16/float32 super-block and block scales), ``scale_sign`` (Q5_1), and for Q8_K
``codes_in_range`` (no -128) and ``bsums`` (each stored sum equals the sum of its 16 codes).
``fixed_point`` is reported for Q5_0/Q5_1 only (the searched types need not reproduce their
own output).

Informational: ``zero_scale_blocks`` (blocks with ``d == 0``), ``fixed_point``: the fraction of
blocks that refquant's reference quantizer reproduces byte for byte from the dequantized values
(1.0: the file is what llama.cpp's plain reference quantizer writes; lower values point to an
importance-matrix quantizer or another tool, not to an error).

GPTQ layers: scales finite and positive, zero points and codes in range (after unpacking with
the selected zero-point convention), ``g_idx`` in range and, without ``desc_act``, equal to
``k // group_size``; packing shapes are checked by the reader. Float tensors are reported with
their stored dtype; with a Hugging Face ``config.json`` beside them, the checkpoint must hold
exactly the model's weights (:func:`refquant.formats.gptq.check_complete`).

Bits per weight count everything stored for the tensor: GGML types ``8 type_size /
block_size`` (Q4_1: 4 + 16/32 + 16/32 = 5.0); GPTQ ``b + (16 + b) G / K + 32 / N`` (codes, a
float16 scale and a packed zero per group, an int32 ``g_idx`` per input column).

Errors against a reference
--------------------------
``rel_err = ||W_hat - W||_F / ||W||_F`` for the stored weight, ``rtn_rel_err`` for refquant's
round-to-nearest of ``W`` at the same settings (GGML: the format's reference quantizer,
:mod:`refquant.formats.ggml`; GPTQ: min-max RTN with the layer's bits, symmetry and group size),
and for GGML formats ``uniform_rel_err``: refquant's uniform quantizer with an integer zero point
and groups of 32 (Q8_0: int8 symmetric restricted; Q4_0: int4 symmetric; Q4_1: int4 asymmetric).
"""

from __future__ import annotations

import pathlib

import numpy as np

from refquant.formats import ggml
from refquant.formats.audit_ggml import check_block_type_tensor
from refquant.formats.audit_report import AuditReport, TensorAudit, relative_error
from refquant.models.errors import CheckpointError, CorruptCheckpoint, ModelFormatError
from refquant.models.gguf_hf import hf_name, permute_qk
from refquant.models.layout import ST_DTYPES

ZERO_CONVENTIONS = ("auto", "gptq", "gptq_v2")
_UNIFORM_FOR_GGML = {"Q8_0": dict(bits=8, symmetric=True, restricted=True),
                     "Q4_0": dict(bits=4, symmetric=True), "Q4_1": dict(bits=4, symmetric=False)}


# ---------------------------------------------------------------------------------------------
# GGUF


def _check_ggml_tensor(name: str, fmt: str, data: np.ndarray, shape: tuple):
    """Checks and info of one GGML block tensor; returns (checks, info, w_hat)."""
    rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
    blk = ggml.unpack_blocks(rows, fmt)
    d = blk.d.astype(np.float32)
    checks = {"byte_length": True, "scales_finite": bool(np.isfinite(d).all())}
    if fmt == "Q4_1":
        checks["scales_finite"] &= bool(np.isfinite(blk.m.astype(np.float32)).all())
    checks["scale_sign"] = True if fmt == "Q4_0" else bool((d[np.isfinite(d)] >= 0).all())
    checks["codes_in_range"] = bool((blk.q != -128).all()) if fmt == "Q8_0" else True
    with np.errstate(all="ignore"):
        w_hat = ggml.dequantize_blocks(blk).reshape(shape)
    checks["values_finite"] = bool(np.isfinite(w_hat).all())
    info = {"n_blocks": int(d.size), "zero_scale_blocks": int((d == 0).sum())}
    if checks["values_finite"]:
        again = ggml.quantize(w_hat.reshape(rows.shape[0], -1), fmt)
        nb = ggml.block_bytes(fmt)
        same = (again.reshape(-1, nb) == rows.reshape(-1, nb)).all(axis=1)
        info["fixed_point"] = float(same.mean())
    return checks, info, w_hat


def _audit_gguf(path: pathlib.Path, reference: dict | None) -> AuditReport:
    from refquant.models.gguffile import decode, read_gguf

    f = read_gguf(path)                            # raises CorruptCheckpoint naming the tensor
    meta = f.metadata
    if meta.get("general.architecture") == "llama" and "llama.block_count" in meta:
        from refquant.models.loaders import gguf_model_tensors

        gguf_model_tensors(f)                      # the loader's cross-check of metadata and tensors
    report = AuditReport(str(path), "gguf", [])
    for t in f.tensors.values():
        block, type_size = _ggml_sizes(t.type_name)
        audit = TensorAudit(t.name, t.type_name, t.shape, 8 * type_size / block,
                            block if block > 1 else None, None)
        w_hat = None
        if t.type_name in ggml.FORMATS:
            audit.checks, audit.info, w_hat = _check_ggml_tensor(t.name, t.type_name, np.asarray(t.data), t.shape)
            audit.consistent = all(audit.checks.values())
        elif t.type_name in ggml.TYPES:
            audit.checks, audit.info, w_hat = check_block_type_tensor(t.type_name, np.asarray(t.data), t.shape)
            audit.consistent = all(audit.checks.values())
        elif t.type_name in ("F32", "F16", "BF16"):
            w_hat = decode(t, path)
            audit.checks = {"byte_length": True, "values_finite": bool(np.isfinite(w_hat).all())}
            audit.consistent = all(audit.checks.values())
        else:
            audit.checks = {"byte_length": True}
            audit.info["note"] = "codes not checked: refquant does not implement this type"
            w_hat = _decode_or_none(t, path)
        if reference is not None and w_hat is not None:
            _compare(audit, w_hat, reference, meta)
        report.tensors.append(audit)
    return report


def _ggml_sizes(type_name: str) -> tuple[int, int]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]


def _decode_or_none(t, path):
    """The float32 values of a GGUF tensor, or None for a type gguf cannot dequantize."""
    from refquant.models.gguffile import decode

    try:
        return decode(t, path)
    except CorruptCheckpoint:
        raise
    except ModelFormatError:                       # unsupported, not damaged
        return None


def _compare(audit: TensorAudit, w_hat: np.ndarray, reference: dict, meta: dict | None = None):
    """Fill the error fields of ``audit`` from a reference mapping name -> float array."""
    ref_name = audit.name if audit.name in reference else None
    w = None
    if ref_name is not None:
        w = reference[ref_name]
    else:
        hf = hf_name(audit.name) if meta is not None else None
        for cand in (hf, audit.name.removeprefix("model."), "model." + audit.name):
            if cand and cand in reference:
                ref_name, w = cand, reference[cand]
                break
        if w is not None and meta is not None and hf is not None and (".q_proj" in hf or ".k_proj" in hf):
            key = "attention.head_count_kv" if ".k_proj" in hf else "attention.head_count"
            arch = meta.get("general.architecture", "llama")
            n_head = meta.get(f"{arch}.{key}")
            if n_head is None:
                return
            w = permute_qk(np.asarray(w, np.float32), int(n_head))
    if w is None:
        return
    w = np.asarray(w, np.float32)
    if w.shape != tuple(audit.shape):
        audit.info["reference_shape_mismatch"] = list(w.shape)
        return
    audit.reference_name = ref_name
    audit.rel_err = relative_error(w_hat, w)
    fmt = audit.stored_type
    if fmt in ggml.TYPES:
        audit.rtn_rel_err = relative_error(ggml.dequantize(ggml.quantize(w, fmt), fmt).reshape(w.shape), w)
    if fmt in ggml.FORMATS:
        from refquant.schemes.spec import QuantSpec
        from refquant.calibration.fake import fake_quantize

        spec = QuantSpec(granularity="group", group_size=32, **_UNIFORM_FOR_GGML[fmt])
        audit.uniform_rel_err = relative_error(fake_quantize(w, spec), w)
    elif fmt.startswith("GPTQ"):
        from refquant.schemes.spec import QuantSpec
        from refquant.calibration.fake import fake_quantize

        bits, sym, gs = audit.info["bits"], audit.info["sym"], audit.group_size
        spec = QuantSpec(bits=bits, symmetric=sym, granularity="channel" if gs == -1 else "group",
                         group_size=None if gs == -1 else gs)
        audit.rtn_rel_err = relative_error(fake_quantize(w, spec), w)


# ---------------------------------------------------------------------------------------------
# GPTQ directories


def _audit_gptq(path: pathlib.Path, reference: dict | None, zero_convention: str) -> AuditReport:
    from refquant.formats import gptq
    from refquant.formats.gptq_files import shard_dtypes

    layers, float_tensors, config = gptq.read_checkpoint(path, check_finite=False)
    dtypes = {k.removeprefix("model."): v for f in sorted(path.glob("*.safetensors"))
              for k, v in shard_dtypes(f).items()}
    _check_against_hf_config(path, layers, float_tensors)
    stated = config.get("checkpoint_format")
    report = AuditReport(str(path), "gptq", [])
    conv = zero_convention
    if conv == "auto":
        conv = stated or _detect_zero_convention(layers, config)
        how = "from quantize_config.json" if stated else "detected from the zero points"
        report.notes.append(f"zero-point convention: {conv} ({how})")
    else:
        report.notes.append(f"zero-point convention: {conv} (selected; the file says {stated or 'nothing'})")
    read_as = stated or "gptq"
    per_layer = config.get("refquant_layers", {})
    for name, layer in layers.items():
        zeros = layer.zeros
        if conv != read_as:                        # re-derive the stored values, apply conv
            b = layer.bits
            stored = zeros if read_as == "gptq_v2" else (zeros - 1) % (2**b)
            zeros = stored if conv == "gptq_v2" else (stored + 1) % (2**b)
            layer = gptq.PackedLayer(layer.codes, layer.scales, zeros, layer.g_idx, layer.bits,
                                     layer.group_size)
        N, K = layer.codes.shape
        G = layer.scales.shape[0]
        b = layer.bits
        s = layer.scales.astype(np.float32)
        checks = {"byte_length": True,
                  "scales_finite": bool(np.isfinite(s).all()),
                  "scales_positive": bool((s[np.isfinite(s)] > 0).all()),
                  "codes_in_range": bool(layer.codes.max() < 2**b),
                  "zeros_in_range": bool(((zeros >= 0) & (zeros < 2**b)).all()),
                  "g_idx_in_range": bool(((layer.g_idx >= 0) & (layer.g_idx < G)).all())}
        if not config.get("desc_act", False) and layer.group_size != -1:
            checks["g_idx_matches_group_size"] = bool(
                np.array_equal(layer.g_idx, np.arange(K) // layer.group_size))
        lc = per_layer.get(name, {})
        sym = bool(lc.get("sym", config.get("sym", False)))
        info = {"bits": b, "sym": sym, "n_groups": G}
        if sym:
            info["symmetric_zero_points"] = bool((zeros == 2 ** (b - 1)).all())
        if conv == "gptq" and gptq.v1_zero_points(layer):    # misread by some peer readers
            info["v1_zero_points"] = gptq.v1_zero_points(layer)
            report.notes.append("warning: " + gptq.v1_zero_point_note(name, info["v1_zero_points"], b))
        bpw = b + (16 + b) * G / K + 32 / N
        audit = TensorAudit(name + ".weight", f"GPTQ_{b}bit", (N, K), float(bpw), int(layer.group_size),
                            all(checks.values()), checks, info)
        if reference is not None and audit.consistent:
            _compare(audit, gptq.dequantize_layer(layer), reference)
        report.tensors.append(audit)
    for name, t in float_tensors.items():
        dtype = dtypes[name]
        finite = bool(np.isfinite(t).all())
        report.tensors.append(TensorAudit(name, dtype, tuple(t.shape), 8.0 * np.dtype(ST_DTYPES[dtype]).itemsize,
                                          None, finite, {"values_finite": finite}))
    return report


def _check_against_hf_config(path: pathlib.Path, layers: dict, float_tensors: dict) -> None:
    """With a Hugging Face Llama ``config.json`` in the directory, the checkpoint must hold
    exactly that model's weights."""
    from refquant.formats.gptq import check_complete
    from refquant.models.config_checks import hf_config
    from refquant.models.errors import read_json_object

    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        return
    cfg = read_json_object(cfg_path)
    if cfg.get("model_type") != "llama":
        return
    names = {n + ".weight": ly.codes for n, ly in layers.items()} | float_tensors
    check_complete(names, hf_config(cfg, cfg_path), path)


def _detect_zero_convention(layers: dict, config: dict) -> str:
    """Without ``checkpoint_format``: a symmetric checkpoint's zero points must all be
    ``2^(b-1)``; read as v1 ("gptq") that holds iff the file stores ``2^(b-1) - 1`` (v1),
    otherwise the file is v2. Asymmetric files cannot be told apart: AutoGPTQ's v1 is assumed."""
    if not config.get("sym", False) or not layers:
        return "gptq"
    ok_v1 = all((ly.zeros == 2 ** (ly.bits - 1)).all() for ly in layers.values())
    return "gptq" if ok_v1 else "gptq_v2"


# ---------------------------------------------------------------------------------------------


def load_reference(path) -> dict:
    """Float weights by name from a GGUF file (dequantized), a safetensors file, or a directory
    of safetensors files (e.g. a Hugging Face checkpoint); names as stored (safetensors: without
    ``model.``). Read with the same checked readers as the checkpoint."""
    from refquant.formats.gptq_files import read_shard
    from refquant.models.gguffile import read_gguf

    path = pathlib.Path(path)
    if not path.exists():
        raise ValueError(f"reference checkpoint {path} does not exist")
    if path.is_file() and path.suffix == ".gguf":
        out = {}
        for t in read_gguf(path).tensors.values():
            w = _decode_or_none(t, path)
            if w is not None:
                out[t.name] = w
        return out
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"reference {path}: no .gguf or .safetensors file found")
    return {k.removeprefix("model."): v for f in files for k, v in read_shard(f).items()}


def audit_checkpoint(path, *, reference=None, zero_convention: str = "auto") -> AuditReport:
    """Audit a GGUF file or GPTQ-format directory (see the module docstring).

    Parameters
    ----------
    path : path
        A ``.gguf`` file or a directory with ``quantize_config.json`` (or a Hugging Face
        ``config.json`` with a GPTQ ``quantization_config``) and ``*.safetensors``.
    reference : path, optional
        Float checkpoint (GGUF, safetensors file or directory) to measure errors against.
    zero_convention : {"auto", "gptq", "gptq_v2"}
        GPTQ only: how ``qzeros`` is stored; ``auto`` takes ``checkpoint_format`` from the
        config, else detects it from a symmetric checkpoint's zero points, else assumes v1.

    Raises
    ------
    CheckpointError
        A file the readers reject: :class:`CorruptCheckpoint` for a truncated or malformed file,
        :class:`~refquant.models.errors.ModelFormatError` for metadata that disagrees with the
        tensors, :class:`refquant.formats.gptq.GPTQCheckpointError` for an incomplete GPTQ
        checkpoint; the message names the tensor or key.
    ValueError
        A path that is neither, or an unknown ``zero_convention``.
    """
    if zero_convention not in ZERO_CONVENTIONS:
        raise ValueError(f"zero_convention must be one of {ZERO_CONVENTIONS}, got {zero_convention!r}")
    path = pathlib.Path(path)
    ref = load_reference(reference) if reference is not None else None
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (and not a GPTQ directory)")
        report = _audit_gguf(path, ref)
    elif path.is_dir():
        from refquant.formats import gptq

        if not gptq.is_gptq_checkpoint(path):
            raise ValueError(f"{path} is a directory without a GPTQ quantize_config.json or "
                             "quantization_config")
        report = _audit_gptq(path, ref, zero_convention)
    else:
        raise ValueError(f"{path} does not exist")
    report.reference = str(reference) if reference is not None else None
    if ref is not None and not any(t.rel_err is not None for t in report.tensors):
        report.notes.append("no tensor of the reference matched by name and shape")
    return report


__all__ = ["TensorAudit", "AuditReport", "audit_checkpoint", "load_reference", "CheckpointError",
           "CorruptCheckpoint", "ZERO_CONVENTIONS"]
