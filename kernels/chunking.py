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

HIDDEN_CHUNK_BYTES = 1 << 30
CHUNK_ROW_MULTIPLE = 128  # chunk starts aligned for the GEMMs and row tiles


def row_chunks(N: int, C: int, itemsize: int) -> list[tuple[int, int]]:
    """[start, end) row ranges whose (rows, C) tensors of ``itemsize`` bytes
    fit HIDDEN_CHUNK_BYTES; one (empty) range when N == 0."""
    rows = HIDDEN_CHUNK_BYTES // max(1, C * itemsize) // CHUNK_ROW_MULTIPLE * CHUNK_ROW_MULTIPLE
    rows = max(CHUNK_ROW_MULTIPLE, rows)
    return [(start, min(N, start + rows)) for start in range(0, max(N, 1), rows)]
