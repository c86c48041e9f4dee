"""The linear layer of a GPTQ checkpoint on its packed codes: the W4A16 kernel, no float weights.

``refquant eval`` and ``refquant generate`` on a 4-bit GPTQ checkpoint pass
:func:`checkpoint_linear`'s callable as the forward pass's ``linear``
(:mod:`refquant.models.llama`, "The linear protocol"). Each quantized layer is read once, when
the forward pass first reaches it (:func:`refquant.formats.gptq.checkpoint_layers`), converted
to the operands of :func:`refquant.kernels.w4_matmul` and checked once
(:class:`refquant.kernels.W4Weights`); every later call multiplies by the packed codes. Layers
stored as float tensors go through the model's float32 weights as before.

From the checkpoint's layout to the kernel's
--------------------------------------------
The checkpoint (:mod:`refquant.formats.gptq`) dequantizes as

.. math:: \\hat W_{n,k} = \\mathrm{fp32}(s_{g(k),n}) \\, (q_{n,k} - z_{g(k),n}),
          \\qquad g(k) = \\texttt{g\\_idx}[k],

the kernel as :math:`s'_{n,\\lfloor k/\\text{gs}\\rfloor} (q'_{n,k} - z'_{n,\\lfloor k/\\text{gs}\\rfloor})`.
:func:`w4_operands` maps one to the other exactly:

* ``qweight`` packs code ``k`` at bits ``4(k % 8)`` of word ``k // 8`` along the input dimension
  (column ``n`` of ``qweight [K/8, N]``), which is the kernel's packing of row ``n``; the codes
  are unpacked by :func:`~refquant.formats.gptq_layers.unpack_layer` and packed again with
  :func:`refquant.schemes.packing.pack` (after the permutation below, if any);
* zero points are the values themselves (``unpack_layer`` adds v1's 1 back, modulo 16; v2 stores
  them as is), transposed to ``[N, G]``; scales are float16, widened to float32 exactly;
* one group per output channel (``group_size = -1``) is the kernel's ``group_size = K``;
* ``g_idx``: where it is ``k // group_size`` the columns stay as they are. An act-order
  checkpoint stores the group of each column in processing order (``g_idx[k]`` = position of
  ``k`` in the order ``// group_size``); with :math:`\\pi` = ``argsort(g_idx)`` (stable) the
  columns :math:`\\pi` have ``g_idx[\\pi[j]] = j // group_size``, so

  .. math:: y = x \\hat W^T = x_{:,\\pi} \\, (\\hat W_{:,\\pi})^T

  is the kernel on the permuted codes and the activation columns permuted once per call (exact:
  a permutation moves values, it rounds nothing). A ``g_idx`` that is not a permutation of
  contiguous groups (group sizes that differ from ``group_size``) is refused, and so is any bit
  width but 4: such a layer is dequantized to float32, and :meth:`CheckpointLinear.describe`
  says which layers and why.

The kernel's result equals ``x @ W_hat.T`` of the dequantized path within
:func:`refquant.kernels.w4_tolerance` (it sums in another order); tests/test_gptq_linear.py pins
it on checkpoints written by ``refquant quantize`` (v1 and v2, groups of 32 and 128, act order
on and off).
"""

from __future__ import annotations

import pathlib

import numpy as np

from refquant.formats.gptq import checkpoint_layers, is_gptq_checkpoint
from refquant.formats.gptq_layers import PackedLayer
from refquant.kernels import W4Weights, auto_backend, cpu_features
from refquant.models.llama import default_linear
from refquant.schemes.packing import pack
from refquant.schemes.spec import g_idx as group_index


def w4_operands(layer: PackedLayer) -> tuple[W4Weights, np.ndarray | None] | str:
    """The kernel operands of one stored layer: ``(weights, perm)``, or why there are none.

    ``weights`` is a :class:`~refquant.kernels.W4Weights` of the codes ``q[:, perm]`` with
    scales ``float32(s).T`` and zero points ``z.T`` (``[N, G]``), so that
    ``weights.matmul(x[:, perm])`` is ``x @ W_hat.T`` (:func:`~refquant.formats.gptq_layers.dequantize_layer`'s
    ``W_hat``) within :func:`refquant.kernels.w4_tolerance`; ``perm`` is ``None`` where
    ``g_idx = k // group_size`` already (see the module docstring). A string is the reason the
    layer cannot run the kernel (a bit width other than 4, a ``g_idx`` that is no permutation of
    contiguous groups).

    Examples
    --------
    Groups of 4 interleaved (act order): the even columns form group 1, the odd ones group 0.

    >>> import numpy as np
    >>> layer = PackedLayer(np.full((1, 8), 3, np.uint8), np.ones((2, 1), np.float16),
    ...                     np.ones((2, 1), np.int32), np.array([1, 0] * 4, np.int32), 4, 4)
    >>> weights, perm = w4_operands(layer)
    >>> perm
    array([1, 3, 5, 7, 0, 2, 4, 6])
    >>> weights.matmul(np.ones((1, 8), np.float32)[:, perm], backend="numpy")
    array([[16.]], dtype=float32)
    """
    if layer.bits != 4:
        return f"{layer.bits}-bit codes (the W4 kernel takes 4-bit codes)"
    N, K = layer.codes.shape
    gs = K if layer.group_size == -1 else int(layer.group_size)
    want = group_index(K, gs)                                           # [K] k // gs
    perm = None
    if not np.array_equal(layer.g_idx, want):
        perm = np.argsort(layer.g_idx, kind="stable")                   # [K] columns by group
        if not np.array_equal(layer.g_idx[perm], want):
            return (f"g_idx is not a permutation of contiguous groups of {gs} columns "
                    "(static or irregular groups)")
    codes = layer.codes if perm is None else layer.codes[:, perm]       # [N, K] uint8
    G = int(want[-1]) + 1
    weights = W4Weights.prepare(pack(np.ascontiguousarray(codes), 4, "int32"),      # [N, K/8]
                                layer.scales[:G].T.astype(np.float32),             # [N, G]
                                layer.zeros[:G].T.astype(np.int32), gs, K)         # [N, G]
    return weights, perm


