"""Dropout masks that are never stored: Philox4x32-10 keyed by a seed and
counted by the element's index.

The Triton kernels draw each element's keep bit inline (kernels/_tiles.py,
``keep_tile``) from (seed, position); the backward draws it again instead of
reading a saved byte mask. A tensor is seen as rows of n_cols (its last
dim); each Philox call (triton.language's ``randint4x``: counter (group low,
group high, 0, 0), key (seed low, seed high), four 32-bit words) gives eight
16-bit draws, one for each of eight neighbouring columns: element (row, col)
of group j = row * ceil(n_cols / 8) + col // 8 takes half h = col % 2 (low
half first) of word w = (col % 8) // 2. The integer work per element is an
eighth of a call: the GELU + dropout passes are bound by instruction issue on
an H200, and four columns per call (24-bit draws, before) cost 11% more
instructions there (SASS counts: docs/kernel-tuning.md).
This module is the same generator written in plain PyTorch, bit for bit, so
the reference backend reproduces the kernels' masks on any device without
Triton, and tests can compare the two.

Seeds come from torch's generator of the tensors' device (``new_seeds``):
``torch.manual_seed`` reproduces a run, and activation checkpointing, which
restores the RNG state before its recompute, draws the same seeds again.
"""
from __future__ import annotations

import torch

_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
N_ROUNDS = 10
# Keep bits compare a 16-bit draw against round(p * 2**16): p is resolved to
# 2**-16 (1.5e-5; p=0.1 keeps 0.999993x of the expected 0.9), far below the
# noise of a keep rate over any tensor the model drops from. A p that rounds
# to no drop at all, or to no keep, is refused (threshold).
THRESHOLD_BITS = 16
DRAWS_PER_CALL = 4 * 32 // THRESHOLD_BITS


def new_seeds(n: int, device) -> torch.Tensor:
    """n independent int64 seeds from torch's generator for ``device``."""
    info = torch.iinfo(torch.int64)
    return torch.randint(info.min, info.max, (n,), dtype=torch.int64, device=device)


def threshold(p: float) -> int:
    """The integer cut of dropout probability p: an element is kept when its
    16-bit draw is >= threshold(p)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    cut = round(p * 2**THRESHOLD_BITS)
    if (p > 0.0 and cut == 0) or cut == 2**THRESHOLD_BITS:
        raise ValueError(f"dropout probability p={p} is within 2**-{THRESHOLD_BITS + 1} of 0 or 1, below the "
                         f"resolution of the {THRESHOLD_BITS}-bit draws: it would drop {'nothing' if cut == 0 else 'everything'}")
    return cut


def _mul_hi_lo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of a * b for a (int64 holding uint32) and b < 2**32,
    in 16-bit pieces so no int64 product overflows."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    low_part = a * b_lo  # < 2**48
    high_part = a * b_hi  # < 2**48
    low_full = low_part + ((high_part & 0xFFFF) << 16)
    return (high_part >> 16) + (low_full >> 32), low_full & _MASK32


def philox4x32(seed: int, counters: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """triton.language.randint4x(seed, counters) for int64 counters: the four
    uint32 words of Philox4x32-10, as int64 values in [0, 2**32)."""
    counters = counters.to(torch.int64)
    c0 = counters & _MASK32
    c1 = (counters >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(N_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(c2, _ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _ROUND_A)
        c0, c2 = hi_b ^ c1 ^ k0, hi_a ^ c3 ^ k1
        c1, c3 = lo_b, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def keep_mask(seed: torch.Tensor, shape, p: float) -> torch.Tensor:
    """The kernels' keep mask (bool, ``shape``) for one int64 seed (a 0-dim or
    1-element tensor): element (row, col) of the (rows, shape[-1]) view is
    kept when its 16-bit draw (module docstring) is >= threshold(p)."""
    cut = threshold(p)
    n_cols = int(shape[-1])
    rows = 1
    for size in shape[:-1]:
        rows *= int(size)
    groups_per_row = -(-n_cols // DRAWS_PER_CALL)
    counters = torch.arange(rows * groups_per_row, dtype=torch.int64, device=seed.device)
    words = torch.stack(philox4x32(int(seed.reshape(()).item()), counters), dim=-1)  # [groups, 4]
    draws = torch.stack((words & 0xFFFF, words >> 16), dim=-1)  # [groups, 4 words, 2 halves]
    draws = draws.view(rows, groups_per_row * DRAWS_PER_CALL)[:, :n_cols]
    return (draws >= cut).view(*shape)
