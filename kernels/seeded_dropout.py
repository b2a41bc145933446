"""Dropout with no stored mask (the "triton" backend of kernels.dropout):
y = dropout(x) over the rows of x's last dim, keep bits drawn from the
Philox seed seeds[0] (kernels/philox.py); the backward draws the same bits
again from the seed and applies them, with the same 1/(1-p) scale, to the
output gradient. The backward keeps only the seed: no mask, no input.

It runs the row kernel of kernels/feed_forward.py (``_dropout_add_kernel``
without the added tensor, the kernel of the blocks' output dropout and its
backward), at site 0, so the mask is philox.keep_mask(seeds[0], x.shape, p),
the one the reference backend builds.
"""
from __future__ import annotations

from typing import Optional

import torch

from .feed_forward import _dropout_rows
from .norm_linear import MAX_D, dropout_args

SITE = 0  # seeds[0]: kernels.dropout draws one seed


def unsupported_reason(x: torch.Tensor) -> Optional[str]:
    D = x.shape[-1]
    if D > MAX_D:
        return f"D={D} is over {MAX_D} (a row must fit one block)"
    return None


def dropout_rows(x: torch.Tensor, seeds: torch.Tensor, p: float) -> torch.Tensor:
    """dropout(x) at site 0, a new contiguous tensor of x's shape and dtype
    (a copy of x when p == 0 or seeds is empty: a custom op must not return
    its input)."""
    has_dropout, cut, scale_hi, scale_lo = dropout_args(seeds, p)
    if not has_dropout:
        return x.clone(memory_format=torch.contiguous_format)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    D = x.shape[-1]
    _dropout_rows(None, x.reshape(-1, D), seeds.contiguous(), SITE, cut, scale_hi, scale_lo, out.view(-1, D))
    return out


# ------------------------------------------------------ custom-op registration


@torch.library.custom_op("migt::dropout", mutates_args=())
def _dropout_op(x: torch.Tensor, seeds: torch.Tensor, p: float) -> torch.Tensor:
    return dropout_rows(x, seeds, p)


@_dropout_op.register_fake
def _(x, seeds, p):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    _, seeds, p = inputs
    ctx.p = p
    ctx.save_for_backward(seeds)  # the only thing kept: the mask is redrawn from it


def _backward(ctx, dy):
    (seeds,) = ctx.saved_tensors
    # the same mask and scale on the output gradient: the op itself, which
    # is then its own backward too (double backward of dropout)
    return _dropout_op(dy.contiguous(), seeds, ctx.p), None, None


_dropout_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------ public function


def dropout(x: torch.Tensor, seeds: torch.Tensor, p: float) -> torch.Tensor:
    """dropout(x) with keep bits from seeds[0]; x made contiguous, p > 0 and
    seeds int64 with at least one element (kernels.dropout checks them).
    Returns a new tensor of x's shape and dtype."""
    return _dropout_op(x.contiguous(), seeds.contiguous(), float(p))
