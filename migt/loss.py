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
    if torch.compiler.is_compiling():
        levels_t = torch.as_tensor(levels, dtype=quantiles.dtype, device=quantiles.device)
    else:
        levels_t = _checked_levels(levels, Q, quantiles.dtype, quantiles.device)
    error = targets.to(quantiles.dtype).unsqueeze(-1) - quantiles  # [B, H, Q]
    return torch.maximum(levels_t * error, (levels_t - 1.0) * error).mean()


# (levels, dtype, device) -> Python levels as a tensor on that device. A
# training loop passes the same levels every step, and copying them to a GPU
# each time is a blocking copy from pageable memory: it would wait for the
# whole forward, then idle the GPU while the backward's first small kernels
# are launched.
_LEVELS_ON_DEVICE: dict = {}


def _checked_levels(levels, Q: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """levels as a (Q,) tensor on device, after checking them: a Python
    sequence on the host, without reading any tensor; a tensor where it lies
    (on a GPU, a host sync: the caller's choice)."""
    given = levels if isinstance(levels, torch.Tensor) else torch.as_tensor(levels, dtype=torch.float64)
    if given.dim() != 1 or given.numel() != Q:
        raise ValueError(
            f"levels must be a sequence of Q={Q} quantile levels (last dim of quantiles); "
            f"got shape {tuple(given.shape)}"
        )
    if isinstance(levels, torch.Tensor):
        outside = bool(((levels <= 0) | (levels >= 1)).any())
    else:
        levels = tuple(float(level) for level in levels)
        outside = any(not 0.0 < level < 1.0 for level in levels)
    if outside:
        raise ValueError(f"levels must lie strictly inside (0, 1); got {given.tolist()}")
    if isinstance(levels, torch.Tensor) or device.type == "cpu":
        return given.to(dtype=dtype, device=device)
    key = (levels, dtype, device)
    if key not in _LEVELS_ON_DEVICE:
        _LEVELS_ON_DEVICE[key] = given.to(dtype=dtype, device=device)
    return _LEVELS_ON_DEVICE[key]
