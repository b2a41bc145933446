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
    if torch.compiler.is_compiling():  # the shape alone: a value check would need a host read
        levels_t = torch.as_tensor(levels, dtype=quantiles.dtype, device=quantiles.device)
        _check_count(levels_t, Q)
    else:
        levels_t = _checked_levels(levels, Q, quantiles.dtype, quantiles.device)
    error = targets.to(quantiles.dtype).unsqueeze(-1) - quantiles  # [B, H, Q]
    return torch.maximum(levels_t * error, (levels_t - 1.0) * error).mean()


# (levels, dtype, device) -> Python levels as a tensor on that device,
# checked. A training loop passes the same levels every step; copying them to
# a GPU each time is a blocking copy from pageable memory: it would wait for
# the whole forward, then idle the GPU while the backward's first small
# kernels are launched. A handful of entries: emptied when it grows past that.
_LEVELS_ON_DEVICE: dict = {}
_LEVELS_KEPT = 16


def _check_count(levels: torch.Tensor, Q: int) -> None:
    if levels.dim() != 1 or levels.numel() != Q:
        raise ValueError(
            f"levels must be a sequence of Q={Q} quantile levels (last dim of quantiles); "
            f"got shape {tuple(levels.shape)}"
        )


def _check_inside(levels: torch.Tensor) -> None:
    if bool(((levels <= 0) | (levels >= 1)).any()):
        raise ValueError(f"levels must lie strictly inside (0, 1); got {levels.tolist()}")


def _checked_levels(levels, Q: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """levels as a (Q,) tensor of ``dtype`` on ``device``, checked in that
    dtype (0.999 is 1 in bfloat16): a tensor where it lies (on a GPU, a host
    sync: the caller's choice), a Python sequence on the host, once."""
    if isinstance(levels, torch.Tensor):
        levels = levels.to(dtype=dtype, device=device)
        _check_count(levels, Q)
        _check_inside(levels)
        return levels
    try:  # the key reads no tensor: a cache hit costs no host read at all
        key = (tuple(float(level) for level in levels), getattr(levels, "shape", None), dtype, device)
    except (TypeError, ValueError):  # not a flat sequence of numbers: the checks below say why
        key = None
    if key is None or key not in _LEVELS_ON_DEVICE:
        host = torch.as_tensor(levels, dtype=dtype)
        _check_count(host, Q)
        _check_inside(host)
        if len(_LEVELS_ON_DEVICE) >= _LEVELS_KEPT:
            _LEVELS_ON_DEVICE.clear()
        _LEVELS_ON_DEVICE[key] = host.to(device)
    levels = _LEVELS_ON_DEVICE[key]
    _check_count(levels, Q)  # the same levels may come with quantiles of another Q
    return levels
