"""Many parameters cast to one dtype by one node: a concatenation and one
cast forward, a concatenation and one cast of their gradients backward.

Under autocast every GEMM casts its float32 weight and bias itself: one
small kernel per tensor forward, and one more per tensor backward (the
16-bit gradient cast back to float32). The fused model has 46 such tensors
in its blocks, so about 90 launches a step that move almost nothing (their
GPU time and, more, their host time). Cast together, the blocks' GEMMs get
16-bit tensors that need no cast, and the values and gradients are the
same bit for bit: each element is rounded once either way, and each
gradient is the same 16-bit value cast to float32.
"""
from __future__ import annotations

from typing import Sequence

import torch


class _CastTogether(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dtype, *tensors):
        ctx.shapes = [t.shape for t in tensors]
        ctx.in_dtype = tensors[0].dtype
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(dtype)
        return tuple(part.view(shape) for part, shape in zip(flat.split([t.numel() for t in tensors]), ctx.shapes))

    @staticmethod
    def backward(ctx, *grads):
        # (autograd hands a result that got no gradient zeros: materialize_grads)
        flat = torch.cat([g.reshape(-1) for g in grads]).to(ctx.in_dtype)  # one cast, not one per tensor
        sizes = [shape.numel() for shape in ctx.shapes]
        return (None, *(part.view(shape) for part, shape in zip(flat.split(sizes), ctx.shapes)))


def cast_together(tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The tensors cast to ``dtype``, as one autograd node: (t.to(dtype) for
    t in tensors) with the same values and gradients, in two kernel launches
    each way instead of one per tensor. The results are views of one buffer
    (contiguous, each its tensor's shape).

    tensors: non-empty, floating point, one dtype and one device.
    """
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cast_together: tensors must not be empty")
    first = tensors[0]
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"cast_together: tensors[{i}] must be a floating-point tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
        if t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"cast_together: tensors[{i}] is {t.dtype} on {t.device}, expected "
                             f"{first.dtype} on {first.device} like tensors[0]")
    if not dtype.is_floating_point:
        raise TypeError(f"cast_together: dtype must be a floating-point dtype, got {dtype}")
    return _CastTogether.apply(dtype, *tensors)
