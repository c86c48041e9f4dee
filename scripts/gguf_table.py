"""The bundled model's perplexity in llama.cpp's GGUF types, quantized four ways, at 16k tokens.

Rows ``METHOD:TYPE`` for TYPE in Q4_0, Q4_K_M, Q3_K_M, Q2_K, IQ4_XS (the mix as ``llama-quantize``
makes it: :func:`refquant.formats.gguf_mix.tensor_types`), plus ``float``:

============  =================================================================================
``rtn``       llama.cpp's own quantizers without an importance matrix
              (:func:`refquant.formats.gguf_export.export_gguf`)
``imatrix``   the same with the importance matrix of the calibration text
              (:func:`refquant.pipeline.imatrix.collect_imatrix`; the mix rules that depend on
              having one apply)
``gptq``      GPTQ onto each tensor's block grid, its scales fixed by the imatrix quantizer,
              columns in act-order (:func:`refquant.pipeline.gguf_methods.export_gguf_method`)
``awq``       AWQ's scales searched with each tensor's imatrix quantizer, folded, then that
              quantizer (importance ``w / s^2``); the searches on the first
              ``AWQ_SEARCH_SEQS`` calibration sequences at ``AWQ_GRID`` grid points
============  =================================================================================

Every row that uses the importance matrix uses the same one, so ``gptq`` and ``awq`` differ from
``imatrix`` only by the method.

Each row writes a real GGUF file (kept in ``<output>/files`` with ``--keep``, for
``scripts/llamacpp_crosscheck.py --files``), reads it back with :func:`refquant.load_model` (the
``gguf`` package's decoder, so what is evaluated is what the file holds) and evaluates it on the
same tokens of the evaluation split in windows of 512. Bits per weight count every tensor of the
file (its tensor data bytes over the model's values), as llama.cpp reports them.

The calibration text (32 x 512 tokens of the calibration split) is the same for every method
that uses one: GPTQ needs several times more tokens than a layer has inputs (1,536 for
``ffn_down``), or it fits the calibration set and loses on held-out text.

Rows are kept in ``<output>/gguf_table.json`` as they finish; ``--only`` runs a subset and adds it
to what is there, so the table can be measured in several shorter runs.

Usage::

    python scripts/gguf_table.py [-o results/gguf] [--only rtn:Q4_0,imatrix:Q4_0] [--keep]

``--n-blocks N`` cuts the model to its first N blocks (a quick check that a row runs; its
figures are not the table's).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

import refquant as rq
from refquant.pipeline.data import calibration_batch, evaluation_tokens

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _tables import RowFile, cpu_name, ppl_table, selected_rows  # noqa: E402

SIZES = dict(eval_tokens=16384, seq_len=512, calib_tokens=16384, calib_seq_len=512)
TYPES = ("Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS")
METHODS = ("rtn", "imatrix", "gptq", "awq")
AWQ_SEARCH_SEQS = 4     # AWQ's searches on 4 x 512 tokens (as quality_targets.py); all 32 onward
#: AWQ's grid points of alpha and of the clipping search (``refquant demo``'s default; 20 doubles
#: the search time, ~15 min per mix on 2 cores at these sizes)
AWQ_GRID = 10
ROWS = ["float"] + [f"{m}:{t}" for t in TYPES for m in METHODS]


class Inputs:
    """The model, the evaluation tokens and (computed once, on first use) the calibration
    batch and its importance matrix."""

    def __init__(self, eval_tokens: int, n_blocks: int | None = None):
        self.model = rq.load_model(None)
        if n_blocks is not None:                             # a quick check, not the table
            import dataclasses
            cfg = dataclasses.replace(self.model.config, n_layers=n_blocks)
            self.model = dataclasses.replace(self.model, config=cfg)
        self.ev = np.asarray(evaluation_tokens(self.model.tokenizer, eval_tokens)).reshape(-1)
        self._calib = self._imatrix = None

    @property
    def calib(self) -> np.ndarray:
        if self._calib is None:
            self._calib = calibration_batch(self.model.tokenizer, SIZES["calib_tokens"],
                                            SIZES["calib_seq_len"], 0)
        return self._calib

    @property
    def imatrix(self):
        if self._imatrix is None:
            from refquant.pipeline.imatrix import collect_imatrix
            self._imatrix = collect_imatrix(self.model, self.calib,
                                            dataset="refquant calibration split")
        return self._imatrix


def write_file(method: str, mix: str, inputs: Inputs, path: pathlib.Path) -> pathlib.Path:
    """Write the GGUF file of one row."""
    from refquant.formats.gguf_export import export_gguf

    if method == "rtn":
        return export_gguf(inputs.model, path, mix)
    if method == "imatrix":
        return export_gguf(inputs.model, path, mix, imatrix=inputs.imatrix,
                           imatrix_source="calibration split")
    if method in ("gptq", "awq"):
        from refquant.pipeline.gguf_methods import export_gguf_method

        def progress(r):
            print(f"  {method}:{mix} block {r.block + 1}/{r.n_blocks} {r.seconds:.0f} s",
                  flush=True)
        return export_gguf_method(inputs.model, path, mix, inputs.calib, method=method,
                                  imatrix=inputs.imatrix, act_order=True,
                                  awq_max_seqs=AWQ_SEARCH_SEQS,
                                  awq_kw=dict(n_grid=AWQ_GRID, clip_grid=AWQ_GRID),
                                  imatrix_source="calibration split", progress=progress)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def tensor_bits_per_weight(path) -> float:
    """8 x (bytes of every tensor's data) / (number of values) of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    n_values = sum(int(t.n_elements) for t in reader.tensors)
    return 8 * n_bytes / n_values


def measure(key: str, inputs: Inputs, files: pathlib.Path) -> dict:
    """One row: ``dict(key, method, type, bits_per_weight, ppl, seconds)``."""
    t = time.perf_counter()
    if key == "float":
        view, bpw, method, mix = inputs.model, 16.0, "float", None
    else:
        method, mix = key.split(":")
        path = write_file(method, mix, inputs, files / f"smollm2-{method}-{mix}.gguf")
        view, bpw = rq.load_model(path), tensor_bits_per_weight(path)
    ppl = rq.perplexity(view, inputs.ev, seq_len=SIZES["seq_len"]).ppl
    return dict(key=key, method=method, type=mix, bits_per_weight=bpw, ppl=ppl,
                seconds=time.perf_counter() - t)


def format_table(rows) -> str:
    return ppl_table(rows, ROWS, [("type", 8, lambda r: r["type"] or "-"),
                                  ("method", 8, lambda r: r["method"])])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", default="results/gguf")
    ap.add_argument("--only", default=",".join(ROWS), help=f"comma-separated subset of {ROWS}")
    ap.add_argument("--eval-tokens", type=int, default=SIZES["eval_tokens"])
    ap.add_argument("--keep", action="store_true", help="keep the GGUF files in <output>/files")
    ap.add_argument("--n-blocks", type=int, default=None,
                    help="cut the model to its first N blocks (a quick check, not the table)")
    args = ap.parse_args(argv)
    keys = selected_rows(ap, args.only, ROWS)
    out = pathlib.Path(args.output)
    store = RowFile(out / "gguf_table.json",
                    dict(eval_tokens=args.eval_tokens, n_blocks=args.n_blocks,
                         seq_len=SIZES["seq_len"], calib_tokens=SIZES["calib_tokens"]))
    files = out / "files" if args.keep else pathlib.Path(tempfile.mkdtemp(prefix="rq-gguf-"))
    files.mkdir(parents=True, exist_ok=True)

    inputs = Inputs(args.eval_tokens, args.n_blocks)
    print(f"model: {inputs.model.source}; evaluation {inputs.ev.size} tokens in windows of "
          f"{SIZES['seq_len']}; calibration {SIZES['calib_tokens']} tokens; CPU: {cpu_name()}",
          flush=True)
    for key in keys:
        r = measure(key, inputs, files)
        store.save(r)
        print(f"{key}: perplexity {r['ppl']:.3f}, {r['bits_per_weight']:.3f} bits/w "
              f"({r['seconds']:.0f} s)", flush=True)
        if not args.keep and key != "float":
            for f in files.glob("*.gguf"):
                f.unlink()
    print()
    print(format_table(list(store.rows.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
