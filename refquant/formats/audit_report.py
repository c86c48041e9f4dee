"""The result of ``refquant inspect``: one :class:`TensorAudit` per tensor, an
:class:`AuditReport` per checkpoint (the fields are defined in :mod:`refquant.formats.audit`).

The relative error of a stored weight :math:`\\hat W` against a reference :math:`W` is

.. math:: \\mathrm{rel\\_err} = \\lVert \\hat W - W \\rVert_F / \\lVert W \\rVert_F

(:func:`relative_error`, in float64; the absolute error where :math:`W = 0`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class TensorAudit:
    """The audit of one tensor (every field is defined in :mod:`refquant.formats.audit`)."""

    name: str
    stored_type: str
    shape: tuple
    bits_per_weight: float
    group_size: int | None
    consistent: bool | None            # None: no checks apply (a float tensor) or unsupported
    checks: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    rel_err: float | None = None
    rtn_rel_err: float | None = None
    uniform_rel_err: float | None = None
    reference_name: str | None = None


@dataclass
class AuditReport:
    """All tensors of one checkpoint plus a summary."""

    path: str
    kind: str                          # "gguf" or "gptq"
    tensors: list
    reference: str | None = None
    notes: list = field(default_factory=list)

    @property
    def n_inconsistent(self) -> int:
        return sum(t.consistent is False for t in self.tensors)

    def summary(self) -> dict:
        quant = [t for t in self.tensors if t.group_size is not None]
        n_el = {t.name: int(np.prod(t.shape)) for t in quant}
        total = sum(n_el.values())
        bpw = sum(t.bits_per_weight * n_el[t.name] for t in quant) / total if total else None
        errs = [t.rel_err for t in self.tensors if t.rel_err is not None]
        by_type = {}
        for t in self.tensors:
            e = by_type.setdefault(t.stored_type, {"n_tensors": 0, "bits_per_weight": t.bits_per_weight,
                                                   "group_size": t.group_size, "n_consistent": 0})
            e["n_tensors"] += 1
            if e["group_size"] != t.group_size:
                e["group_size"] = "mixed"
            e["n_consistent"] += t.consistent is True
        return {"n_tensors": len(self.tensors), "n_quantized": len(quant), "by_type": by_type,
                "n_inconsistent": self.n_inconsistent,
                "quantized_bits_per_weight": bpw,
                "types": sorted({t.stored_type for t in self.tensors}),
                "n_compared": len(errs),
                "max_rel_err": max(errs) if errs else None}

    def to_dict(self) -> dict:
        d = {"path": self.path, "kind": self.kind, "reference": self.reference,
             "summary": self.summary(), "notes": list(self.notes),
             "tensors": [asdict(t) for t in self.tensors]}
        for t in d["tensors"]:
            t["shape"] = list(t["shape"])
        return d


def relative_error(w_hat: np.ndarray, w: np.ndarray) -> float:
    """The relative error ``||w_hat - w||_F / ||w||_F`` of a stored weight, in float64.

    Parameters
    ----------
    w_hat : ndarray
        The weight as stored (dequantized), any float dtype.
    w : ndarray
        The reference weight, the shape of ``w_hat``.

    Returns
    -------
    float
        The relative error; the absolute error ``||w_hat - w||_F`` where ``w`` is all zeros.

    Examples
    --------
    >>> import numpy as np
    >>> relative_error(np.array([3.0, 3.0]), np.array([3.0, 4.0]))     # 1 / 5
    0.2
    >>> relative_error(np.array([3.0, 4.0]), np.zeros(2))               # ||w|| = 0: absolute
    5.0
    """
    w64 = w.astype(np.float64)
    den = np.linalg.norm(w64)
    num = np.linalg.norm(w_hat.astype(np.float64) - w64)
    return float(num / den) if den > 0 else float(num)


__all__ = ["TensorAudit", "AuditReport", "relative_error"]
