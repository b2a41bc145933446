"""Aggregation over time, output pooling over variables and quantile heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels.reference import masked_softmax


class MaskedAttentionPooling(nn.Module):
    """Attention pooling over T with a learned query: (B, V, T, D) -> (B, V, D).

    score[b, v, t] = <key_proj(x[b, v, t]), query> / sqrt(D); padded steps get
    exactly zero weight (torch.where, not a large negative bias), and a sample
    with no valid step pools to zeros, with zero (finite) gradients.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(d_model, d_model)
        self.query = nn.Parameter(torch.randn(d_model) / math.sqrt(d_model))
        self.scale = 1.0 / math.sqrt(d_model)

    def weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooling weights (B, V, T): softmax over valid steps, 0 elsewhere.
        x must be finite at padded steps (forward passes its masked copy): a
        NaN there would reach the gradients of key_proj and query."""
        # key_proj(x) @ query == x @ (W^T query) + bias . query: a matrix-vector
        # product instead of a D x D GEMM over every step, and no (B, V, T, D)
        # key kept for the backward
        key_query = self.key_proj.weight.t() @ self.query  # [D]
        scores = (x @ key_query.to(x.dtype) + self.key_proj.bias @ self.query) * self.scale  # [B, V, T]
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # the softmax in float32 at least
        return masked_softmax(scores, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # one low-precision copy for both products (autocast would make
            # two), made before the masking so that the where (and its
            # backward) moves 2-byte elements, not the float32 stream's
            x = x.to(torch.get_autocast_dtype(device_type))
        # Padded activations replaced: a zero weight times NaN would still be NaN.
        xs = torch.where(mask[:, None, :, None], x, 0.0)  # [B, V, T, D]
        w = self.weights(xs, mask)  # [B, V, T]
        return (w.unsqueeze(-2).to(xs.dtype) @ xs).squeeze(-2)  # [B, V, D]


class OutputPool(nn.Module):
    """Flatten (B, V, D) -> (B, V*D) -> Linear -> GELU -> dropout -> (B, D)."""

    def __init__(self, n_variables: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(n_variables * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(F.gelu(self.proj(x.flatten(1))))


class QuantileHeads(nn.Module):
    """(B, D) -> (B, n_horizons, n_quantiles), non-decreasing along quantiles.

    q[..., 0] = base, q[..., j] = base + sum_{i<=j} softplus(inc_i): crossing is
    impossible by construction (softplus >= 0).
    """

    def __init__(self, d_model: int, n_horizons: int, n_quantiles: int) -> None:
        super().__init__()
        self.n_horizons = n_horizons
        self.n_quantiles = n_quantiles
        self.proj = nn.Linear(d_model, n_horizons * n_quantiles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.proj(x).view(x.shape[0], self.n_horizons, self.n_quantiles)
        base = raw[..., :1]  # [B, H, 1]
        increments = F.softplus(raw[..., 1:])  # [B, H, Q-1]
        return torch.cat([base, base + torch.cumsum(increments, dim=-1)], dim=-1)
