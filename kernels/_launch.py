"""Host-side helpers shared by the Triton norm kernels' launch code."""
from __future__ import annotations

import struct

import torch

# The RevIN and gated-norm kernels index with int32 element offsets (the
# fused block's kernels use int64).
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


# Persistent backward kernels (the norms' and the fused block's): a few
# programs per SM, each looping over row blocks, so the partial-sum buffer
# (programs x D) does not grow with N. Under the interpreter a few programs,
# so the tests exercise the loop. A kernel measured faster with another
# count passes its own (norm_linear, feed_forward).
BWD_PROGRAMS_PER_SM = 4
BWD_PROGRAMS_CPU = 4
# Software pipelining of those loops (tl.range's num_stages; the next row
# block's loads staged through shared memory while this one computes): 1, as
# measured on the H200; bench.kernel_times --sweep times 2 and 3. With 2, the
# FFN's norm backward compiles to 124 registers instead of 147 (4 programs
# resident per SM instead of 3) and 29 KB of shared memory.
BWD_LOOP_STAGES = 1
# Stages are only taken while the staged tiles fit this much shared memory;
# a wide or float64 tile stays unpipelined (compile_check's limit).
LOOP_STAGE_BYTES = 96 * 1024


def loop_stages(tile_elements: int, *loaded: torch.Tensor) -> int:
    """num_stages of a persistent loop that loads, per row block, a tile of
    tile_elements from each of ``loaded``: BWD_LOOP_STAGES when that many
    copies of those tiles fit LOOP_STAGE_BYTES, else 1."""
    stage_bytes = tile_elements * sum(t.element_size() for t in loaded)
    return BWD_LOOP_STAGES if BWD_LOOP_STAGES * stage_bytes <= LOOP_STAGE_BYTES else 1


def backward_programs(device: torch.device, n_blocks: int, per_sm: int | None = None) -> int:
    """Programs of a persistent backward over n_blocks row blocks
    (``per_sm`` programs per SM on CUDA, default BWD_PROGRAMS_PER_SM)."""
    if device.type == "cuda":
        per_device = torch.cuda.get_device_properties(device).multi_processor_count * (per_sm or BWD_PROGRAMS_PER_SM)
    else:
        per_device = BWD_PROGRAMS_CPU
    return max(1, min(n_blocks, per_device))
