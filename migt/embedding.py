"""Input embeddings: per-variable value embedding and composite calendar encoding.

Shapes: B batch, V variables, T steps, D = d_model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import MIGTConfig


class VariableEmbedding(nn.Module):
    """Per-variable Linear(1, D), vectorised over V: (B, V, T) -> (B, V, T, D).

    out[b, v, t] = y[b, v, t] * weight[v] + bias[v]; one broadcast, no loop over V.
    """

    def __init__(self, n_variables: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_variables, d_model))
        self.bias = nn.Parameter(torch.empty(n_variables, d_model))
        # Same init as nn.Linear(1, D): U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = 1.
        nn.init.uniform_(self.weight, -1.0, 1.0)
        nn.init.uniform_(self.bias, -1.0, 1.0)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # [B, V, T, 1] * [V, 1, D] + [V, 1, D] -> [B, V, T, D]
        return y.unsqueeze(-1) * self.weight[:, None, :] + self.bias[:, None, :]


class TimeOfDayEncoding(nn.Module):
    """Fixed sinusoid with integer harmonics of the trading day: (B, T) -> (B, T, dim).

    Features sin/cos(2*pi*k*bar/bars_per_day) for k = 1..dim/2: periodic over
    the day, so bar 0 and bar ``bars_per_day`` coincide, whatever max_seq_len is.
    """

    def __init__(self, dim: int, bars_per_day: int) -> None:
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"time-of-day dim must be even; got {dim}")
        self.bars_per_day = bars_per_day
        harmonics = torch.arange(1, dim // 2 + 1, dtype=torch.float64)
        self.register_buffer(
            "angular", (2.0 * math.pi / bars_per_day) * harmonics, persistent=False
        )

    def forward(self, bar_in_day: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Angles in float64 so high harmonics of large bar indices stay exact before the cast.
        angle = bar_in_day.to(torch.float64).unsqueeze(-1) * self.angular  # [B, T, dim/2]
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).to(dtype)


class Time2Vec(nn.Module):
    """Time2Vec(tau) = [w0*tau + b0, sin(w*tau + b)] with learned w, b: (...,) -> (..., dim).

    ``tau`` is expected in [0, 1). Frequencies start at integer harmonics
    2*pi*k (k = 1..dim-1), so the sin features begin periodic over the scaled
    range, and are learned from there.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.linear_weight = nn.Parameter(torch.ones(1))
        self.linear_bias = nn.Parameter(torch.zeros(1))
        n_periodic = dim - 1
        self.freq = nn.Parameter(2.0 * math.pi * torch.arange(1, n_periodic + 1, dtype=torch.float32))
        self.phase = nn.Parameter(torch.zeros(n_periodic))

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        tau = tau.unsqueeze(-1)  # [..., 1]
        linear = tau * self.linear_weight + self.linear_bias  # [..., 1]
        periodic = torch.sin(tau * self.freq + self.phase)  # [..., dim-1]
        return torch.cat([linear, periodic], dim=-1)


class CompositePositionalEncoding(nn.Module):
    """Calendar encoding (B, T, D), broadcast over V by the caller.

    time-of-day sinusoid (B, T, tod) | day-of-week embedding (B, dow) |
    day-of-month Time2Vec (B, dom) | day-of-year Time2Vec (B, doy), per-sample
    parts repeated over T, concatenated and projected by a Linear to D.
    """

    def __init__(self, config: MIGTConfig) -> None:
        super().__init__()
        self.time_of_day = TimeOfDayEncoding(config.time_of_day_dim, config.bars_per_day)
        self.day_of_week = nn.Embedding(7, config.day_of_week_dim)
        self.day_of_month = Time2Vec(config.day_of_month_dim)
        self.day_of_year = Time2Vec(config.day_of_year_dim)
        self.proj = nn.Linear(config.positional_dim, config.d_model)

    def forward(
        self,
        bar_in_day: torch.Tensor,  # [B, T] int, padded positions already replaced by a valid value
        day_of_week: torch.Tensor,  # [B] int 0..6
        day_of_month: torch.Tensor,  # [B] int 1..31
        day_of_year: torch.Tensor,  # [B] int 1..366
    ) -> torch.Tensor:
        dtype = self.proj.weight.dtype
        B, T = bar_in_day.shape
        tod = self.time_of_day(bar_in_day, dtype)  # [B, T, tod]
        dow = self.day_of_week(day_of_week.long())  # [B, dow]
        dom = self.day_of_month((day_of_month.to(dtype) - 1.0) / 31.0)  # [B, dom], tau in [0, 1)
        doy = self.day_of_year((day_of_year.to(dtype) - 1.0) / 366.0)  # [B, doy], tau in [0, 1)
        per_sample = torch.cat([dow, dom, doy], dim=-1)  # [B, dow+dom+doy]
        # Project the per-sample part once per sample rather than once per step.
        d_tod = tod.shape[-1]
        w_tod, w_day = self.proj.weight[:, :d_tod], self.proj.weight[:, d_tod:]
        day_part = per_sample @ w_day.t() + self.proj.bias  # [B, D]
        return tod @ w_tod.t() + day_part[:, None, :]  # [B, T, D]
