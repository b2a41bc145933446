"""Launch settings of the attention kernels (kernels/attention.py): the
table they run with, the settings a tuning run compares, and how one is
swapped in.

The table: along time (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel
("fwd", "dq", "dkdv"; the dk/dv kernel keeps a BLOCK_N key tile and loops
over BLOCK_M query blocks); along variables (BLOCK_V, STEPS, num_warps),
"var_fwd" and "var_bwd".

A tuning run (``python -m bench.kernel_times --attention-sweep``) times every
setting of LAUNCH_CANDIDATES at the model's shapes, each swapped in through
LAUNCH_OVERRIDE. Every candidate is parity-tested against the reference
(tests/test_attention_launch.py) and compiled for sm_90 by compile_check, in
the case an override applies to and only there: Dh=32 (the model's), 16-bit
inputs and, along variables, 17 to 32 variables (a 32-row tile). The
environment variable MIGT_ATTENTION_LAUNCH (e.g. "fwd=128x64x8x3,var_bwd=8x4")
sets overrides when this module is imported, so a whole training step can
be timed with a sweep's winners before they become the table; a setting
that is not a candidate is refused.
"""
from __future__ import annotations

import contextlib
import os

import torch

from ._launch import next_power_of_2

ENV_VAR = "MIGT_ATTENTION_LAUNCH"
# The case the candidates are compiled and tested in (the model's); any
# other always takes the table.
TUNED_HEAD_DIM = 32
TUNED_BLOCK_V = 32
TUNED_DTYPES = (torch.float16, torch.bfloat16)

# Software-pipeline depth of the time kernels' block loops for fp16/bf16:
# 3, triton's default for sm_90 (which the loops always asked for, but their
# in-loop branch kept the pipeliner from applying it). 2 would also pipeline
# and compiles to the same registers at Dh=32, but spills 8 B in the Dh=128
# dq kernel. float32 (exact products, the slow path) is not pipelined: its
# fp32 tiles in shared memory push the dk/dv kernel from 864 B to 14 KB of
# spills at Dh=64.
TIME_NUM_STAGES = 3

# The settings a tuning run compares at Dh=32, the table's first, by kernel:
# "fwd", "dq", "dkdv" -> (BLOCK_M, BLOCK_N, num_warps, num_stages) along
# time, "var_fwd", "var_bwd" -> (STEPS, num_warps) along variables.
# Along time: 64-row blocks pad T=288 to 320 (23% more scores than valid),
# 32-key blocks end exactly at 288; 128-row tiles halve the programs and
# the K/V reads from L2; the stages trade shared memory for latency.
# Along variables: steps per program (T=288: 36 programs per (b, h) at 8)
# and warps per [BLOCK_V, Dh] tile. Not compared: a 32-row tile as the M of
# the dots (fwd/dq BLOCK_M, dk/dv BLOCK_N), below the 64 rows of a Hopper
# warpgroup MMA (2.2-3.8x the table's SASS per score at sm_90), and one warp
# along variables (255 registers in the backward). docs/kernel-tuning.md
# section 8.
LAUNCH_CANDIDATES = {
    "fwd": ((64, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 4), (64, 32, 4, 3), (128, 64, 8, 3), (128, 32, 8, 3),
            (64, 128, 4, 2)),
    "dq": ((64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3), (128, 64, 8, 3), (128, 32, 8, 3)),
    "dkdv": ((64, 64, 4, 3), (64, 64, 4, 2), (32, 64, 4, 3), (64, 128, 8, 3)),
    "var_fwd": ((8, 2), (4, 2), (16, 2), (8, 4)),
    "var_bwd": ((8, 2), (4, 2), (16, 2), (8, 4)),
}

# kernel -> one of its LAUNCH_CANDIDATES, in place of the table in the tuned case.
LAUNCH_OVERRIDE: dict = {}


