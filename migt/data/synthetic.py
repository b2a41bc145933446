"""Synthetic intraday batches for tests, smoke runs and benchmarks.

Each sample is one trading day of ``T`` five-minute bars of a latent return
process r_t = mu + sigma * eps_t, with a per-sample drift ``mu`` and
volatility ``sigma``. Features are derived from it at realistic scales, and
the targets are the forward log returns after the day at each horizon, so
both their location (mu) and spread (sigma) can be learned from the features.

Features, cycling over the variable index v (kind = v % 4):
  0 log return (~1e-3), 1 price level (~1e3), 2 volume (~1e5),
  3 rolling mean absolute return over 12 bars (~1e-3).
Variables past the first four use their own return series
beta_v * r + noise (correlated instruments), so no two columns coincide.

Masks mix three kinds of day (for batch_size >= 3 all three are present):
full (every bar valid), short session (only a prefix valid) and gapped
(holes inside the day, first and last bar valid, so not a prefix).

Padding: with ``nan_padding=True`` (the default) padded feature positions
hold NaN, so any code that lets padding leak shows NaN at once; pass False
for zeros. ``n_empty`` makes the last n samples all padding (never by chance).
"""

from __future__ import annotations

import datetime as dt
import math

import torch

from ..config import MIGTConfig
from .horizons import horizon_bars

_FIRST_DATE = dt.date(2010, 1, 4)
_DATE_SPAN_DAYS = 365 * 15
_VOL_WINDOW = 12

MASK_FULL, MASK_SHORT, MASK_GAPPED = 0, 1, 2


def synthetic_batch(
    batch_size: int,
    config: MIGTConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    seq_len: int | None = None,
    nan_padding: bool = True,
    n_empty: int = 0,
) -> dict:
    """A deterministic (per seed) synthetic batch.

    Returns a dict:
      features       (B, T, V) float32, NaN (or 0) at padded steps
      attention_mask (B, T) bool, True = real bar
      temporal_info  {bar_in_day (B, T) int64 = arange(T) % bars_per_day,
                      day_of_week (B,) 0..6 (Monday = 0), day_of_month (B,) 1..31,
                      day_of_year (B,) 1..366} int64, from real business dates
      targets        (B, n_horizons) float32 forward log returns
      mask_kind      (B,) int64: 0 full, 1 short session, 2 gapped
      dates          list of B datetime.date (the business dates used)
    T = seq_len or config.max_seq_len, V = config.n_variables.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    T = config.max_seq_len if seq_len is None else seq_len
    if not (1 <= T <= config.max_seq_len):
        raise ValueError(f"seq_len must lie in [1, max_seq_len={config.max_seq_len}]; got {T}")
    if not (0 <= n_empty <= batch_size):
        raise ValueError(f"n_empty must lie in [0, batch_size={batch_size}]; got {n_empty}")
    B, V = batch_size, config.n_variables
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=f64)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=f64)

    # Latent per-sample regime: drift (learnable location), volatility (learnable spread).
    sigma = 1e-3 * torch.exp(0.4 * randn(B))  # [B]
    mu = 1.5e-4 * randn(B)  # [B]
    r = mu[:, None] + sigma[:, None] * randn(B, T)  # [B, T]

    # One return series per variable: the first four share r, later ones are correlated copies.
    beta = torch.where(torch.arange(V) < 4, 1.0, 0.5 + rand(V))  # [V]
    idio = torch.where(torch.arange(V) < 4, 0.0, 0.5)  # [V]
    r_v = beta * r[:, :, None] + idio * sigma[:, None, None] * randn(B, T, V)  # [B, T, V]

    kind = torch.arange(V) % 4
    price = (500.0 + 4500.0 * rand(B, 1, V)) * torch.exp(torch.cumsum(r_v, dim=1))
    bar = torch.arange(T, dtype=f64)
    u_shape = 1.0 + 0.5 * torch.cos(2.0 * math.pi * bar / config.bars_per_day)[None, :, None]
    volume = 1e5 * torch.exp(0.3 * randn(B, T, V)) * u_shape * (1.0 + 300.0 * r_v.abs())
    csum = torch.cumsum(r_v.abs(), dim=1)
    lagged = torch.cat([torch.zeros(B, _VOL_WINDOW, V, dtype=f64), csum], dim=1)[:, :T]
    counts = torch.clamp(torch.arange(1, T + 1, dtype=f64), max=_VOL_WINDOW)[None, :, None]
    rolling_abs = (csum - lagged) / counts
    features = torch.where(
        kind == 0, r_v, torch.where(kind == 1, price, torch.where(kind == 2, volume, rolling_abs))
    )

    # Forward log returns over each horizon after the day's last bar (nested sums).
    bars_ahead = horizon_bars(config.n_horizons)
    future = torch.cumsum(randn(B, bars_ahead[-1]), dim=1)  # [B, max_h]
    idx = torch.tensor([h - 1 for h in bars_ahead])
    k = torch.tensor(bars_ahead, dtype=f64)
    targets = mu[:, None] * k + sigma[:, None] * future[:, idx]  # [B, n_horizons]

    mask, mask_kind = _masks(B, T, g)
    if n_empty:
        mask[B - n_empty:] = False
    fill = float("nan") if nan_padding else 0.0
    features = torch.where(mask[:, :, None], features, fill)

    dates = _business_dates(B, g)
    temporal_info = {
        "bar_in_day": (torch.arange(T) % config.bars_per_day).expand(B, T).clone(),
        "day_of_week": torch.tensor([d.weekday() for d in dates], dtype=torch.int64),
        "day_of_month": torch.tensor([d.day for d in dates], dtype=torch.int64),
        "day_of_year": torch.tensor([d.timetuple().tm_yday for d in dates], dtype=torch.int64),
    }
    return {
        "features": features.to(device=device, dtype=torch.float32),
        "attention_mask": mask.to(device),
        "temporal_info": {key: value.to(device) for key, value in temporal_info.items()},
        "targets": targets.to(device=device, dtype=torch.float32),
        "mask_kind": mask_kind.to(device),
        "dates": dates,
    }


def _masks(B: int, T: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) bool masks and their kind; kinds cycle full/short/gapped, shuffled."""
    kinds = torch.arange(B) % 3
    kinds = kinds[torch.randperm(B, generator=g)]
    mask = torch.ones(B, T, dtype=torch.bool)
    for b in range(B):
        if kinds[b] == MASK_SHORT:
            frac = 0.35 + 0.45 * float(torch.rand(1, generator=g))
            mask[b, max(1, round(T * frac)):] = False
        elif kinds[b] == MASK_GAPPED:
            if T < 3:  # no room for an inner gap
                kinds[b] = MASK_FULL
                continue
            n_gaps = int(torch.randint(1, 4, (1,), generator=g))
            for _ in range(n_gaps):
                length = int(torch.randint(1, max(2, T // 8) + 1, (1,), generator=g))
                length = min(length, T - 2)
                # Keep the first and last bar valid, so the mask is never a prefix.
                start = int(torch.randint(1, T - length, (1,), generator=g))
                mask[b, start:start + length] = False
    return mask, kinds


def _business_dates(B: int, g: torch.Generator) -> list[dt.date]:
    offsets = torch.randint(0, _DATE_SPAN_DAYS, (B,), generator=g).tolist()
    dates = []
    for off in offsets:
        day = _FIRST_DATE + dt.timedelta(days=int(off))
        if day.weekday() >= 5:  # weekend -> next Monday
            day += dt.timedelta(days=7 - day.weekday())
        dates.append(day)
    return dates
