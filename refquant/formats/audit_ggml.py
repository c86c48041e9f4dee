"""``refquant inspect``'s checks of the GGML block types beyond Q8_0/Q4_0/Q4_1 (see
:mod:`refquant.formats.audit` for the report they go into): any type registered in
:data:`refquant.formats.ggml.TYPES` is decoded and checked, with the per-block checks its layout
allows; a type added to the registry needs nothing here to be audited."""

from __future__ import annotations

import numpy as np

from refquant.formats import ggml


def _block_checks(fmt: str, rows: np.ndarray) -> dict:
    """The per-block consistency checks of the other registered types that have one."""
    if fmt in ("Q5_0", "Q5_1"):
        from refquant.formats.ggml.q5 import unpack_q5

        d, m, _ = unpack_q5(rows, fmt)
        ok = np.isfinite(d.astype(np.float32)).all() & (m is None or np.isfinite(m.astype(np.float32)).all())
        checks = {"scales_finite": bool(ok)}
        if fmt == "Q5_1":                                         # (max - min) / 31 >= 0
            checks["scale_sign"] = bool((d.astype(np.float32)[np.isfinite(d)] >= 0).all())
        return checks
    if fmt in ("Q4_K", "Q5_K"):
        from refquant.formats.ggml.kquants import unpack_kq

        d, dmin, _, _, _ = unpack_kq(rows.reshape(-1, ggml.block_bytes(fmt)), fmt)
        return {"scales_finite": bool(np.isfinite(d.astype(np.float32)).all()
                                      & np.isfinite(dmin.astype(np.float32)).all())}
    if fmt == "Q6_K":
        from refquant.formats.ggml.kquants_sym import unpack_q6_k

        d, _, _ = unpack_q6_k(rows.reshape(-1, ggml.block_bytes(fmt)))
        return {"scales_finite": bool(np.isfinite(d.astype(np.float32)).all())}
    if fmt == "Q8_K":                            # bsums are the sums of 16 codes; -128 unused
        raw = rows.reshape(-1, ggml.block_bytes(fmt))
        qs = np.ascontiguousarray(raw[:, 4:260]).view(np.int8)
        bsums = np.ascontiguousarray(raw[:, 260:292]).view("<i2")
        return {"scales_finite": bool(np.isfinite(np.ascontiguousarray(raw[:, :4]).view("<f4")).all()),
                "codes_in_range": bool((qs != -128).all()),
                "bsums": bool(np.array_equal(qs.reshape(-1, 16, 16).astype(np.int32).sum(-1), bsums))}
    return {}


#: types whose reference quantizer reproduces its own output from the decoded values (rounding
#: to a grid fixed by the block's extremes); for the searched types a re-quantization may pick
#: another scale, so ``fixed_point`` would say nothing about where a file came from
_FIXED_POINT_TYPES = ("Q5_0", "Q5_1")


def check_block_type_tensor(fmt: str, data: np.ndarray, shape: tuple):
    """Checks and info of one tensor of any other registered GGML block type (the K-quants,
    IQ4, MXFP4 ...): its decoded values, the type's block checks, bits per weight in the audit."""
    rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
    checks = {"byte_length": True, **_block_checks(fmt, rows)}
    with np.errstate(all="ignore"):
        w_hat = ggml.dequantize(rows, fmt).reshape(shape)
    checks["values_finite"] = bool(np.isfinite(w_hat).all())
    nb = ggml.block_bytes(fmt)
    info = {"n_blocks": int(rows.size // nb)}
    if checks["values_finite"] and fmt in _FIXED_POINT_TYPES:
        again = ggml.quantize(w_hat.reshape(rows.shape[0], -1), fmt)
        info["fixed_point"] = float((again.reshape(-1, nb) == rows.reshape(-1, nb)).all(axis=1).mean())
    return checks, info, w_hat


__all__ = ["check_block_type_tensor"]
