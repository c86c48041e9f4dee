"""``refquant inspect PATH [--reference FLOAT_CHECKPOINT] [--json]``: check a quantized
checkpoint (GGUF file or GPTQ-format directory) tensor by tensor; see :mod:`refquant.formats.audit`.

Exit status: 0 if every tensor is consistent, 1 if any is not (e.g. a NaN scale), 2 if the
checkpoint cannot be read: truncated, malformed (bad JSON, misplaced tensor data, metadata that
disagrees with the tensors) or incomplete; the message names the file and tensor or key.
"""

from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    parser.add_argument("path", nargs="?", default=None,
                        help="a .gguf file or a GPTQ checkpoint directory (default: the bundled "
                             "SmolLM2-135M Q4_1 GGUF)")
    parser.add_argument("--reference", metavar="FLOAT_CHECKPOINT", default=None,
                        help="float weights (GGUF, safetensors file or directory) to measure the "
                             "relative error against, and refquant's RTN at the same settings")
    parser.add_argument("--zero-convention", choices=("auto", "gptq", "gptq_v2"), default="auto",
                        help="GPTQ qzeros convention: v1 'gptq' stores zero-1, 'gptq_v2' stores "
                             "zero; auto: from quantize_config.json, else detected")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--all", action="store_true",
                        help="list every tensor in the table (default: quantized tensors, plus "
                             "any inconsistent one)")


def _fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def format_table(report, show_all: bool = False) -> str:
    """The report as a fixed-width text table plus a summary."""
    rows = [t for t in report.tensors if show_all or t.group_size is not None or t.consistent is False]
    has_ref = report.reference is not None
    head = f"{'tensor':<34} {'type':<10} {'shape':<14} {'bpw':>6} {'group':>5} {'consistent':<10}"
    if has_ref:
        head += f" {'rel_err':>8} {'rtn_err':>8} {'uni_err':>8}"
    head += "  notes"
    lines = [f"{report.path} ({report.kind})", head, "-" * len(head)]
    for t in rows:
        ok = {True: "yes", False: "NO", None: "n/a"}[t.consistent]
        shape = "x".join(str(n) for n in t.shape)
        line = (f"{t.name:<34} {t.stored_type:<10} {shape:<14} {t.bits_per_weight:>6.2f} "
                f"{t.group_size if t.group_size is not None else '-':>5} {ok:<10}")
        if has_ref:
            line += f" {_fmt(t.rel_err):>8} {_fmt(t.rtn_rel_err):>8} {_fmt(t.uniform_rel_err):>8}"
        notes = [k for k, v in t.checks.items() if v is False]
        if "fixed_point" in t.info and t.info["fixed_point"] < 1:
            notes.append(f"fixed point {t.info['fixed_point']:.3f}")
        if t.info.get("v1_zero_points"):
            notes.append(f"{t.info['v1_zero_points']} v1 zero points of 0 (see below)")
        if t.info.get("zero_scale_blocks"):
            notes.append(f"{t.info['zero_scale_blocks']} zero-scale blocks")
        if "note" in t.info:
            notes.append(t.info["note"])
        lines.append((line + ("  " + "; ".join(notes) if notes else "")).rstrip())
    s = report.summary()
    hidden = len(report.tensors) - len(rows)
    lines.append("-" * len(head))
    lines.append(f"{s['n_tensors']} tensors ({', '.join(s['types'])}); {s['n_quantized']} quantized"
                 + (f", {hidden} float tensors not listed (--all)" if hidden else ""))
    for name, e in s["by_type"].items():
        lines.append(f"  {name:<10} {e['n_tensors']:>4} tensors, {e['bits_per_weight']:.2f} bits/weight"
                     + (f", groups of {e['group_size']}" if e["group_size"] is not None else "")
                     + f", {e['n_consistent']} consistent")
    bpw = s["quantized_bits_per_weight"]
    lines.append(f"quantized tensors: {_fmt(bpw, '.3f')} bits per weight (incl. scales/minimums); "
                 f"inconsistent: {s['n_inconsistent']}")
    if has_ref:
        lines.append(f"compared with {report.reference}: {s['n_compared']} tensors, max rel_err "
                     f"{_fmt(s['max_rel_err'])} (rtn_err: refquant RTN at the same settings; uni_err: "
                     "integer zero point, groups of 32)")
    lines += report.notes
    return "\n".join(lines)


def run(args) -> int:
    from refquant.formats.audit import audit_checkpoint
    from refquant.models.errors import CheckpointError
    from refquant.models.resources import bundled_model_path

    path = args.path if args.path is not None else bundled_model_path()
    try:
        report = audit_checkpoint(path, reference=args.reference, zero_convention=args.zero_convention)
    except CheckpointError as exc:                 # unreadable, malformed or incomplete
        print(f"refquant inspect: corrupt checkpoint: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"refquant inspect: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(format_table(report, show_all=args.all))
    return 1 if report.n_inconsistent else 0
