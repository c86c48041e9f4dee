"""How many calibration tokens make the demo's GPTQ rows stable across BLAS kernels?

OpenBLAS picks its kernels by CPU (AVX2 "Haswell" kernels on AMD Zen 3, AVX-512 "SkylakeX" ones
on Zen 4); they sum in different orders, and GPTQ's discrete rounding decisions then differ. This
script runs the demo's GPTQ rows (W4 g128 and W3 g128) at growing calibration sizes twice on the
same machine, once with OpenBLAS's default kernels and once forced to the Haswell ones
(``OPENBLAS_CORETYPE=Haswell``), and prints how far the two perplexities are apart at each size.
Evaluation is the demo's (2,048 tokens in windows of 256) so only the calibration changes.

Usage: python scripts/calib_stability.py [--sizes 2048,4096,8192] [--eval-tokens 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile


def run_demo(calib: int, eval_tokens: int, coretype: str | None, out: pathlib.Path) -> dict:
    env = dict(os.environ)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    cmd = [sys.executable, "-m", "refquant.cli", "demo", "--methods", "gptq",
           "--settings", "w4g128,w3g128", "--no-mixed", "--no-progress",
           "--calib-tokens", str(calib), "--eval-tokens", str(eval_tokens), "-o", str(out)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    rows = json.loads((out / "demo.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    return {f"{r['method']} W{r['bits']} g{r['group']}": r["ppl"] for r in rows if r["method"] != "float"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="2048,4096,8192")
    p.add_argument("--eval-tokens", type=int, default=2048)
    args = p.parse_args()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    print(f"CPU: {cpu}; AVX-512: {'avx512f' in flags}; VNNI: {'avx512_vnni' in flags}")
    print(f"{'calib tokens':>12}  {'row':<14} {'default':>9} {'Haswell':>9} {'apart':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            a = run_demo(n, args.eval_tokens, None, pathlib.Path(tmp) / f"d{n}")
            b = run_demo(n, args.eval_tokens, "Haswell", pathlib.Path(tmp) / f"h{n}")
            for k in a:
                print(f"{n:>12}  {k:<14} {a[k]:9.3f} {b[k]:9.3f} {100 * abs(a[k] - b[k]) / a[k]:6.2f}%",
                      flush=True)


if __name__ == "__main__":
    main()