class CheckpointLinear:
    """The forward pass's ``linear(name, x)`` for a GPTQ checkpoint (see the module docstring).

    A quantized 4-bit layer runs :meth:`refquant.kernels.W4Weights.matmul` on its packed codes
    (prepared when first reached and kept: about an eighth of the float32 weight); any other
    layer multiplies by ``model.weights[name + ".weight"]`` (a GPTQ layer dequantized to float32
    when read). ``backend`` as in :func:`refquant.kernels.w4_matmul`.
    """

    def __init__(self, model, directory, *, backend: str = "auto"):
        self._readers, _ = checkpoint_layers(directory)
        self._float = default_linear(model)
        self._backend = backend
        self._prepared: dict[str, tuple[W4Weights, np.ndarray | None] | str] = {}

    def __call__(self, name: str, x: np.ndarray) -> np.ndarray:
        op = self._prepared.get(name)
        if op is None and name in self._readers:
            op = self._prepared[name] = w4_operands(self._readers[name]())
        if op is None or isinstance(op, str):
            return self._float(name, x)
        weights, perm = op
        x2 = x.reshape(-1, x.shape[-1])                                 # [M, K]
        if perm is not None:
            x2 = x2[:, perm]                                            # columns in group order
        y = weights.matmul(np.ascontiguousarray(x2, np.float32), backend=self._backend)
        return y.reshape(*x.shape[:-1], y.shape[1])                     # [..., N]

    def kernel_layers(self) -> list[str]:
        """The layers that ran (or will run) the kernel, among those reached so far."""
        return sorted(n for n, op in self._prepared.items() if not isinstance(op, str))

    def float_layers(self) -> dict[str, str]:
        """``{layer: reason}`` of the quantized layers reached so far that were dequantized."""
        return {n: op for n, op in sorted(self._prepared.items()) if isinstance(op, str)}

    def describe(self) -> str:
        """One line: which path the quantized layers reached so far ran, and why."""
        n_kernel, fallback = len(self.kernel_layers()), self.float_layers()
        if n_kernel == 0:
            why = "; ".join(sorted(set(fallback.values()))) or "no quantized layer was reached"
            return f"linear layers: dequantized to float32 ({why})"
        shapes = {(op[0].K, op[0].group_size) for op in self._prepared.values() if not isinstance(op, str)}
        line = (f"linear layers: packed W4 kernel ({kernel_path(self._backend, shapes)}) "
                f"for {n_kernel} layers")
        if fallback:
            reasons = "; ".join(sorted(set(fallback.values())))
            line += f"; {len(fallback)} dequantized to float32 ({reasons})"
        return line


def kernel_path(backend: str = "auto", shapes=()) -> str:
    """The W4A16 kernel that runs here, in words: the backend and, on the CPU, its path
    (:func:`refquant.kernels.cpu_features.w4_path`); ``shapes``, ``(K, group_size)`` pairs of
    the layers, say whether the ``avx512`` path covers them all (else some run ``portable``)."""
    name = auto_backend() if backend == "auto" else backend
    if name != "numba":
        return f"backend {name}"
    path, why = cpu_features.w4_path()
    line = f"numba, CPU path {path}: {why}"
    from refquant.kernels import cpu_w4, cpu_w4_avx512
    if path == "avx512" and not all(cpu_w4_avx512.supports(K, gs) for K, gs in shapes):
        line += "; K or group size not a multiple of 32: portable"
    return line + (f"; products of {cpu_w4.BLAS_ROWS} rows or more: dequantized blocks of "
                   f"rows times BLAS")


def checkpoint_linear(model, *, dequantize: bool = False, backend: str = "auto"
                      ) -> tuple[CheckpointLinear | None, str | None]:
    """``(linear, line)`` for the commands: a :class:`CheckpointLinear` for a model read from a
    GPTQ checkpoint (``model.source`` a checkpoint directory), else ``(None, None)``.

    With ``dequantize`` the forward pass keeps the float32 path (``linear`` ``None``) and ``line``
    says so; otherwise ``line`` is ``None`` and :meth:`CheckpointLinear.describe` gives it after
    the run (a layer's path is known once the layer is read).
    """
    source = pathlib.Path(model.source) if model.source is not None else None
    if source is None or not source.is_dir() or not is_gptq_checkpoint(source):
        return None, None
    if dequantize:
        return None, "linear layers: dequantized to float32 (--dequantize)"
    return CheckpointLinear(model, source, backend=backend), None


__all__ = ["w4_operands", "CheckpointLinear", "checkpoint_linear", "kernel_path"]
