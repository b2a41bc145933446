"""Many parameters cast to one dtype by one node: one concatenation that
casts as it writes, forward and backward.

Under autocast every GEMM casts its float32 weight and bias itself: one
small kernel per tensor forward, and one more per tensor backward (the
16-bit gradient cast back to float32). A fused block hands 7 to 9 such
tensors to its GEMMs, so the seed config's six blocks made about 90
launches a step that move almost nothing (their GPU time and, more, their
host time). Cast together, a block's GEMMs get 16-bit tensors that need no
cast, and the values and gradients are the same bit for bit: each element
is rounded once either way, and each gradient is the same 16-bit value cast
to float32.
"""
from __future__ import annotations

from typing import Sequence

import torch


def _cat_as(tensors, dtype):
    """The tensors flattened into one new 1-D tensor of ``dtype``: one
    kernel, cast on write (no concatenation in the source dtype first)."""
    first = tensors[0]
    out = torch.empty(sum(t.numel() for t in tensors), dtype=dtype, device=first.device)
    return torch.cat([t.reshape(-1) for t in tensors], out=out)


def _split_as(flat, shapes):
    return tuple(part.view(shape) for part, shape in zip(flat.split([s.numel() for s in shapes]), shapes))


class _CastTogether(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dtype, *tensors):
        ctx.shapes = [t.shape for t in tensors]
        ctx.in_dtype = tensors[0].dtype
        outs = _split_as(_cat_as(tensors, dtype), ctx.shapes)
        # a frozen tensor's copy needs no gradient: the ops that read it can skip theirs
        ctx.mark_non_differentiable(*(o for o, t in zip(outs, tensors) if not t.requires_grad))
        return outs

    @staticmethod
    def backward(ctx, *grads):
        # autograd hands a result that got no gradient zeros (materialize_grads)
        return (None, *_split_as(_cat_as(grads, ctx.in_dtype), ctx.shapes))


def cast_together(tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The tensors cast to ``dtype``, as one autograd node: (t.to(dtype) for
    t in tensors) with the same values and gradients, in one kernel launch
    each way instead of one per tensor. The results are views of one buffer
    (contiguous, each its tensor's shape); modifying one in place is an
    error. Gradients reach all the tensors when the node's backward runs,
    after every use of every result: cast together what is used together
    (the model casts per block, so a block's gradients are ready for an
    overlapping all-reduce as soon as its backward ends).

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
