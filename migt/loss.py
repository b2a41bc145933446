"""Pinball (quantile) loss."""

from __future__ import annotations

from typing import Sequence

import torch


def pinball_loss(
    quantiles: torch.Tensor,
    targets: torch.Tensor,
    levels: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Mean pinball loss over batch, horizons and quantile levels.

    quantiles: (B, H, Q) predicted quantiles; targets: (B, H); levels: Q levels
    in (0, 1). For error e = target - q at level tau the loss is
    max(tau * e, (tau - 1) * e). Returns a scalar in the dtype of ``quantiles``.
    """
    if not isinstance(quantiles, torch.Tensor) or quantiles.dim() != 3:
        shape = tuple(quantiles.shape) if isinstance(quantiles, torch.Tensor) else type(quantiles).__name__
        raise ValueError(f"quantiles must be a 3-D tensor (B, H, Q); got {shape}")
    B, H, Q = quantiles.shape
    if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != (B, H):
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must have shape (B, H) = {(B, H)} to match quantiles; got {shape}")
    levels_t = torch.as_tensor(levels, dtype=quantiles.dtype, device=quantiles.device)
    if levels_t.dim() != 1 or levels_t.numel() != Q:
        raise ValueError(
            f"levels must be a sequence of Q={Q} quantile levels (last dim of quantiles); "
            f"got shape {tuple(levels_t.shape)}"
        )
    if not torch.compiler.is_compiling() and bool(((levels_t <= 0) | (levels_t >= 1)).any()):
        raise ValueError(f"levels must lie strictly inside (0, 1); got {levels_t.tolist()}")
    error = targets.to(quantiles.dtype).unsqueeze(-1) - quantiles  # [B, H, Q]
    return torch.maximum(levels_t * error, (levels_t - 1.0) * error).mean()
