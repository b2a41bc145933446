"""Transformer blocks over the (B, V, T, D) layout.

A block attends along one axis ("time": over T for each (b, v); "variable":
over V for each (b, t)) through ``kernels.masked_attention_qkvpacked``. The
fused QKV projection's output is viewed (B, V, T, 3, H, Dh), the kernel reads
q, k, v from it by strides and writes (B, V, T, H, Dh), so the activations
are never permuted and copied between layers.

On the triton backend the work around attention is fused too (DESIGN.md,
"Where a training step's time and memory go"): the pre-norm and the QKV GEMM
are one node that keeps no normalised copy (``kernels.layer_norm_linear``),
and the residual add + dropout + norm + FFN (bias, GELU, dropout) + residual
add are one node whose dropout masks are redrawn from seeds, never stored
(``kernels.residual_feed_forward``); in a variable block that node also
takes the gate and the gated norm that follow (``kernels.gated_feed_forward``).
Parameters are the same modules on every
backend, so a state dict moves between them.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from .config import MIGTConfig


class FeedForward(nn.Module):
    """Linear D->d_ff, GELU, dropout, Linear d_ff->D, dropout (last dim)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class AxisAttentionBlock(nn.Module):
    """Pre-norm attention + pre-norm FFN, both residual: (B, V, T, D) -> (B, V, T, D).

    ``attn_dropout`` drops elements of the attention output (B, V, T, H, Dh),
    i.e. per head, before ``out_proj``: the flash kernels never materialise
    the probabilities, so dropout on them is not available.

    On the triton backend ``qkv`` and ``out_proj`` are applied through their
    parameters (their biases inside the attention kernels and the FFN op),
    not called as modules: hooks on them, or a module swapped in for them,
    act on the sdpa and reference backends only.
    """

    def __init__(self, config: MIGTConfig, axis: str) -> None:
        super().__init__()
        if axis not in ("time", "variable"):
            raise ValueError(f"axis must be 'time' or 'variable'; got {axis!r}")
        self.axis = axis
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.backend = config.backend
        D = config.d_model
        self.norm_attn = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D)
        self.attn_dropout = nn.Dropout(config.attn_dropout)
        self.out_proj = nn.Linear(D, D)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_ff = nn.LayerNorm(D)
        self.ff = FeedForward(D, config.d_ff, config.dropout)
        self.recompute_ffn_hidden = config.recompute_ffn_hidden
        self.ffn_gelu_in_gemm = config.ffn_gelu_in_gemm

    def forward(self, x: torch.Tensor, mask: torch.Tensor, gemm_params: Optional[dict] = None) -> torch.Tensor:
        """gemm_params: optional, the fused path's GEMM weights and biases
        (``gemm_parameters()``'s names) already in the GEMMs' dtype, e.g.
        the block's cast by one node (kernels.cast_together), as the model
        passes them under autocast (forward hooks see it as a third
        argument); the module path ignores it."""
        if kernels.fused_block_backend(self.backend, x) == "triton":
            return self._forward_fused(x, mask, gemm_params)
        return self._forward_modules(x, mask)

    def gemm_parameters(self) -> dict:
        """The parameters the fused path hands to a GEMM (under autocast each
        is cast to 16 bits for it), by name: the QKV projection's weight and
        bias, out_proj's weight (its bias is added in float32 by the FFN op),
        the FFN's two Linears."""
        ff = self.ff
        return {"qkv.weight": self.qkv.weight, "qkv.bias": self.qkv.bias, "out_proj.weight": self.out_proj.weight,
                "ff.fc1.weight": ff.fc1.weight, "ff.fc1.bias": ff.fc1.bias,
                "ff.fc2.weight": ff.fc2.weight, "ff.fc2.bias": ff.fc2.bias}

    def _forward_fused(self, x: torch.Tensor, mask: torch.Tensor, gemm_params: Optional[dict]) -> torch.Tensor:
        x, branch = self.fused_attention_half(x, mask, gemm_params)
        w = gemm_params or self.gemm_parameters()
        return kernels.residual_feed_forward(
            x, branch, self.norm_ff.weight, self.norm_ff.bias,
            w["ff.fc1.weight"], w["ff.fc1.bias"], w["ff.fc2.weight"], w["ff.fc2.bias"],
            dropout_p=self.ffn_dropout_p, eps=self.norm_ff.eps,
            recompute_hidden=self.recompute_ffn_hidden, branch_bias=self.out_proj.bias,
            gelu_in_gemm=self.ffn_gelu_in_gemm, backend="triton",
        )

    @property
    def ffn_dropout_p(self) -> float:
        return self.dropout.p if self.training else 0.0

    def fused_attention_half(self, x: torch.Tensor, mask: torch.Tensor,
                             gemm_params: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused path's first half: (x for the block's other uses, the
        attention branch out_proj(dropout(attention)) without out_proj's
        bias) before its residual add. The first is the copy the norm pass
        hands on (with grad), so the gradients of every later use of x are
        summed inside its norm backward, not by autograd in a separate (N, D)
        pass; the FFN op adds the bias (``branch_bias``) and sums its
        gradient in the pass that writes the branch's, not in a reduction
        of its own."""
        B, V, T, D = x.shape
        norm = self.norm_attn
        w = gemm_params or self.gemm_parameters()
        # Along time the QKV GEMM runs without its bias: the attention kernels
        # add it and sum its gradient from the tiles they write (no pass over
        # the (N, 3D) gradient). Along variables the GEMM keeps it: there the
        # in-kernel bias takes the backward kernel from 158 to ~240 registers
        # at sm_90 (docs/fused-block.md), to be weighed on a GPU.
        attention_bias = w["qkv.bias"] if self.axis == "time" else None
        gemm_bias = None if attention_bias is not None else w["qkv.bias"]
        args = (x, norm.weight, norm.bias, w["qkv.weight"], gemm_bias, norm.eps)
        if torch.is_grad_enabled():  # the copy pays off only in the backward
            qkv, x = kernels.layer_norm_linear(*args, return_residual=True, backend="triton")
        else:
            qkv = kernels.layer_norm_linear(*args, backend="triton")
        qkv = qkv.view(B, V, T, 3, self.n_heads, self.head_dim)
        attn = kernels.masked_attention_qkvpacked(qkv, mask, self.axis, bias=attention_bias,
                                                  backend=self.backend)  # [B, V, T, H, Dh]
        return x, F.linear(self.attn_dropout(attn).view(B, V, T, D), w["out_proj.weight"])

    def _forward_modules(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, V, T, D = x.shape
        # A view of the one projection, no copy: the kernel reads q, k, v by
        # strides, and the packed entry point writes their gradients into one
        # (B, V, T, 3, H, Dh) buffer instead of autograd stacking dq, dk, dv.
        qkv = self.qkv(self.norm_attn(x)).view(B, V, T, 3, self.n_heads, self.head_dim)
        attn = kernels.masked_attention_qkvpacked(qkv, mask, self.axis, backend=self.backend)  # [B, V, T, H, Dh]
        attn = self.attn_dropout(attn).view(B, V, T, D)
        x = x + self.dropout(self.out_proj(attn))
        return x + self.ff(self.norm_ff(x))


class GatedVariableBlock(nn.Module):
    """Variable-axis block followed by the gated residual norm.

    x <- x + sigmoid(gate(x)) * (LayerNorm(block(x)) - x), through
    ``kernels.gated_residual_norm``; on the triton backend the block's FFN
    half, the gate and the norm are one node (``kernels.gated_feed_forward``)
    after the block's attention half, so ``self.block`` is not called and
    hooks on it do not fire there: hook this module instead.
    """

    def __init__(self, config: MIGTConfig) -> None:
        super().__init__()
        self.block = AxisAttentionBlock(config, "variable")
        self.gate = nn.Linear(config.d_model, config.d_model)
        self.norm_weight = nn.Parameter(torch.ones(config.d_model))
        self.norm_bias = nn.Parameter(torch.zeros(config.d_model))
        self.eps = 1e-5
        self.backend = config.backend

    def forward(self, x: torch.Tensor, mask: torch.Tensor, gemm_params: Optional[dict] = None) -> torch.Tensor:
        """gemm_params as in AxisAttentionBlock.forward, ``gemm_parameters()``'s names."""
        if kernels.fused_block_backend(self.backend, x) == "triton":
            return self._forward_fused(x, mask, gemm_params)
        update = self.block(x, mask)
        return kernels.gated_residual_norm(
            x, update, self.gate(x), self.norm_weight, self.norm_bias, self.eps, backend=self.backend
        )

    def gemm_parameters(self) -> dict:
        """The block's GEMM parameters (AxisAttentionBlock.gemm_parameters,
        the same names) and the gate's."""
        return {**self.block.gemm_parameters(), "gate.weight": self.gate.weight, "gate.bias": self.gate.bias}

    def _forward_fused(self, x: torch.Tensor, mask: torch.Tensor, gemm_params: Optional[dict]) -> torch.Tensor:
        # the block's FFN half and this gated norm are one node, which sums
        # the gradients of x's three uses in its own passes
        block = self.block
        w = gemm_params or self.gemm_parameters()
        x, branch = block.fused_attention_half(x, mask, w)  # it reads its own names, not the gate's
        return kernels.gated_feed_forward(
            x, branch, block.norm_ff.weight, block.norm_ff.bias,
            w["ff.fc1.weight"], w["ff.fc1.bias"], w["ff.fc2.weight"], w["ff.fc2.bias"],
            w["gate.weight"], w["gate.bias"], self.norm_weight, self.norm_bias,
            dropout_p=block.ffn_dropout_p, eps=block.norm_ff.eps, out_eps=self.eps,
            recompute_hidden=block.recompute_ffn_hidden, branch_bias=block.out_proj.bias,
            gelu_in_gemm=block.ffn_gelu_in_gemm, backend="triton",
        )
