"""Validation metrics of quantile forecasts, accumulated over batches and ranks.

Per horizon: mean pinball loss (averaged over quantile levels, as the training
loss). Overall: coverage of the central 50% interval (levels 0.25..0.75) and
90% interval (0.05..0.95) -- the fraction of targets inside it, which should
be near 0.5 / 0.9 -- and the number of quantile crossings (a higher level
predicted below a lower one), which the heads make impossible: it must be 0.
"""

from __future__ import annotations

from typing import Sequence

import torch

# Central intervals reported as coverage: name -> (lower level, upper level).
INTERVALS = {"coverage_50": (0.25, 0.75), "coverage_90": (0.05, 0.95)}


def level_index(levels: Sequence[float], value: float) -> int | None:
    """Position of ``value`` in ``levels`` (within 1e-9), or None."""
    for i, q in enumerate(levels):
        if abs(q - value) < 1e-9:
            return i
    return None


def pinball_terms(quantiles: torch.Tensor, targets: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Pinball loss of every quantile: quantiles (..., Q), targets (...), levels (Q,) -> (..., Q)."""
    err = targets.unsqueeze(-1) - quantiles
    return torch.maximum(levels * err, (levels - 1.0) * err)


class QuantileMetrics:
    """Running sums; ``update`` per batch, ``sums`` to all-reduce, ``result`` at the end."""

    def __init__(self, levels: Sequence[float], n_horizons: int, device: torch.device) -> None:
        self.levels = [float(q) for q in levels]
        self._levels_t = torch.tensor(self.levels, dtype=torch.float64, device=device)
        self.intervals = {
            name: (level_index(self.levels, lo), level_index(self.levels, hi))
            for name, (lo, hi) in INTERVALS.items()
        }
        # [pinball per horizon (H), count, inside per interval, crossings]
        self.sums = torch.zeros(n_horizons + 2 + len(INTERVALS), dtype=torch.float64, device=device)
        self.n_horizons = n_horizons

    @torch.no_grad()
    def update(self, quantiles: torch.Tensor, targets: torch.Tensor) -> None:
        """quantiles (B, H, Q), targets (B, H), same units."""
        q = quantiles.to(torch.float64)
        y = targets.to(torch.float64)
        H = self.n_horizons
        pinball = pinball_terms(q, y, self._levels_t)  # [B, H, Q]
        self.sums[:H] += pinball.mean(-1).sum(0)
        self.sums[H] += q.shape[0]
        for k, (lo, hi) in enumerate(self.intervals.values()):
            if lo is not None and hi is not None:
                inside = (y >= q[..., lo]) & (y <= q[..., hi])  # [B, H]
                self.sums[H + 1 + k] += inside.sum()
        self.sums[-1] += (q[..., 1:] < q[..., :-1]).sum()

    def result(self) -> dict:
        H = self.n_horizons
        n = max(float(self.sums[H]), 1.0)
        per_h = (self.sums[:H] / n).tolist()
        out = {"loss": sum(per_h) / H, "pinball_per_horizon": per_h, "n_samples": int(self.sums[H])}
        for k, (name, (lo, hi)) in enumerate(self.intervals.items()):
            out[name] = float(self.sums[H + 1 + k]) / (n * H) if lo is not None and hi is not None else None
        out["quantile_crossings"] = int(self.sums[-1])
        return out
