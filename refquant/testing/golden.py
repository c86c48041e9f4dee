"""Versioned golden vectors: the ``.npz`` files in ``refquant/testing/golden/``.

Each file holds one input, its spec (uniform cases) or GGML block format, and the expected codes,
scales, zero points, dequantized values (and GGUF bytes), computed one scalar at a time in exact
rational arithmetic by ``scripts/make_golden.py``, which does not import refquant (see
``refquant/testing/golden/PROVENANCE.md`` for the definitions and a content hash per case).
A change to the files bumps :data:`GOLDEN_VERSION`, recorded in every file.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import numpy as np

from refquant.schemes.spec import QParams, QuantSpec

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
GOLDEN_VERSION = 1


@dataclass(frozen=True)
class ReferenceCase:
    """One golden vector (see ``refquant/testing/golden/PROVENANCE.md``).

    Attributes
    ----------
    name : str
    scheme : str
        ``"uniform"`` (a :class:`QuantSpec` with min-max parameters) or ``"ggml"``.
    x : numpy.ndarray of float32
        The input.
    spec : QuantSpec or None
        Uniform cases: the spec (min-max calibration).
    fmt : str or None
        GGML cases: ``"Q8_0"``, ``"Q4_0"`` or ``"Q4_1"``.
    codes, scale, zero_point, dequantized : numpy.ndarray
        The expected results. GGML cases: ``codes`` as stored (int8 / uint8 nibbles) of shape
        ``[..., n_blocks, 32]``, ``scale`` the float16 ``d`` (and ``zero_point`` the float16
        ``m`` for Q4_1, else None).
    blocks : numpy.ndarray of uint8 or None
        GGML cases: the GGUF bytes.
    version : int
        Golden-set version the case belongs to.
    extra : dict
        Any other arrays stored in the file.
    """

    name: str
    scheme: str
    x: np.ndarray
    spec: QuantSpec | None
    fmt: str | None
    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    dequantized: np.ndarray
    blocks: np.ndarray | None
    version: int
    extra: dict = field(default_factory=dict)

    @property
    def qparams(self) -> QParams:
        """The uniform case's parameters as :class:`QParams`."""
        if self.scheme != "uniform":
            raise ValueError(f"case {self.name!r} is a GGML case; it has no QParams")
        return QParams(self.scale, self.zero_point)


def reference_cases(directory=None) -> list[str]:
    """Names of the golden cases available (the ``.npz`` files in ``refquant/testing/golden``).

    >>> "ggml_q4_0" in reference_cases()
    True
    """
    d = pathlib.Path(directory) if directory is not None else GOLDEN_DIR
    return sorted(p.stem for p in d.glob("*.npz"))


_SPEC_FIELDS = ("bits", "symmetric", "granularity", "axis", "group_size", "rounding", "restricted")
_KNOWN = {"scheme", "fmt", "x", "codes", "scale", "zero_point", "dequantized", "blocks",
          "version"} | set(_SPEC_FIELDS)


def load_case_file(path) -> ReferenceCase:
    """Read one golden ``.npz`` (never unpickling) into a :class:`ReferenceCase`.

    >>> case = load_case_file(GOLDEN_DIR / "ggml_q8_0.npz")
    >>> case.fmt, case.blocks.dtype
    ('Q8_0', dtype('uint8'))
    """
    path = pathlib.Path(path)
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    scheme = str(data["scheme"])
    spec = fmt = None
    if scheme == "uniform":
        spec = QuantSpec(bits=int(data["bits"]), symmetric=bool(data["symmetric"]),
                         granularity=str(data["granularity"]), axis=int(data["axis"]),
                         group_size=int(data["group_size"]) if int(data["group_size"]) > 0 else None,
                         rounding=str(data["rounding"]), restricted=bool(data["restricted"]))
    else:
        fmt = str(data["fmt"])
    return ReferenceCase(
        name=path.stem, scheme=scheme, x=data["x"], spec=spec, fmt=fmt, codes=data["codes"],
        scale=data["scale"], zero_point=data.get("zero_point"), dequantized=data["dequantized"],
        blocks=data.get("blocks"), version=int(data["version"]),
        extra={k: v for k, v in data.items() if k not in _KNOWN})


def reference_case(name: str) -> ReferenceCase:
    """The golden case ``name`` (see :func:`reference_cases` for the list).

    Examples
    --------
    >>> import refquant as rq
    >>> case = reference_case("uniform_int4_asym_group32")
    >>> bool((rq.quantize(case.x, case.qparams, case.spec) == case.codes).all())
    True
    """
    path = GOLDEN_DIR / f"{name}.npz"
    if not path.is_file():
        raise ValueError(f"unknown reference case {name!r}; available: {reference_cases()}")
    return load_case_file(path)
