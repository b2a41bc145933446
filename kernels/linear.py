"""A Linear whose backward keeps its input as given (plain PyTorch, cuBLAS),
and the Linear backward the fused ops share.

Under autocast nn.Linear saves the bf16 copy it casts its input to. Where
that input is a float32 residual stream which other nodes keep anyway (the
variable blocks' gate reads the block input), the copy is D bytes per
token saved for nothing: ``linear_keep_input`` keeps the input itself and
casts it again in the backward.
"""
from __future__ import annotations

import torch

from .reference import compute_dtype


def linear_backward(dy, inp, weight, acc):
    """Gradients of y = inp @ weight.T + bias for 2-D dy and inp: (dinp,
    dweight, dbias), dbias summed in ``acc``."""
    return dy @ weight, dy.t() @ inp, dy.sum(0, dtype=acc)


@torch.library.custom_op("migt::linear_keep_input", mutates_args=())
def _linear_keep_input_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    D = x.shape[-1]
    y = torch.addmm(bias, x.reshape(-1, D).to(weight.dtype), weight.t())
    return y.view(*x.shape[:-1], weight.shape[0])


@_linear_keep_input_op.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=weight.dtype)


def _setup_context(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    D, D_out = x.shape[-1], weight.shape[0]
    dx, dweight, dbias = linear_backward(dy.reshape(-1, D_out), x.reshape(-1, D).to(weight.dtype), weight,
                                         compute_dtype(weight.dtype))
    return dx.view(x.shape), dweight, dbias.to(weight.dtype)  # autograd casts dx to x's dtype


_linear_keep_input_op.register_autograd(_backward, setup_context=_setup_context)


def linear_keep_input(x, weight, bias):
    """x @ weight.T + bias in weight's dtype, keeping x itself for the
    backward. x: (..., D); weight (D_out, D) and bias (D_out,) already in the
    GEMM's dtype."""
    return _linear_keep_input_op(x, weight, bias)
