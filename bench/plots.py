"""PNG plots of one run: per suite, step time (top) and peak memory (bottom,
CUDA only) against batch size, one panel per op and dtype, one line per backend."""
from __future__ import annotations

from pathlib import Path


def plot_suite(rows: list, suite: str, path: Path, title: str = "") -> Path | None:
    """Draw the suite's ok rows with a batch size; None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["suite"] == suite and r["status"] == "ok" and r["batch"]]
    if not rows:
        return None
    panels = sorted({(r["op"], r["dtype"]) for r in rows})
    with_memory = any(r["peak_mib"] is not None for r in rows)
    n_rows = 2 if with_memory else 1
    fig, axes = plt.subplots(n_rows, len(panels), figsize=(3.6 * len(panels), 3.2 * n_rows), squeeze=False)
    for col, (op, dtype) in enumerate(panels):
        mine = [r for r in rows if (r["op"], r["dtype"]) == (op, dtype)]
        for backend in sorted({r["backend"] for r in mine}):
            points = sorted((r["batch"], r["median_ms"], r["peak_mib"]) for r in mine if r["backend"] == backend)
            batches = [p[0] for p in points]
            axes[0][col].plot(batches, [p[1] for p in points], marker="o", label=backend)
            if with_memory:
                axes[1][col].plot(batches, [p[2] for p in points], marker="o", label=backend)
        axes[0][col].set_title(f"{op} ({dtype})", fontsize=9)
        axes[0][col].set_ylabel("median ms")
        if with_memory:
            axes[1][col].set_ylabel("peak MiB")
        axes[-1][col].set_xlabel("batch size")
        axes[0][col].legend(fontsize=7)
    fig.suptitle(title or suite, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
