"""Host-side helpers shared by the Triton norm kernels' launch code."""
from __future__ import annotations

import struct

import torch

# The norm kernels index with int32 element offsets.
INT32_LIMIT = 2**31 - 1


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch grids. triton.cdiv is a constexpr function whose
    wrapper costs ~3 us of host time a call; kernels this short feel that."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (1 for n <= 1), like triton.next_power_of_2
    without its ~3 us wrapper."""
    return 1 << max(n - 1, 0).bit_length()


def split_float32(value: float) -> tuple[float, float]:
    """value as hi + lo, both float32-exact: Triton passes a Python float to a
    kernel as float32, which would round eps in a float64 kernel. (struct
    rounds to nearest like a tensor cast, at a tenth of its host cost.)"""
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, value - hi


def max_offset(t: torch.Tensor) -> int:
    """The largest element offset any index of t reaches through its strides."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if size > 0)


def int32_indexable(t: torch.Tensor) -> torch.Tensor:
    """t, or a contiguous copy when its strides reach past int32 offsets.
    For upstream gradients, which unsupported_reason never saw: their numel
    equals a checked input's, so the copy is always indexable."""
    return t if max_offset(t) <= INT32_LIMIT else t.contiguous()
