"""How the fused FFN (kernels/feed_forward.py) splits a large batch into
chunks of rows. Free of Triton, so the memory model (bench/memory_model.py)
can use it on a machine without it.

The (rows, d_ff) tensors of a large batch are made a chunk of rows at a
time: the forward's GELU output and the backward's working set (the hidden's
gradient, g again, a recomputed hidden) never exist for the whole batch.
1 GiB per (rows, d_ff) tensor: one chunk up to B=64 at the seed config in
bf16 (0.84 GiB), so that step is unchanged; seven chunks at B=512.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

HIDDEN_CHUNK_BYTES = 1 << 30
CHUNK_ROW_MULTIPLE = 128  # chunk starts aligned for the GEMMs and row tiles


def row_chunks(N: int, C: int, itemsize: int) -> list[tuple[int, int]]:
    """[start, end) row ranges whose (rows, C) tensors of ``itemsize`` bytes
    fit HIDDEN_CHUNK_BYTES; one (empty) range when N == 0."""
    rows = HIDDEN_CHUNK_BYTES // max(1, C * itemsize) // CHUNK_ROW_MULTIPLE * CHUNK_ROW_MULTIPLE
    rows = max(CHUNK_ROW_MULTIPLE, rows)
    return [(start, min(N, start + rows)) for start in range(0, max(N, 1), rows)]


def mm_float32(a, b):
    """a @ b of 16-bit matrices with the result in float32, not rounded to
    16 bits: cuBLAS's float32 output (the accumulator it keeps anyway) on
    CUDA; elsewhere (the CPU tests) the float32 product of the same values.
    What a chunk's weight gradient is made in, to be summed over chunks."""
    if a.dtype not in (torch.float16, torch.bfloat16):
        return a @ b
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    with torch.autocast(a.device.type, enabled=False):  # a backward run under autocast would recast it
        return a.float() @ b.float()


class ChunkGradients:
    """Parameter gradients summed over chunks of rows. With one chunk each is
    kept as it comes; with several, each is summed in (at least) ``acc``,
    the compute dtype, and rounded once at the end to its declared dtype, as
    one whole-batch GEMM or reduction rounds it. ``declared``: per gradient
    its dtype, or None for the dtype the first chunk gives it."""

    def __init__(self, n_chunks: int, acc: torch.dtype, declared: Sequence[Optional[torch.dtype]]):
        self.several = n_chunks > 1
        self.acc = acc
        self.declared = list(declared)
        self.totals = None

    def add(self, grads: Sequence[torch.Tensor]) -> None:
        if self.totals is None:
            self.declared = [d if d is not None else g.dtype for d, g in zip(self.declared, grads)]
            self.totals = [g.to(torch.promote_types(g.dtype, self.acc)) if self.several else g for g in grads]
        else:
            for total, grad in zip(self.totals, grads):
                total.add_(grad)

    def result(self) -> tuple:
        return tuple(total.to(dtype) for total, dtype in zip(self.totals, self.declared))
