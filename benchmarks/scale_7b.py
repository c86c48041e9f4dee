"""A Llama-2-7B-shaped model through the real commands: peak RSS and seconds per stage.

Builds a synthetic Hugging Face directory on disk (random float16 weights ~ N(0, 1/in), norms 1;
hidden 4096, 32 heads, FFN 11008, ``--blocks`` blocks of the 32; the bundled SmolLM2 tokenizer,
so the vocabulary is 49152 and the 32-block directory is 13.8 GB) under a temporary folder that
is removed afterwards, then runs, each in its own process:

1. ``refquant quantize DIR -o OUT --method gptq --bits 4 --group-size 128 --calib-tokens 1024
   --seq-len 256`` (every block, GPTQ W4 g128, 4 x 256 calibration tokens);
2. ``refquant eval OUT --tokens 1024 --seq-len 512`` (two windows of the evaluation text).

For each stage: wall seconds, CPU seconds (user + system, from ``getrusage``: on a shared
machine the wall time is not the program's) and the peak resident set size of the process, sampled from
``/proc/PID/status`` (``VmRSS`` every 0.1 s; the kernel's own high-water mark ``VmHWM`` of the
last sample is printed beside it), plus the disk the stage's output takes.

    python benchmarks/scale_7b.py [--blocks 32] [--calib-batch 4] [--threads 2] [--keep DIR]

Run it alone: it needs ~14 GB of disk for 32 blocks (``df -h`` of the temporary folder is
checked first) and, measured, well under 10 GiB of memory (see the README's scale table).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HIDDEN, HEADS, FFN, FULL_BLOCKS = 4096, 32, 11008, 32

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--blocks", type=int, default=FULL_BLOCKS, help="blocks of the model (default 32)")
parser.add_argument("--calib-tokens", type=int, default=1024)
parser.add_argument("--seq-len", type=int, default=256)
parser.add_argument("--calib-batch", type=int, default=4, help="calibration sequences per forward chunk")
parser.add_argument("--eval-tokens", type=int, default=1024)
parser.add_argument("--eval-seq-len", type=int, default=512)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--tmp", default=None, help="where to make the temporary folder (default: $TMPDIR)")
parser.add_argument("--keep", default=None, help="build into this folder and keep it (a folder "
                    "that already holds model/ from an earlier --keep run is reused)")
args = parser.parse_args()
os.environ.update({v: str(args.threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                   "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})

import numpy as np  # noqa: E402  (after the thread settings)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _timing import print_machine  # noqa: E402


def build(directory: pathlib.Path, n_blocks: int, seed: int = 0) -> int:
    """Write the synthetic model: one float16 shard per block plus one for the rest; bytes."""
    from safetensors.numpy import save_file

    from refquant.models.loaders import load_model

    tok = load_model().tokenizer                         # the bundled tokenizer (GGUF metadata)
    vocab = 49152
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)

    def matrix(n_out, n_in):
        W = rng.standard_normal((n_out, n_in), dtype=np.float32)
        W *= np.float32(1 / np.sqrt(n_in))
        return W.astype(np.float16)

    shards = [{"model.embed_tokens.weight": matrix(vocab, HIDDEN),
               "model.norm.weight": np.ones(HIDDEN, np.float16),
               "lm_head.weight": matrix(vocab, HIDDEN)}]
    files, weight_map, total = [], {}, 0
    n = n_blocks + 1
    for k in range(n):
        if k > 0:
            p = f"model.layers.{k - 1}."
            shards = [{p + "input_layernorm.weight": np.ones(HIDDEN, np.float16),
                       p + "post_attention_layernorm.weight": np.ones(HIDDEN, np.float16),
                       **{p + f"self_attn.{x}_proj.weight": matrix(HIDDEN, HIDDEN) for x in "qkvo"},
                       p + "mlp.gate_proj.weight": matrix(FFN, HIDDEN),
                       p + "mlp.up_proj.weight": matrix(FFN, HIDDEN),
                       p + "mlp.down_proj.weight": matrix(HIDDEN, FFN)}]
        name = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file(shards[0], str(directory / name), metadata={"format": "pt"})
        total += sum(t.nbytes for t in shards[0].values())
        weight_map.update({t: name for t in shards[0]})
        files.append(name)
        shards = None
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
           "intermediate_size": FFN, "num_hidden_layers": n_blocks, "num_attention_heads": HEADS,
           "num_key_value_heads": HEADS, "vocab_size": vocab, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "tie_word_embeddings": False, "max_position_embeddings": 4096,
           "torch_dtype": "float16", "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    tok.save(directory)
    return total


def _status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def run_stage(label: str, argv: list[str]) -> tuple[float, float, int, int, str]:
    """Run ``argv``; (wall seconds, CPU seconds, peak sampled VmRSS, last VmHWM, stdout tail)."""
    import resource

    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, hwm = 0, 0
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        s = _status(proc.pid)
        peak, hwm = max(peak, s.get("VmRSS", 0)), max(hwm, s.get("VmHWM", 0))
        time.sleep(0.1)
    reader.join()
    dt = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru.ru_utime + ru.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    if proc.returncode != 0:
        sys.stdout.write("".join(lines[-30:]))
        raise SystemExit(f"{label} failed with exit code {proc.returncode}")
    return dt, cpu, peak, hwm, "".join(lines[-6:])


def disk(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    print_machine()
    base = pathlib.Path(args.keep) if args.keep else pathlib.Path(tempfile.mkdtemp(
        prefix="refquant_scale_", dir=args.tmp))
    need = (2 * 49152 * HIDDEN + args.blocks * (4 * HIDDEN ** 2 + 3 * HIDDEN * FFN)) * 2
    free = shutil.disk_usage(base if base.exists() else base.parent).free
    print(f"model: {args.blocks} of {FULL_BLOCKS} Llama-2-7B-shaped blocks, float16, "
          f"{need / 1e9:.1f} GB; {free / 1e9:.0f} GB free at {base}")
    if need * 1.4 > free:
        raise SystemExit("not enough disk for the model and its checkpoint; use --blocks or --tmp")
    src, out = base / "model", base / "gptq"
    cli = [sys.executable, "-m", "refquant.cli"]
    try:
        t0 = time.perf_counter()
        if args.keep and (src / "config.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            size = disk(src)
            if json.loads((src / "config.json").read_text())["num_hidden_layers"] != args.blocks:
                raise SystemExit(f"{src} has another number of blocks than --blocks {args.blocks}")
        else:
            size = build(src, args.blocks)
        rows = [("build (write float16 shards)", time.perf_counter() - t0, None, None, None, size)]
        q = cli + ["quantize", str(src), "-o", str(out), "--method", "gptq", "--bits", "4",
                   "--group-size", "128", "--calib-tokens", str(args.calib_tokens), "--seq-len",
                   str(args.seq_len), "--calib-batch", str(args.calib_batch), "--no-progress"]
        dt, cpu, peak, hwm, tail = run_stage("quantize", q)
        rows.append((f"quantize (GPTQ W4 g128, {args.calib_tokens} tokens)", dt, cpu, peak, hwm, disk(out)))
        print(tail, end="")
        e = cli + ["eval", str(out), "--tokens", str(args.eval_tokens), "--seq-len", str(args.eval_seq_len)]
        dt, cpu, peak, hwm, tail = run_stage("eval", e)
        rows.append((f"eval ({args.eval_tokens} tokens, windows of {args.eval_seq_len})", dt, cpu, peak, hwm, None))
        print(tail, end="")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\n{'stage':48s} {'wall s':>8s} {'CPU s':>8s} {'peak RSS (sampled)':>19s} {'VmHWM':>10s} "
          f"{'disk':>9s}")
    for label, dt, cpu, peak, hwm, size in rows:
        gib = (lambda b: "-" if b is None else f"{b / 2**30:.2f} GiB")
        print(f"{label:48s} {dt:8.1f} {'-' if cpu is None else f'{cpu:.1f}':>8s} {gib(peak):>19s} "
              f"{gib(hwm):>10s} {'-' if size is None else f'{size / 1e9:.2f} GB':>9s}")
    q_dt, q_cpu = rows[1][1], rows[1][2]
    print(f"quantize per block: {q_dt / args.blocks:.1f} s wall, {q_cpu / args.blocks:.1f} s CPU "
          f"(incl. start-up and the float rest); x{FULL_BLOCKS} blocks: ~"
          f"{q_dt / args.blocks * FULL_BLOCKS / 60:.0f} min wall (valid on a quiet machine only)")


if __name__ == "__main__":
    main()
