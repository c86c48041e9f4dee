"""What the results scripts share: the CPU's name, the ``--only`` row check, the JSON file that
keeps rows between runs, and the perplexity table printed at the end.

Each script (``float_formats_table.py``, ``gguf_table.py``) keeps its rows, dicts with at least
``key``, ``method``, ``bits_per_weight`` and ``ppl``, in one JSON file with the settings they were
measured at; a run with other settings starts the file over, so rows measured differently never
share a table.
"""

from __future__ import annotations

import json
import pathlib
import platform


def cpu_name() -> str:
    """The ``model name`` of /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def selected_rows(ap, only: str, rows) -> list[str]:
    """The comma-separated ``--only`` keys, each one of ``rows`` (``ap.error`` otherwise)."""
    keys = [k.strip() for k in only.split(",") if k.strip()]
    bad = [k for k in keys if k not in rows]
    if bad or not keys:
        ap.error(f"--only: unknown rows {bad}; expected a subset of {','.join(rows)}")
    return keys


class RowFile:
    """Rows kept in ``path`` (JSON) under ``settings``: the rows already there are kept only if
    they were measured at the same settings; :meth:`save` rewrites the file after each row."""

    def __init__(self, path, settings: dict):
        self.path, self.settings = pathlib.Path(path), dict(settings)
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        same = all(saved.get(k) == v for k, v in self.settings.items())
        self.rows = {r["key"]: r for r in saved.get("rows", [])} if same else {}

    def save(self, row: dict) -> None:
        self.rows[row["key"]] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = dict(self.settings, cpu=cpu_name(), rows=list(self.rows.values()))
        self.path.write_text(json.dumps(body, indent=2) + "\n")


def ppl_table(rows, order, columns) -> str:
    """Rows sorted by ``order`` (their keys' positions) as text: ``columns`` = (title, width,
    function of the row) pairs first, then bits per weight, perplexity and the change against
    the row whose method is ``"float"``."""
    base = next((r["ppl"] for r in rows if r["method"] == "float"), None)
    head = " ".join(f"{t:<{w}}" for t, w, _ in columns) + f" {'bits/w':>7} {'ppl':>9} {'change':>9}"
    lines = [head, "-" * len(head)]
    rank = {k: i for i, k in enumerate(order)}
    for r in sorted(rows, key=lambda r: rank.get(r["key"], len(rank))):
        ch = "" if base is None else f"{100 * (r['ppl'] / base - 1):+8.2f}%"
        lines.append(" ".join(f"{f(r):<{w}}" for _, w, f in columns)
                     + f" {r['bits_per_weight']:>7.3f} {r['ppl']:>9.3f} {ch:>9}")
    return "\n".join(lines)