def time_blocks(head_dim: int, kernel: str, dtype: torch.dtype = torch.bfloat16):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of time kernel ``kernel``.

    Real case T=288, Dh=32: 64-row tiles give 5 blocks per (b, v, h) with
    11% padding, and keep every dot >= 16 wide; Dh=128 halves the key tile
    (fwd) or both tiles (bwd, which keeps k, v, dk, dv or q, do, dq in
    registers) so the fp32 accumulators fit. float32 stays unpipelined.
    """
    if kernel in LAUNCH_OVERRIDE and head_dim == TUNED_HEAD_DIM and dtype in TUNED_DTYPES:
        block_m, block_n, warps, stages = LAUNCH_OVERRIDE[kernel]
    elif head_dim <= 64:
        block_m, block_n, warps, stages = 64, 64, 4, TIME_NUM_STAGES
    elif kernel == "fwd":
        block_m, block_n, warps, stages = 64, 32, 4, TIME_NUM_STAGES
    else:
        block_m, block_n, warps, stages = 32, 32, 4, TIME_NUM_STAGES
    return block_m, block_n, warps, (1 if dtype == torch.float32 else stages)


def var_blocks(n_vars: int, head_dim: int, kernel: str = "var_fwd", dtype: torch.dtype = torch.bfloat16):
    """(BLOCK_V, STEPS, num_warps) along variables (``kernel``: "var_fwd" or
    "var_bwd"): V padded to a power of two >= 16 (tl.dot needs 16), 8 steps
    per program (T=288 -> 36 programs per (b, h)), 2 warps for the small
    32x32 tiles of the real case (V=24), more for the wide tiles (the
    backward holds seven [BLOCK_V, Dh] or [BLOCK_V, BLOCK_V] tiles at once)."""
    block_v = max(16, next_power_of_2(n_vars))
    if kernel in LAUNCH_OVERRIDE and head_dim == TUNED_HEAD_DIM and block_v == TUNED_BLOCK_V and dtype in TUNED_DTYPES:
        return (block_v, *LAUNCH_OVERRIDE[kernel])
    tile = block_v * max(block_v, head_dim)
    warps = 2 if tile <= 32 * 64 else 4 if tile <= 64 * 64 else 8
    return block_v, 8, warps


@contextlib.contextmanager
def overridden(kernel: str, setting):
    """Only ``kernel`` overridden, with ``setting``, inside the block; the
    overrides (e.g. MIGT_ATTENTION_LAUNCH's) as they were afterwards. What a
    sweep or a compile check of one candidate runs under."""
    saved = dict(LAUNCH_OVERRIDE)
    LAUNCH_OVERRIDE.clear()
    LAUNCH_OVERRIDE[kernel] = setting
    try:
        yield
    finally:
        LAUNCH_OVERRIDE.clear()
        LAUNCH_OVERRIDE.update(saved)


def format_setting(setting) -> str:
    return "x".join(map(str, setting))


def parse_settings(text: str) -> dict:
    """"fwd=128x64x8x3,var_bwd=8x4" -> {"fwd": (128, 64, 8, 3), "var_bwd": (8, 4)};
    each must be one of its kernel's LAUNCH_CANDIDATES ('' -> {})."""
    settings = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kernel, _, value = item.partition("=")
        kernel = kernel.strip()
        if kernel not in LAUNCH_CANDIDATES:
            raise ValueError(f"{ENV_VAR}: unknown kernel {kernel!r} in {item!r}; "
                             f"expected one of {', '.join(LAUNCH_CANDIDATES)}")
        try:
            setting = tuple(int(n) for n in value.strip().split("x"))
        except ValueError:
            setting = None
        if setting not in LAUNCH_CANDIDATES[kernel]:
            choices = ", ".join(map(format_setting, LAUNCH_CANDIDATES[kernel]))
            raise ValueError(f"{ENV_VAR}: {kernel}={value.strip()!r} is not a tested setting of {kernel}; "
                             f"expected one of {choices}")
        settings[kernel] = setting
    return settings


LAUNCH_OVERRIDE.update(parse_settings(os.environ.get(ENV_VAR, "")))
