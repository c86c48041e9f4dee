"""The integer matmul core: one NumPy specification, a Numba CPU kernel and a numba.cuda kernel.

Every entry point takes ``backend=``:

===========  ===================================================================================
``"numpy"``  the specification (:mod:`refquant.kernels.reference`);
``"numba"``  Numba ``@njit(parallel=True)`` kernels (:mod:`refquant.kernels.cpu`);
``"cuda"``   numba.cuda kernels (:mod:`refquant.kernels.cuda`), on a GPU or under the CUDA
             simulator (``NUMBA_ENABLE_CUDASIM=1``);
``"auto"``   the fastest available: ``"cuda"`` on a real GPU, else ``"numba"``, else ``"numpy"``
             (:func:`auto_backend` says which).
===========  ===================================================================================

Integer results equal the specification bit for bit. An unknown or unavailable backend raises
``ValueError``; nothing falls back silently. Nothing is compiled until a kernel is first called.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import numpy as np

from refquant.kernels import reference
from refquant.kernels.reference import K_MAX
from refquant.schemes.spec import g_idx as group_index

BACKENDS = ("numpy", "numba", "cuda")

__all__ = ["int8_matmul", "uint8_int8_matmul", "w4_matmul", "w4a8_matmul", "backends",
           "auto_backend", "w4_tolerance", "w4a8_tolerance", "W4Weights", "K_MAX", "BACKENDS"]


@functools.lru_cache(maxsize=None)
def _numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


@functools.lru_cache(maxsize=None)
def _cuda_driver_loadable() -> bool:
    """Whether the CUDA driver library loads (the first thing numba.cuda needs for a real GPU).

    Tried before importing numba.cuda, which alone takes over a second: without a driver there
    is no GPU to find. ``NUMBA_CUDA_DRIVER`` (numba.cuda's own setting for the library's path)
    is honoured by leaving the decision to numba.cuda."""
    if os.environ.get("NUMBA_CUDA_DRIVER"):
        return True
    import ctypes
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


@functools.lru_cache(maxsize=None)
def _cuda_available() -> bool:
    """Whether numba.cuda finds a GPU or runs its simulator, probed once per process (both are
    settled when numba.cuda is first imported; ``backend="auto"`` asks on every call)."""
    if not _numba_available() or importlib.util.find_spec("numba.cuda") is None:
        return False
    if not _cuda_is_simulated() and not _cuda_driver_loadable():
        return False
    from numba import cuda
    try:
        return bool(cuda.is_available())
    except Exception:                                            # driver errors: not available
        return False


def _cuda_is_simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


#: backend -> whether it is usable in this process (each probe cached by its function)
_USABLE = {"numpy": lambda: True, "numba": _numba_available, "cuda": _cuda_available}


def backends(detail: bool = False):
    """The backends usable in this process, in the order ``"numpy"``, ``"numba"``, ``"cuda"``.

    ``"cuda"`` is listed when numba.cuda finds a GPU, or when the CUDA simulator is enabled.
    With ``detail=True``, a dict from each usable backend to a line saying what it runs here and
    why: for ``"numba"``, the int8 GEMM path chosen from the host CPU's features
    (:func:`refquant.kernels.cpu_features.int8_path`).
    """
    out = [name for name in BACKENDS if _USABLE[name]()]
    if not detail:
        return out
    info = {"numpy": "the specification (NumPy)"}
    if "numba" in out:
        from refquant.kernels import cpu_features
        path, why = cpu_features.int8_path()
        w4, w4_why = cpu_features.w4_path()
        w4a8, w4a8_why = cpu_features.w4a8_path()
        from refquant.kernels.cpu_w4 import BLAS_ROWS
        info["numba"] = (f"int8 GEMM path {path} ({why}); rows < 8: portable vector code; "
                         f"W4A16 path {w4} ({w4_why}; K and group size multiples of 32, "
                         f"else portable; {BLAS_ROWS} rows or more: dequantized blocks times "
                         f"BLAS); W4A8 path {w4a8} ({w4a8_why}; group size 32, 64 or "
                         f"a multiple of 128, else portable)")
    if "cuda" in out:
        info["cuda"] = "numba.cuda simulator" if _cuda_is_simulated() else "numba.cuda on a GPU"
    return info


def auto_backend() -> str:
    """The backend ``"auto"`` resolves to: a real GPU's ``"cuda"``, else ``"numba"``, else numpy.

    (The simulated GPU is far slower than NumPy, so ``"auto"`` never picks it.)
    """
    avail = backends()
    if "cuda" in avail and not _cuda_is_simulated():
        return "cuda"
    return "numba" if "numba" in avail else "numpy"


def _resolve(backend) -> str:
    if backend == "auto":
        return auto_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {('auto',) + BACKENDS}")
    if not _USABLE[backend]():                     # only the backend asked for is probed
        raise ValueError(f"backend {backend!r} is not available here (available: {backends()})")
    return backend


def int8_matmul(a, b, *, backend: str = "auto") -> np.ndarray:
    """Exact ``C = A B`` of int8 ``a[M, K]`` and int8 ``b[K, N]`` as int32 ``[M, N]``.

    .. math::  C_{mn} = \\sum_k A_{mk} B_{kn}

    Exact (no int32 overflow is possible) for ``K <= K_MAX = 131071``
    (``floor((2^31 - 1) / 2^14)``, since ``|A_{mk} B_{kn}| <= 2^14``); larger ``K`` raises
    ``ValueError``, as do dtypes other than int8, non-2-D or mismatched shapes, and an unknown or
    unavailable ``backend``. NumPy's own ``int8 @ int8`` wraps around in int8; this does not.

    Examples
    --------
    >>> import numpy as np, refquant as rq
    >>> a = np.array([[-128, -128]], np.int8); b = np.array([[-128], [-128]], np.int8)
    >>> rq.int8_matmul(a, b, backend="numpy")
    array([[32768]], dtype=int32)
    """
    a, b = reference.check_int8_operands(a, b)
    name = _resolve(backend)
    if name == "numpy":
        return reference.int8_matmul(a, b)
    if name == "numba":
        from refquant.kernels import cpu
        return cpu.int8_matmul(a, b)
    from refquant.kernels import cuda
    return cuda.int8_matmul(a, b)


def uint8_int8_matmul(a_u8, b, a_zero: int, b_zero: int = 0, *, backend: str = "auto") -> np.ndarray:
    """Exact ``(A_u - a_z)(B - b_z)`` in int32 for uint8 ``a_u8[M, K]`` and int8 ``b[K, N]``.

    The fast backends run the int8 kernel on ``A_u - 128`` (an int8, exactly) and add the
    zero-point terms from row and column sums (Jacob et al., CVPR 2018, arXiv:1712.05877, eq. 7):

    .. math::

        \\sum_k (a_{mk} - a_z)(b_{kn} - b_z) = \\sum_k \\tilde a_{mk} b_{kn}
          + (128 - a_z) \\sum_k b_{kn} - b_z \\sum_k a_{mk} + K a_z b_z ,
        \\quad \\tilde a = a - 128 ,

    using ``\\sum_k a_{mk} b_{kn} = \\sum_k \\tilde a_{mk} b_{kn} + 128 \\sum_k b_{kn}``. The
    correction costs O(MK + KN + MN) against the product's O(MKN). Every term is computed in
    wrapping int32; the result is exact because the bound on ``K`` (see
    :func:`refquant.kernels.reference.uint8_int8_matmul`) keeps the true value in int32.
    """
    a_u8, b = reference.check_int8_operands(a_u8, b, np.uint8, "a_u8")
    a_z = reference.check_zero_point(a_zero, 0, 255, "a_zero")
    b_z = reference.check_zero_point(b_zero, -128, 127, "b_zero")
    reference.check_k_zero_point(a_u8.shape[1], b_z)
    name = _resolve(backend)
    if name == "numpy":
        return reference.uint8_int8_matmul(a_u8, b, a_z, b_z)
    K = a_u8.shape[1]
    a_t = (a_u8.view(np.int8) ^ np.int8(-128))                  # a - 128 as int8 (flip the top bit)
    C = int8_matmul(a_t, b, backend=name)                               # [M, N] int32
    with np.errstate(over="ignore"):
        col = b.sum(axis=0, dtype=np.int32)                             # [N]  sum_k b_kn
        row = a_u8.sum(axis=1, dtype=np.int32)                          # [M]  sum_k a_mk
        C += np.int32(128 - a_z) * col[None, :]
        C -= np.int32(b_z) * row[:, None]
        C += np.int32(K * a_z * b_z)
    return C


def w4_tolerance(x, scales, zeros, group_size: int, packed_codes_max: int = 15) -> np.ndarray:
    """A bound on ``|w4_matmul(backend) - w4_matmul("numpy")|`` from float32 rounding, [M, N].

    Both sides sum ``K`` float32 terms in different orders and with the zero point applied at a
    different place; each differs from the exact value by at most ``gamma_K * S`` (Higham,
    "Accuracy and Stability of Numerical Algorithms", 2002, eq. 3.5) with
    ``gamma_K = K u / (1 - K u)``, ``u = 2^-24`` and
    ``S_mn = sum_k |x_mk| |s_{n,g(k)}| (15 + |z_{n,g(k)}|)`` (which dominates both
    ``sum |x w_hat|`` and the split sums ``sum |x q| + |z| sum |x|``). The bound returned is
    ``2 (gamma_{K+2}) S + tiny``: both sides' errors plus the per-group products.
    """
    x = np.asarray(x, np.float64)
    K = x.shape[1]
    g_idx = group_index(K, group_size)
    wmax = np.abs(np.asarray(scales, np.float64))[:, g_idx] * (
        packed_codes_max + np.abs(np.asarray(zeros, np.float64))[:, g_idx])      # [N, K]
    S = np.abs(x) @ wmax.T                                                       # [M, N]
    u = 2.0**-24
    n = K + 2
    gamma = n * u / (1 - n * u)
    return 2 * gamma * S + np.finfo(np.float32).tiny


def w4_matmul(x, packed, scales, zeros, group_size: int, *, backend: str = "auto") -> np.ndarray:
    """``y = x W_hat^T`` with 4-bit group-quantized weights dequantized inside the kernel.

    .. math::  y_{mn} = \\sum_k x_{mk}\\, s_{n,g(k)} \\big(q_{nk} - z_{n,g(k)}\\big),
               \\quad g(k) = \\lfloor k / \\text{group\\_size} \\rfloor

    Parameters
    ----------
    x : float32 [M, K]
        Activations (``M = 1`` is the decoding GEMV).
    packed : int32 [N, ceil(K/8)]
        ``refquant.pack(q, 4, "int32")`` of the codes ``q[N, K]`` (uint8 in [0, 15]) of
        ``W[N, K]`` (out, in): code ``8j + i`` at bits ``4i..4i+3`` of word ``j``.
    scales : float32 [N, G], zeros : int [N, G] in [0, 15]
        Per-group parameters, ``G = ceil(K / group_size)`` (the last group may be shorter);
        scales finite and > 0 (float32 like ``x``: no backend rounds them). Anything else
        raises ``ValueError`` naming the first offending value.
    group_size : int
    backend : "auto" | "numpy" | "numba" | "cuda"

    Returns
    -------
    float32 [M, N]. ``"numpy"`` dequantizes the whole weight and calls ``x @ W_hat.T`` (the
    specification); the kernels never materialize the whole ``W_hat`` and agree with it within
    :func:`w4_tolerance` (a float32 rounding bound). The ``"numba"`` kernels decode the codes
    per row of ``x`` (a GEMV); from :data:`refquant.kernels.cpu_w4.BLAS_ROWS` rows on they
    dequantize a few MiB of ``W_hat`` rows at a time and hand each block to BLAS.
    """
    x, packed, scales, zeros, _, _ = reference.check_w4_operands(x, packed, scales, zeros,
                                                                 group_size)
    return _w4_checked(x, packed, scales, zeros, group_size, backend)


def _w4_checked(x, packed, scales, zeros, group_size, backend):
    """:func:`w4_matmul` on operands already checked."""
    name = _resolve(backend)
    if name == "numpy":
        return reference.w4_matmul(x, packed, scales, zeros, group_size)
    if name == "numba":
        from refquant.kernels import cpu
        return cpu.w4_matmul(x, packed, scales, zeros, int(group_size))
    from refquant.kernels import cuda
    return cuda.w4_matmul(x, packed, scales, zeros, int(group_size))


def w4a8_tolerance(x, scales, zeros, group_size: int) -> np.ndarray:
    """A bound on ``|w4a8_matmul(backend) - w4a8_matmul("numpy")|`` from float32 rounding, [M, N].

    The integer block sums are exact on every backend; only the float combination differs. With
    ``(a, d) = quantize_act_q8(x)`` and
    ``S_mn = sum_b |s_{n,g(b)} d_mb| (15 + z_{n,g(b)}) sum_{k in b} |a_mk|`` (which dominates the
    absolute sum of every term either side adds, zero-point terms included), each side is
    within ``gamma_n S`` of the exact value (Higham 2002, eq. 3.5; ``u = 2^-24``), ``n`` counting
    the roundings along the longest chain of the kernels (the ``fl(s d)`` product, ``K / 8``
    word terms, ``G`` group terms, the horizontal sums): ``n = K / 8 + G + 20``. Returned:
    ``2 gamma_n S + tiny``.
    """
    a, d = reference.quantize_act_q8(x)
    M, K = a.shape
    nb = K // reference.ACT_BLOCK
    g_b = np.arange(nb) * reference.ACT_BLOCK // int(group_size)                 # [nb]
    abs_a = np.abs(a.astype(np.float64)).reshape(M, nb, -1).sum(axis=2)          # [M, nb]
    wmax = np.abs(np.asarray(scales, np.float64))[:, g_b] * (
        15 + np.abs(np.asarray(zeros, np.float64))[:, g_b])                     # [N, nb]
    S = (d.astype(np.float64) * abs_a) @ wmax.T                                  # [M, N]
    u = 2.0**-24
    n = K // 8 + np.asarray(scales).shape[1] + 20
    return 2 * (n * u / (1 - n * u)) * S + np.finfo(np.float32).tiny


def w4a8_matmul(x, packed, scales, zeros, group_size: int, *, backend: str = "auto") -> np.ndarray:
    """``y = x W_hat^T`` with the activations quantized to int8 per block of 32 and integer dot
    products (W4A8, the arithmetic of ggml's Q4_0 x Q8_0 ``mul_mat``).

    .. math::

        y_{mn} = \\sum_b s_{n,g(b)}\\, d_{mb}
                 \\Big(\\sum_{k \\in b} q_{nk} a_{mk} - z_{n,g(b)} \\sum_{k \\in b} a_{mk}\\Big),
        \\quad (a, d) = \\mathrm{Q8\\_0}(x)

    Parameters
    ----------
    x, packed, scales, zeros, group_size
        As :func:`w4_matmul`, with ``K % 32 == 0`` and ``group_size % 32 == 0`` (a group holds
        whole activation blocks); anything else raises ``ValueError`` naming the value.
    backend : "auto" | "numpy" | "numba"
        ``"numpy"`` is :func:`refquant.kernels.reference.w4a8_matmul`; ``"numba"`` runs the path
        of :func:`refquant.kernels.cpu_features.w4a8_path` (``vpdpbusd`` on AVX-512 VNNI; group
        sizes other than 32, 64 and multiples of 128 take the portable kernel). ``"auto"`` is
        ``"numba"`` where Numba is installed (there is no CUDA kernel: ``"cuda"`` raises).

    Returns
    -------
    float32 [M, N]; the activation codes and every integer dot product are the specification's
    bit for bit, the result within :func:`w4a8_tolerance` of it.

    Examples
    --------
    >>> import numpy as np, refquant as rq
    >>> from refquant.kernels import w4a8_matmul
    >>> x = np.full((1, 32), 2.0, np.float32)
    >>> packed = rq.pack(np.full((1, 32), 3, np.uint8), 4, "int32")
    >>> w4a8_matmul(x, packed, np.ones((1, 1), np.float32), np.ones((1, 1), np.int32), 32,
    ...             backend="numpy")
    array([[128.]], dtype=float32)
    """
    x, packed, scales, zeros, _, _ = reference.check_w4a8_operands(x, packed, scales, zeros,
                                                                   group_size)
    return _w4a8_checked(x, packed, scales, zeros, group_size, backend)


def _w4a8_checked(x, packed, scales, zeros, group_size, backend):
    """:func:`w4a8_matmul` on operands already checked."""
    if backend == "auto":
        backend = "numba" if _numba_available() else "numpy"
    if backend == "cuda":
        raise ValueError("w4a8_matmul has no 'cuda' kernel; use backend='numpy' or 'numba'")
    name = _resolve(backend)
    if name == "numpy":
        return reference.w4a8_matmul(x, packed, scales, zeros, group_size)
    from refquant.kernels import cpu_features, cpu_w4a8
    path = cpu_features.w4a8_path()[0]
    if not cpu_w4a8.supports(int(group_size)):
        path = "portable"
    return cpu_w4a8.w4a8_matmul(x, packed, scales, zeros, int(group_size), path)


@dataclasses.dataclass(frozen=True)
class W4Weights:
    """A 4-bit weight checked once, for repeated products (a model's linear layer).

    :func:`w4_matmul` checks every operand on every call: at a 4096 x 4096 GEMV with groups
    of 32 the scale and zero-point checks (``N G`` elements, several passes) cost about as
    much as the kernel. ``W4Weights.prepare`` runs those checks once and keeps the operands
    contiguous in the kernels' dtypes; :meth:`matmul` / :meth:`matmul_a8` then check only
    ``x`` and return exactly what :func:`w4_matmul` / :func:`w4a8_matmul` return.

    Attributes: ``packed`` int32 [N, ceil(K/8)], ``scales`` float32 [N, G], ``zeros`` int32
    [N, G], ``group_size``, ``K``.

    >>> import numpy as np, refquant as rq
    >>> w = W4Weights.prepare(rq.pack(np.full((2, 32), 3, np.uint8), 4, "int32"),
    ...                       np.ones((2, 1), np.float32), np.ones((2, 1), np.int32), 32, 32)
    >>> w.matmul(np.ones((1, 32), np.float32), backend="numpy")
    array([[64., 64.]], dtype=float32)
    """

    packed: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    group_size: int
    K: int

    @classmethod
    def prepare(cls, packed, scales, zeros, group_size: int, K: int) -> "W4Weights":
        """Check the operands as :func:`w4_matmul` does (for ``K`` in-features) and keep them."""
        probe = np.zeros((1, K), np.float32)
        _, packed, scales, zeros, _, _ = reference.check_w4_operands(probe, packed, scales, zeros,
                                                                     group_size)
        return cls(np.ascontiguousarray(packed, np.int32), np.ascontiguousarray(scales, np.float32),
                   np.ascontiguousarray(zeros, np.int32), int(group_size), int(K))

    def matmul(self, x, *, backend: str = "auto") -> np.ndarray:
        """:func:`w4_matmul` ``(x, ...)`` with these weights (only ``x`` is checked)."""
        x = reference.check_w4_x(x, self.K)
        return _w4_checked(x, self.packed, self.scales, self.zeros, self.group_size, backend)

    def matmul_a8(self, x, *, backend: str = "auto") -> np.ndarray:
        """:func:`w4a8_matmul` ``(x, ...)`` with these weights (``K`` and ``group_size``
        multiples of 32 are checked here; then only ``x``)."""
        x = reference.check_w4_x(x, self.K)
        if self.K % reference.ACT_BLOCK or self.group_size % reference.ACT_BLOCK:
            reference.check_w4a8_operands(x, self.packed, self.scales, self.zeros,
                                          self.group_size)
        return _w4a8_checked(x, self.packed, self.scales, self.zeros, self.group_size, backend)
