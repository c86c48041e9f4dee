"""Results do not depend on the thread count: ``refquant quantize`` and ``refquant eval`` run in
subprocesses with 1 and with 2 BLAS and Numba threads write byte-identical checkpoints and print
the same perplexity (and the library's mean NLL agrees to the last bit).

Oracle: the run with one thread of each kind, where no reduction can be split; each setting is
checked to have reached OpenBLAS (threadpoolctl in the same environment). On the bundled model
with ``--n-blocks 2`` the second block's Hessians come from the first block's quantized forward
pass, so the forward matmuls, the Hessian products and GPTQ (whose inverse-Hessian factor runs
on one BLAS thread, :mod:`refquant.algorithms._gptq_fast`) all take part. ~25 s on 2 cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

THREADS = (1, 2)
QUANTIZE = ["quantize", "--method", "gptq", "--n-blocks", "2", "--calib-tokens", "256", "--seq-len", "128",
            "--no-progress"]
EVAL = ["--tokens", "384", "--seq-len", "128"]
NLL = """
import sys
import refquant as rq
from refquant.formats.gptq import load_any
from refquant.pipeline.data import evaluation_tokens
m = load_any(sys.argv[1])
print(rq.perplexity(m, evaluation_tokens(m.tokenizer, 384), seq_len=128).nll.hex())
"""
BLAS_THREADS = "import threadpoolctl; print([i['num_threads'] for i in threadpoolctl.threadpool_info()])"


def _env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _run(args, threads: int) -> str:
    done = subprocess.run([sys.executable, *args], env=_env(threads), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _cli(args, threads: int) -> str:
    return _run(["-m", "refquant.cli", *args], threads)


def _files(directory) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("threads")
    for t in THREADS:
        assert _run(["-c", "import numpy; " + BLAS_THREADS], t).strip() == f"[{t}]"
        _cli([*QUANTIZE, "-o", str(root / f"t{t}")], t)
    return {t: root / f"t{t}" for t in THREADS}


def test_quantize_writes_identical_bytes(checkpoints):
    a, b = (_files(checkpoints[t]) for t in THREADS)
    # 31 shards, the index, quantize_config.json and the Hugging Face files: config.json,
    # generation_config.json, tokenizer.json, tokenizer_config.json
    assert sorted(a) == sorted(b) and len(a) == 31 + 1 + 1 + 4
    differ = [name for name in a if a[name] != b[name]]
    assert differ == [], differ


def test_eval_prints_the_same_perplexity(checkpoints):
    timing = re.compile(r", [0-9.]+ s, [0-9]+ tokens/s\)")
    printed = [timing.sub(")", _cli(["eval", str(checkpoints[1]), *EVAL], t)) for t in THREADS]
    assert "perplexity: " in printed[0] and printed[0] == printed[1]
    nll = [_run(["-c", NLL, str(checkpoints[1])], t).strip() for t in THREADS]
    assert nll[0].startswith("0x1.") and nll[0] == nll[1]
