"""Scores of quantile forecasts against realised values, per horizon and level.

CRPS from quantiles: CRPS(F, y) = 2 * integral over tau in (0, 1) of the
pinball loss of F's tau-quantile. With only K levels the integral is a
midpoint sum: level k stands for the tau-interval between the midpoints to
its neighbours (the outer levels reach 0 and 1), so
CRPS ~= 2 * sum_k w_k * pinball_k, w = the interval widths (sum 1; for the
seed levels 0.05 .. 0.95: 0.075, 0.1, 0.2, 0.25, 0.2, 0.1, 0.075). Beyond the
outer levels the pinball of the 0.05/0.95 quantile stands in for the tails,
so the value is an approximation, the same one for the model and baselines.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..training.metrics import INTERVALS, level_index, pinball_terms

CRPS_APPROXIMATION = (
    "2 * sum_k w_k * pinball(level_k): midpoint rule over the quantile levels, each level weighted by the "
    "width of the tau-interval between the midpoints to its neighbours (outer levels extend to 0 and 1)"
)


def crps_weights(levels: Sequence[float]) -> np.ndarray:
    """Midpoint-rule weights of the levels over (0, 1); they sum to 1."""
    lv = np.asarray(levels, dtype=np.float64)
    edges = np.concatenate([[0.0], (lv[1:] + lv[:-1]) / 2, [1.0]])
    return np.diff(edges)


def score_quantiles(quantiles: np.ndarray, targets: np.ndarray, levels: Sequence[float]) -> dict:
    """All scores of (N, H, Q) quantiles against (N, H) targets, in their units.

    Returns lists indexed [horizon] or [horizon][level]:
    pinball (H x Q), pinball_per_horizon, loss (the mean, as in training),
    crps_per_horizon, crps, coverage_50 / coverage_90 ({nominal, observed,
    per_horizon}), calibration (H x Q: fraction of targets at or below each
    quantile, nominal = the level), quantile_crossings, n_samples.
    """
    q = torch.tensor(np.asarray(quantiles, dtype=np.float64))  # a copy: inputs may be read-only views
    y = torch.tensor(np.asarray(targets, dtype=np.float64))
    if q.dim() != 3 or y.shape != q.shape[:2] or q.shape[2] != len(levels):
        raise ValueError(
            f"quantiles must be (N, H, Q={len(levels)}) and targets (N, H); got {tuple(q.shape)} and {tuple(y.shape)}"
        )
    if q.shape[0] == 0:
        raise ValueError("no samples to score")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("targets must be finite (score only sessions whose outcome is known)")
    lv = torch.tensor([float(x) for x in levels], dtype=torch.float64)
    pinball = pinball_terms(q, y, lv).mean(0)  # [H, Q]
    crps = 2.0 * pinball @ torch.as_tensor(crps_weights(levels))  # [H]
    out = {
        "n_samples": int(q.shape[0]),
        "loss": float(pinball.mean()),
        "pinball_per_horizon": pinball.mean(1).tolist(),
        "pinball": pinball.tolist(),
        "crps": float(crps.mean()),
        "crps_per_horizon": crps.tolist(),
        "calibration": (y.unsqueeze(-1) <= q).to(torch.float64).mean(0).tolist(),  # [H, Q]
        "quantile_crossings": int((q[..., 1:] < q[..., :-1]).sum()),
    }
    for name, (lo, hi) in INTERVALS.items():
        i, j = level_index(levels, lo), level_index(levels, hi)
        if i is None or j is None:
            continue  # the config's levels do not hold this interval
        inside = ((y >= q[..., i]) & (y <= q[..., j])).to(torch.float64)  # [N, H]
        out[name] = {"nominal": hi - lo, "observed": float(inside.mean()), "per_horizon": inside.mean(0).tolist()}
    return out
