"""Forecast horizons in bars, one definition for real and synthetic data."""
from __future__ import annotations

# 15 min, 30 min, 1 h, 2 h, 4 h of 5-minute bars
HORIZON_BARS = (3, 6, 12, 24, 48)


def horizon_bars(n_horizons: int) -> list[int]:
    """Bars ahead of each of n_horizons targets: 3, 6, 12, 24, 48, then doubling."""
    bars = list(HORIZON_BARS[:n_horizons])
    while len(bars) < n_horizons:
        bars.append(bars[-1] * 2)
    return bars
