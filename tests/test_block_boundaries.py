"""Triton attention with valid spans that start and end exactly on the block
boundaries of the kernels, along both axes, forward and backward, against the
float64 reference.

Why: the time kernels loop over the key (and query) blocks between a sample's
first valid step and its last valid step + 1; an off-by-one in those bounds
drops a whole step only when that step is the first of a block (the
"span ends one step short" mutant of _valid_span survived every other test).
So each boundary m (every block size in use, and its multiples up to T) gets
samples whose first valid step is m - 1 or m and whose last is m - 1 or m.
Along variables, steps are handled STEPS = 8 at a time per program and V is
padded to BLOCK_V (a power of two >= 16): spans end on multiples of 8 and V
sits on and just past each BLOCK_V.
"""
import pytest
import torch

from helpers import poison_padding
from test_attention_triton import check_parity, make_inputs, nan_filled_buffers, run_reference, run_triton  # noqa: F401

attention = pytest.importorskip("kernels.attention")
from kernels import attention_launch  # noqa: E402

# Every tile size the attention kernels use or may use after tuning (time
# blocks 64 and 32 today, 128 among the candidates; 8 steps per program
# today, 4 and 16 among the candidates, and BLOCK_V 16..128 along
# variables). A size that tuning adds goes here; test_block_sizes_are_covered
# fails until it does.
BLOCK_SIZES = (4, 8, 16, 32, 64, 128)
T = 131  # past 128, so a span can end on the 128 boundary and one step after it


def boundary_masks(steps, sizes):
    """(B, steps) bool: for each boundary m (each size in `sizes`): spans
    [m-1, m+1), [m, steps), [0, m), [0, m+1); then one valid step at every
    block start and one at every block end of the smallest size."""
    rows = []
    for m in sizes:
        if m + 1 > steps:
            continue
        for lo, hi in ((m - 1, m + 1), (m, steps), (0, m), (0, m + 1)):
            row = torch.zeros(steps, dtype=torch.bool)
            row[lo:hi] = True
            rows.append(row)
    step = min(sizes)
    for first in (0, step - 1):
        row = torch.zeros(steps, dtype=torch.bool)
        row[first::step] = True
        rows.append(row)
    return torch.stack(rows)


def check_against_reference(shape, mask, axis, tol, dtype=torch.float32):
    qkv, ref_qkv = make_inputs(shape, dtype, mask, seed=2)
    grad_out = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grad_out = poison_padding(grad_out, mask, 2)  # padded outputs are constants: their gradient is ignored
    out, grad = run_triton(qkv, mask, axis, grad_out.to(dtype))
    ref_out, ref_grad = run_reference(ref_qkv, mask, axis, grad_out.nan_to_num())
    check_parity(out, grad, ref_out, ref_grad, mask, tol, tol, tol)


# Dh 16 takes 64 x 64 time tiles forward and backward, Dh 128 takes 64 x 32
# forward and 32 x 32 backward (kernels/attention_launch.py, time_blocks).
@pytest.mark.parametrize("head_dim", [16, 128])
def test_time_spans_on_block_boundaries(head_dim):
    mask = boundary_masks(T, (16, 32, 64, 128))
    check_against_reference((mask.shape[0], 1, T, 1, head_dim), mask, "time", 1e-5)


# V on and just past BLOCK_V 16 and 64 (V=17 takes the 32 tile, V=65 the 128
# one); spans on multiples of the 8 steps of a program. Each step is computed
# on its own, so a few chunks of 8 are enough.
@pytest.mark.parametrize("n_vars", [16, 17, 64, 65])
def test_variable_spans_on_block_boundaries(n_vars):
    steps = 17
    mask = boundary_masks(steps, (8, 16))
    check_against_reference((mask.shape[0], n_vars, steps, 1, 16), mask, "variable", 1e-5)


def test_block_sizes_are_covered():
    """The tile sizes the host code picks today, or may pick after tuning
    (kernels.attention_launch.LAUNCH_CANDIDATES), are all in BLOCK_SIZES
    (the helpers' first return values are the tile sizes; launch options
    follow)."""
    used = set()
    for head_dim in attention.SUPPORTED_HEAD_DIMS:
        for kernel in ("fwd", "dq", "dkdv"):
            used |= set(attention_launch.time_blocks(head_dim, kernel)[:2])  # BLOCK_M, BLOCK_N
    for n_vars in (1, 16, 17, 24, 33, 64, 65, 128):
        used |= set(attention_launch.var_blocks(n_vars, 16)[:2])  # BLOCK_V, STEPS
    # and every setting a tuning run may make the table's
    for kernel, settings in attention_launch.LAUNCH_CANDIDATES.items():
        for setting in settings:
            used |= {setting[0]} if kernel.startswith("var") else set(setting[:2])
    assert used <= set(BLOCK_SIZES), f"block sizes {sorted(used - set(BLOCK_SIZES))} are not tested here"
