"""Every launch setting a tuning run may pick for the attention kernels
(kernels.attention_launch.LAUNCH_CANDIDATES, timed by bench.kernel_times
--attention-sweep) against the float64 reference: output, dq, dk, dv and
the QKV bias gradient, with padding, gaps, an all-padding sample and NaN at
padded steps, T past the largest block. So a GPU measurement can make any
of them the table's without a correctness question left. An override
applies to 16-bit inputs at Dh=32 only (and 17-32 variables along
variables): the tests run float16, whose dots the interpreter gets right
(bfloat16's it does not).

Under the interpreter the block sizes and steps per program change what is
computed (loop bounds, tails, padding); warps and stages do not, and are
checked on the GPU (bench.gpu_parity runs the table) and by compile_check.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels import attention_launch, reference
from helpers import assert_close, poison_padding, random_mask
from test_attention_triton import DEVICE, check_parity, make_inputs, nan_filled_buffers  # noqa: F401
from test_block_boundaries import T as T_BOUNDARY, boundary_masks, check_against_reference

attention = pytest.importorskip("kernels.attention")
ROOT = Path(__file__).resolve().parents[1]

# T=133: past 128, the largest block, and a multiple of none of the sizes
TIME_SHAPE = (5, 1, 133, 2, 32)
VAR_SHAPE = (5, 24, 37, 1, 32)  # 37 steps: a tail for 4, 8 and 16 steps per program
TABLE = {kernel: settings[0] for kernel, settings in attention_launch.LAUNCH_CANDIDATES.items()}


def _tiles(kernel, setting):
    """What the interpreter computes differently: the blocks along time, the
    steps per program along variables (not warps or stages)."""
    return setting[:1] if kernel.startswith("var") else setting[:2]


def _alternatives():
    on_gpu = DEVICE == "cuda"
    for kernel, settings in attention_launch.LAUNCH_CANDIDATES.items():
        seen = {_tiles(kernel, settings[0])}
        for setting in settings[1:]:
            if not on_gpu and _tiles(kernel, setting) in seen:
                continue  # the same computation as one tested already
            seen.add(_tiles(kernel, setting))
            yield pytest.param(kernel, setting, id=f"{kernel}-{'x'.join(map(str, setting))}")


ALTERNATIVES = list(_alternatives())


@pytest.fixture
def launches(monkeypatch):
    """(kernel name, its launch keyword arguments) of every Triton launch."""
    kernel_class = type(attention._time_fwd_kernel)  # JITFunction, or InterpretedFunction under the interpreter
    seen, run = [], kernel_class.run

    def recording_run(fn, *args, **kwargs):
        seen.append((fn.fn.__name__, kwargs))
        return run(fn, *args, **kwargs)

    monkeypatch.setattr(kernel_class, "run", recording_run)
    return seen


def test_table_is_each_kernels_first_candidate():
    """LAUNCH_CANDIDATES starts with what the kernels run without an override
    at the model's head dim, so the sweep's first row is the baseline."""
    for kernel in ("fwd", "dq", "dkdv"):
        assert attention_launch.time_blocks(32, kernel, torch.bfloat16) == TABLE[kernel]
    for kernel in ("var_fwd", "var_bwd"):
        assert attention_launch.var_blocks(24, 32, kernel)[1:] == TABLE[kernel]


@pytest.mark.parametrize("kernel,setting", ALTERNATIVES)
def test_launch_setting_matches_float64_reference(kernel, setting, monkeypatch, launches):
    axis = "variable" if kernel.startswith("var") else "time"
    shape = VAR_SHAPE if axis == "variable" else TIME_SHAPE
    monkeypatch.setitem(attention_launch.LAUNCH_OVERRIDE, kernel, setting)
    mask = random_mask(shape[0], shape[2], seed=21)
    qkv, ref_qkv = make_inputs(shape, torch.float16, mask, seed=5)
    H, Dh = shape[3], shape[4]
    bias = torch.randn(3 * H * Dh, generator=torch.Generator().manual_seed(6)).half().to(DEVICE).requires_grad_()
    ref_bias = bias.detach().double().cpu().requires_grad_()  # the same rounded values
    grad_out = poison_padding(torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7)),
                              mask, 2)
    out = kernels.masked_attention_qkvpacked(qkv, mask.to(DEVICE), axis, bias=bias, backend="triton")
    grad, dbias = torch.autograd.grad(out, (qkv, bias), grad_out.half().to(DEVICE))
    rq, rk, rv = (ref_qkv + ref_bias.view(3, H, Dh)).unbind(3)
    ref_out = reference.attention(rq, rk, rv, mask, axis)
    ref_grad, ref_dbias = torch.autograd.grad(ref_out, (ref_qkv, ref_bias), grad_out.nan_to_num())
    check_parity(out, grad, ref_out, ref_grad, mask, 1e-2, 1e-2, 1e-2)  # as the fp16 cases of test_attention_triton
    dbias, ref_dbias = dbias.cpu().view(3, H, Dh), ref_dbias.view(3, H, Dh)
    for i, name in ((0, "dbq"), (2, "dbv")):
        assert_close(dbias[i], ref_dbias[i], atol=1e-2, rtol=1e-2, name=name)

    # the override reached the kernel it names, and only that one
    name = {"fwd": "_time_fwd_kernel", "dq": "_time_bwd_dq_kernel", "dkdv": "_time_bwd_dkdv_kernel"}.get(
        kernel, "_var_kernel")
    ran = [args for fn, args in launches if fn == name]
    if axis == "time":
        assert len(ran) == 1
        block_m, block_n, warps, stages = setting
        assert (ran[0]["BLOCK_M"], ran[0]["BLOCK_N"], ran[0]["num_warps"], ran[0]["NUM_STAGES"]) == setting
    else:
        backward = kernel == "var_bwd"
        (args,) = [a for a in ran if a["BACKWARD"] == backward]
        (other,) = [a for a in ran if a["BACKWARD"] != backward]
        assert (args["STEPS"], args["num_warps"]) == setting
        assert (other["STEPS"], other["num_warps"]) == TABLE["var_fwd" if backward else "var_bwd"]


@pytest.mark.parametrize("kernel,setting", [p for p in ALTERNATIVES if not p.values[0].startswith("var")])
def test_time_setting_on_block_boundaries(kernel, setting, monkeypatch):
    """Valid spans starting and ending on and next to every 32-, 64- and
    128-step boundary (tests/test_block_boundaries.py's masks) under each
    time setting: its loop bounds are computed from its own block sizes."""
    monkeypatch.setitem(attention_launch.LAUNCH_OVERRIDE, kernel, setting)
    mask = boundary_masks(T_BOUNDARY, (32, 64, 128))
    check_against_reference((mask.shape[0], 1, T_BOUNDARY, 1, 32), mask, "time", 1e-2, torch.float16)


@pytest.mark.parametrize("steps", sorted({s[0] for k in ("var_fwd", "var_bwd")
                                          for s in attention_launch.LAUNCH_CANDIDATES[k]} - {8}))
def test_variable_steps_per_program_on_block_boundaries(steps, monkeypatch):
    """Spans ending on and next to multiples of 4, 8 and 16 steps with
    ``steps`` steps per program, forward and backward."""
    monkeypatch.setitem(attention_launch.LAUNCH_OVERRIDE, "var_fwd", (steps, 2))
    monkeypatch.setitem(attention_launch.LAUNCH_OVERRIDE, "var_bwd", (steps, 2))
    mask = boundary_masks(17, (4, 8, 16))
    check_against_reference((mask.shape[0], 24, 17, 1, 32), mask, "variable", 1e-2, torch.float16)


def test_override_applies_in_the_tuned_case_only(monkeypatch):
    """The candidates are compiled and tested at Dh=32 with 16-bit inputs
    (and a 32-row variable tile); any other case keeps the table whatever
    is overridden."""
    monkeypatch.setitem(attention_launch.LAUNCH_OVERRIDE, "fwd", (128, 64, 8, 3))
    monkeypatch.setitem(attention_launch.LAUNCH_OVERRIDE, "var_bwd", (16, 2))
    assert attention_launch.time_blocks(32, "fwd") == (128, 64, 8, 3)
    assert attention_launch.time_blocks(32, "fwd", torch.float16) == (128, 64, 8, 3)
    assert attention_launch.time_blocks(32, "fwd", torch.float32) == (64, 64, 4, 1)
    assert attention_launch.time_blocks(16, "fwd") == (64, 64, 4, 3)
    assert attention_launch.time_blocks(128, "fwd") == (64, 32, 4, 3)
    assert attention_launch.time_blocks(32, "dq") == (64, 64, 4, 3)
    assert attention_launch.var_blocks(24, 32, "var_bwd") == (32, 16, 2)
    assert attention_launch.var_blocks(17, 32, "var_bwd", torch.float16) == (32, 16, 2)
    assert attention_launch.var_blocks(24, 32, "var_bwd", torch.float32) == (32, 8, 2)
    assert attention_launch.var_blocks(24, 64, "var_bwd") == (32, 8, 2)
    assert attention_launch.var_blocks(16, 32, "var_bwd") == (16, 8, 2)
    assert attention_launch.var_blocks(40, 32, "var_bwd") == (64, 8, 4)
    assert attention_launch.var_blocks(24, 32, "var_fwd") == (32, 8, 2)


def test_parse_settings():
    parse = attention_launch.parse_settings
    assert parse("") == {}
    assert parse(" fwd=128x64x8x3, var_bwd=8x4 ,") == {"fwd": (128, 64, 8, 3), "var_bwd": (8, 4)}
    with pytest.raises(ValueError, match=r"MIGT_ATTENTION_LAUNCH: unknown kernel 'bwd'.*fwd, dq, dkdv"):
        parse("bwd=64x64x4x3")
    # a setting no test has checked is refused, with the ones that are allowed
    with pytest.raises(ValueError, match=r"fwd='32x64x4x3' is not a tested setting of fwd; expected one of 64x64x4x3"):
        parse("fwd=32x64x4x3")
    with pytest.raises(ValueError, match=r"dq='64x64' is not a tested setting"):
        parse("dq=64x64")
    with pytest.raises(ValueError, match=r"var_fwd='eight' is not a tested setting"):
        parse("var_fwd=eight")


@pytest.mark.parametrize("value,expect", [
    ("fwd=128x64x8x3,dkdv=64x64x4x2", "{'fwd': (128, 64, 8, 3), 'dkdv': (64, 64, 4, 2)}"),
    ("fwd=1x2x3x4", "MIGT_ATTENTION_LAUNCH: fwd='1x2x3x4' is not a tested setting of fwd"),
])
def test_environment_sets_overrides_on_import(value, expect):
    code = "from kernels import attention_launch; print(attention_launch.LAUNCH_OVERRIDE)"
    env = dict(os.environ, MIGT_ATTENTION_LAUNCH=value, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert expect in proc.stdout + proc.stderr
    assert (proc.returncode == 0) == value.startswith("fwd=128")
