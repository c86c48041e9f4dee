"""Numba CPU kernels with the signatures and results of :mod:`refquant.kernels.reference`.

One module per kernel, each with its equations and its own cached builders:

- :mod:`refquant.kernels.cpu_int8`: ``int8_matmul``, exact int32 ``C = A B`` of int8 operands
  (a GotoBLAS-blocked packed form with a ``pmaddwd`` micro-kernel in LLVM vector IR, and a row
  form for ``M < 8``), bit for bit equal to the specification; on a CPU with AVX-512 VNNI or
  AVX-VNNI the packed form is :mod:`refquant.kernels.cpu_int8_vnni`'s ``vpdpbusd`` kernel
  (512- or 256-bit) instead, chosen at run time by :mod:`refquant.kernels.cpu_features`
  (``rq.backends(detail=True)`` says which);
- :mod:`refquant.kernels.cpu_w4`: ``w4_matmul``, ``y = x W_hat^T`` with the 4-bit codes
  unpacked inside the kernel and the zero point taken out of the inner sum (the ``vpermps``
  table kernel of :mod:`refquant.kernels.cpu_w4_avx512` on AVX-512), or, from
  ``cpu_w4.BLAS_ROWS`` rows of ``x`` on, blocks of ``W_hat`` rows times BLAS; within
  :func:`refquant.kernels.w4_tolerance` of the specification.

Nothing is compiled at import (nor when this module is imported): a kernel is built and compiled
on its first call, and Numba caches the machine code on disk next to its module. Shared LLVM IR
helpers live in :mod:`refquant.kernels._llvm`.
"""

from __future__ import annotations

from refquant.kernels.cpu_int8 import int8_matmul
from refquant.kernels.cpu_w4 import w4_matmul

__all__ = ["int8_matmul", "w4_matmul"]
