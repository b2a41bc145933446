"""Dropout masks that are never stored: Philox4x32-10 keyed by a seed and
counted by the element's index.

The Triton kernels draw each element's keep bit inline (kernels/_tiles.py,
``keep_bits``) from (seed, flat element index); the backward draws it again
from the same pair instead of reading a saved byte mask. This module is the
same generator written in plain PyTorch, bit for bit (triton.language's
``randint``: 32-bit Philox, counter (index low, index high, 0, 0), key
(seed low, seed high)), so the reference backend reproduces the kernels'
masks on any device without Triton, and tests can compare the two.

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
# Keep bits compare the top 24 bits of the draw against p * 2**24: an int32
# comparison on the GPU, and p is resolved to 6e-8, far below any use.
THRESHOLD_BITS = 24


def new_seeds(n: int, device) -> torch.Tensor:
    """n independent int64 seeds from torch's generator for ``device``."""
    info = torch.iinfo(torch.int64)
    return torch.randint(info.min, info.max, (n,), dtype=torch.int64, device=device)


def threshold(p: float) -> int:
    """The integer cut of dropout probability p: an element is kept when its
    draw's top 24 bits are >= threshold(p)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return round(p * 2**THRESHOLD_BITS)


def _mul_hi_lo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of a * b for a (int64 holding uint32) and b < 2**32,
    in 16-bit pieces so no int64 product overflows."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    low_part = a * b_lo  # < 2**48
    high_part = a * b_hi  # < 2**48
    low_full = low_part + ((high_part & 0xFFFF) << 16)
    return (high_part >> 16) + (low_full >> 32), low_full & _MASK32


def philox_uint32(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """triton.language.randint(seed, offsets) for int64 offsets: the first
    uint32 word of Philox4x32-10, as int64 values in [0, 2**32)."""
    offsets = offsets.to(torch.int64)
    c0 = offsets & _MASK32
    c1 = (offsets >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(N_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(c2, _ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _ROUND_A)
        c0, c2 = hi_b ^ c1 ^ k0, hi_a ^ c3 ^ k1
        c1, c3 = lo_b, lo_a
        k0, k1 = (k0 + _KEY_A) & _MASK32, (k1 + _KEY_B) & _MASK32
    return c0


def keep_mask(seed: torch.Tensor, shape, p: float) -> torch.Tensor:
    """The kernels' keep mask (bool, ``shape``) for one int64 seed (a 0-dim or
    1-element tensor): element i (flat, row-major) is kept when its draw's top
    24 bits are >= threshold(p)."""
    cut = threshold(p)
    numel = 1
    for size in shape:
        numel *= int(size)
    offsets = torch.arange(numel, dtype=torch.int64, device=seed.device)
    bits = philox_uint32(int(seed.reshape(()).item()), offsets) >> (32 - THRESHOLD_BITS)
    return (bits >= cut).view(*shape)
