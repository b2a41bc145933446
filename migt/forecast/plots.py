"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("the evaluation plots need matplotlib: `pip install matplotlib`") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(scores: dict, levels: Sequence[float], horizons: Sequence[int], units: str,
                     path: Path) -> Path:
    """Left: observed fraction of targets at or below each quantile vs its level,
    per horizon. Right: 50% and 90% interval coverage per horizon vs nominal."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="ideal")
    for h, row in zip(horizons, scores["calibration"]):
        ax.plot(levels, row, marker="o", label=f"{h} bars")
    ax.set(xlabel="nominal level", ylabel="observed fraction of targets <= quantile",
           title="quantile calibration", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    x = np.arange(len(horizons))
    for k, (name, color) in enumerate((("coverage_50", "tab:blue"), ("coverage_90", "tab:orange"))):
        if name not in scores:
            continue
        cov = scores[name]
        bx.bar(x + (k - 0.5) * 0.38, cov["per_horizon"], width=0.38, color=color,
               label=f"{int(round(cov['nominal'] * 100))}% interval")
        bx.axhline(cov["nominal"], color=color, linestyle="--", linewidth=1)
    bx.set_xticks(x, [f"{h} bars" for h in horizons])
    # headroom above 1 keeps the legend off the bars
    bx.set(ylim=(0, 1.18), ylabel="observed coverage (dashed: nominal)", title="central interval coverage")
    bx.legend(fontsize=8, loc="upper center", ncol=2)
    fig.suptitle(f"calibration on {scores['n_samples']} sessions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fan_chart(days: Sequence[str], quantiles: np.ndarray, paths: list[np.ndarray], targets: np.ndarray,
                   levels: Sequence[float], horizons: Sequence[int], units: str, path: Path) -> Path:
    """One panel per session: the forecast fan over the horizons (bands between
    symmetric levels, the median as a line) against the realised cumulative
    return path and the realised targets.

    quantiles (S, H, Q) and targets (S, H) in ``units``; paths[s]: realised
    cumulative returns 0, 1, ... bars after the origin (same units).
    """
    plt = _pyplot()
    S = len(days)
    fig, axes = plt.subplots(1, S, figsize=(3.2 * S + 1, 4), sharey=True, squeeze=False)
    x = np.concatenate([[0], np.asarray(horizons)])
    lv = list(levels)
    pairs = [(i, len(lv) - 1 - i) for i in range(len(lv) // 2)]  # outermost band first
    shades = np.linspace(0.15, 0.45, max(len(pairs), 1))
    median = lv.index(0.5) if 0.5 in lv else None
    for s, ax in enumerate(axes[0]):
        fan = np.concatenate([np.zeros((1, len(lv))), quantiles[s]], axis=0)  # [1 + H, Q], 0 at the origin
        for (lo, hi), alpha in zip(pairs, shades):
            ax.fill_between(x, fan[:, lo], fan[:, hi], color="tab:blue", alpha=alpha, linewidth=0,
                            label=f"{lv[lo]:g}-{lv[hi]:g}" if s == 0 else None)
        if median is not None:
            ax.plot(x, fan[:, median], color="tab:blue", linewidth=1.5, label="median" if s == 0 else None)
        ax.plot(np.arange(len(paths[s])), paths[s], color="black", linewidth=1,
                label="realised path" if s == 0 else None)
        ax.scatter(horizons, targets[s], color="tab:red", zorder=3, s=18, label="realised" if s == 0 else None)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set(title=str(days[s]), xlabel="bars after the session's last bar")
    axes[0][0].set_ylabel(f"{units} from the last close")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("forecast fans of the last week against realised returns")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss_per_horizon(results: dict, horizons: Sequence[int], units: str, path: Path) -> Path:
    """Mean pinball loss and CRPS per horizon, the model against the baselines.

    results: {name: scores of ``scores.score_quantiles``}.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "pinball_per_horizon", "mean pinball loss"),
                           (axes[1], "crps_per_horizon", "CRPS (from the quantiles)")):
        for name, scores in results.items():
            ax.plot(horizons, scores[key], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(horizons), [str(h) for h in horizons])
        ax.set(xlabel="horizon (bars)", ylabel=units, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
