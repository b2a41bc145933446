"""MIGT_TVDT: the full model (data flow of DESIGN.md, stages 1-7).

Shapes: B batch, T steps, V variables, D = d_model, H heads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import kernels

from .blocks import AxisAttentionBlock, GatedVariableBlock
from .config import MIGTConfig
from .embedding import CompositePositionalEncoding, VariableEmbedding
from .heads import MaskedAttentionPooling, OutputPool, QuantileHeads
from .validation import validate_inputs


class MIGT_TVDT(nn.Module):
    """Hybrid temporal/variable transformer giving non-crossing quantile forecasts.

    forward(features (B, T, V) float, attention_mask (B, T) bool,
            temporal_info {bar_in_day (B, T), day_of_week (B,), day_of_month (B,),
                           day_of_year (B,)} integer tensors)
      -> {"quantiles": (B, n_horizons, n_quantiles),
          "norm_stats": {"mean": (B, V), "std": (B, V)}}

    Quantiles are returned as produced by the heads (the scale of the training
    targets); ``norm_stats`` are the RevIN statistics of the input, for callers
    that forecast a normalised feature and want to map it back with
    ``kernels.revin_denormalize``. Values stored at padded positions (features
    and bar_in_day) have no effect on any output or gradient.
    """

    def __init__(self, config: MIGTConfig) -> None:
        super().__init__()
        if not isinstance(config, MIGTConfig):
            raise TypeError(f"config must be a MIGTConfig; got {type(config).__name__}")
        self.config = config
        V, D = config.n_variables, config.d_model
        self.revin_weight = nn.Parameter(torch.ones(V))
        self.revin_bias = nn.Parameter(torch.zeros(V))
        self.value_embedding = VariableEmbedding(V, D)
        self.positional = CompositePositionalEncoding(config)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.temporal_blocks = nn.ModuleList(
            AxisAttentionBlock(config, "time") for _ in range(config.n_temporal_layers)
        )
        self.variable_blocks = nn.ModuleList(
            GatedVariableBlock(config) for _ in range(config.n_variable_layers)
        )
        # Pre-norm blocks leave the residual stream un-normalised: normalise once before pooling.
        self.final_norm = nn.LayerNorm(D)
        self.aggregation = MaskedAttentionPooling(D)
        self.output_pool = OutputPool(V, D, config.dropout)
        self.heads = QuantileHeads(D, config.n_horizons, config.n_quantiles)

    @classmethod
    def from_config(cls, path: str | Path) -> "MIGT_TVDT":
        """Build a freshly initialised model from a YAML config file."""
        return cls(MIGTConfig.from_yaml(path))

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location=None, *, config: MIGTConfig | None = None) -> "MIGT_TVDT":
        """Rebuild a trained model (config and weights) from a `migt.train`
        checkpoint file or run directory. A ``config`` given here must equal the
        checkpoint's (the differing fields are named). The loading and its
        checks live in migt/training/checkpoint.py.
        """
        from .training.checkpoint import load_model  # migt.training imports this module

        return load_model(path, map_location=map_location, config=config)

    def _run_block(self, block: nn.Module, x: torch.Tensor, mask: torch.Tensor,
                   gemm_params: Optional[dict]) -> torch.Tensor:
        if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, mask, gemm_params, use_reentrant=False)
        return block(x, mask, gemm_params)

    def _blocks_gemm_params(self, x: torch.Tensor) -> list:
        """Per block (temporal, then variable), its GEMM weights and biases in
        autocast's dtype, cast by one node per block (kernels.cast_together:
        one launch each way instead of one per tensor, the same values and
        gradients; per block, so each block's gradients are ready, e.g. for
        DDP's overlapping all-reduce, when its backward ends); None per block
        where its GEMMs take the parameters as they are (autocast off or in
        their dtype, or the module path)."""
        blocks = [*self.temporal_blocks, *self.variable_blocks]
        device_type = x.device.type
        if (not blocks or kernels.fused_block_backend(self.config.backend, x) != "triton"
                or not torch.is_autocast_enabled(device_type)):
            return [None] * len(blocks)
        dtype = torch.get_autocast_dtype(device_type)
        cast = []
        for block in blocks:
            named = block.gemm_parameters()
            if all(p.dtype == dtype for p in named.values()):
                cast.append(None)
            else:
                cast.append(dict(zip(named, kernels.cast_together(list(named.values()), dtype))))
        return cast

    def _aggregate(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Final norm + attention pooling over T: (B, V, T, D) -> (B, V, D)."""
        if kernels.fused_block_backend(self.config.backend, x) != "triton":
            return self.aggregation(self.final_norm(x), mask)
        # One kernel each way: no normalised copy of x is written, and the
        # backward keeps x (the last block's output) and a few floats per series.
        norm, pool = self.final_norm, self.aggregation
        return kernels.norm_attention_pool(x, mask, norm.weight, norm.bias, pool.key_proj.weight, pool.key_proj.bias,
                                           pool.query, norm.eps, scale=pool.scale, backend="triton")

    def embed(
        self,
        features: torch.Tensor,
        attention_mask: torch.Tensor,
        temporal_info: Mapping[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stages 1-2: RevIN, value embedding + calendar encoding.

        Returns x (B, V, T, D), mean (B, V), std (B, V).
        """
        cfg = self.config
        y, mean, std = kernels.revin_normalize(
            features, attention_mask, self.revin_weight, self.revin_bias, cfg.revin_eps, backend=cfg.backend
        )  # y [B, V, T], padded steps 0
        # Padded bars may hold anything (even out-of-range values): use bar 0 there.
        bar = torch.where(attention_mask, temporal_info["bar_in_day"], 0)
        pos = self.positional(
            bar, temporal_info["day_of_week"], temporal_info["day_of_month"], temporal_info["day_of_year"]
        )  # [B, T, D]
        device_type = features.device.type
        stream_dtype = None  # the residual stream's dtype when it is not float32
        if cfg.residual_stream == "autocast" and torch.is_autocast_enabled(device_type):
            stream_dtype = torch.get_autocast_dtype(device_type)
        emb, p = self.value_embedding, self.embed_dropout.p if self.training else 0.0
        if kernels.fused_block_backend(cfg.backend, pos) == "triton":
            # y * weight + bias + pos and the dropout in one pass, written in
            # the stream's dtype: no (B, V, T, D) intermediates, no stored mask
            out_dtype = stream_dtype or torch.promote_types(emb.weight.dtype, pos.dtype)
            x = kernels.value_embedding(y, emb.weight, emb.bias, pos, p, out_dtype=out_dtype, backend="triton")
        else:
            x = self.embed_dropout(emb(y.to(emb.weight.dtype)) + pos[:, None, :, :])  # [B, V, T, D]
            if stream_dtype is not None:
                x = x.to(stream_dtype)
        return x, mean, std

    def forward(
        self,
        features: torch.Tensor,
        attention_mask: torch.Tensor,
        temporal_info: Mapping[str, torch.Tensor],
    ) -> dict:
        validate_inputs(self.config, features, attention_mask, temporal_info)
        cfg = self.config
        B = features.shape[0]

        x, mean, std = self.embed(features, attention_mask, temporal_info)  # [B, V, T, D]
        gemm_params = self._blocks_gemm_params(x)
        temporal_params, variable_params = gemm_params[:len(self.temporal_blocks)], gemm_params[len(self.temporal_blocks):]
        for block, params in zip(self.temporal_blocks, temporal_params):
            x = self._run_block(block, x, attention_mask, params)  # [B, V, T, D]

        if cfg.variable_attention == "per_step":
            for block, params in zip(self.variable_blocks, variable_params):
                x = self._run_block(block, x, attention_mask, params)  # [B, V, T, D]
            pooled = self._aggregate(x, attention_mask)  # [B, V, D]
        else:  # "pooled": the original FuturesSL order, variable blocks on (B, V, 1, D)
            pooled = self._aggregate(x, attention_mask)  # [B, V, D]
            step = pooled.unsqueeze(2)  # [B, V, 1, D]
            one_step = torch.ones(B, 1, dtype=torch.bool, device=features.device)
            for block, params in zip(self.variable_blocks, variable_params):
                step = self._run_block(block, step, one_step, params)
            pooled = step.squeeze(2)

        hidden = self.output_pool(pooled)  # [B, D]
        quantiles = self.heads(hidden)  # [B, n_horizons, n_quantiles]
        return {"quantiles": quantiles, "norm_stats": {"mean": mean, "std": std}}
