"""Result rows: appended as JSON lines to <out>/<device-slug>.jsonl, one
file per device kind, and shown as a table (text on the terminal, markdown
in <out>/<device-slug>-latest.md for the README)."""
from __future__ import annotations

import json
from pathlib import Path

# Every row has these keys (tests/test_bench_harness.py checks them).
ROW_KEYS = (
    "timestamp", "run_id", "git_commit", "device", "device_slug", "torch", "triton", "triton_interpret",
    "quick", "suite", "op", "backend", "dtype", "batch", "shape", "median_ms", "first_ms", "repeats",
    "throughput", "throughput_unit", "peak_mib", "peak_delta_mib", "ratio", "baseline", "status", "extra",
)

COLUMNS = (
    ("suite", "suite"), ("op", "op"), ("backend", "backend"), ("dtype", "dtype"), ("B", "batch"),
    ("median ms", "median_ms"), ("throughput", None), ("peak MiB", "peak_mib"), ("ratio", "ratio"),
    ("status", "status"),
)


def append_rows(rows: list, out_dir: Path, slug: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{slug}.jsonl"
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
    return path


def read_rows(path: Path) -> list:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _cell(row: dict, key) -> str:
    if key is None:  # throughput with its unit
        return "" if row["throughput"] is None else f"{row['throughput']:.4g} {row['throughput_unit']}"
    value = row[key]
    if value is None:
        return ""
    if key == "batch" and value == 0:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: list, *, markdown: bool = False, status_width: int = 72) -> str:
    header = [name for name, _ in COLUMNS]
    body = [[_cell(r, key) for _, key in COLUMNS] for r in rows]
    if not markdown:  # long skip reasons stay whole in the files
        body = [cells[:-1] + [cells[-1][:status_width]] for cells in body]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in body])


def write_latest(rows: list, out_dir: Path, slug: str, command: str, report_lines: list) -> Path:
    """The run as markdown: which command and machine made it, the table, the memory report."""
    env = rows[0] if rows else {}
    text = [
        f"Made by `{command}` on {env.get('device', '?')} at {env.get('timestamp', '?')}, "
        f"git {env.get('git_commit', '?')}, torch {env.get('torch', '?')}, triton {env.get('triton', '?')}"
        + (" (quick run: small batches, few repeats)" if env.get("quick") else "") + ".",
        "",
        table(rows, markdown=True),
    ]
    if report_lines:
        text += ["", "```", *report_lines, "```"]
    path = out_dir / f"{slug}-latest.md"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path
