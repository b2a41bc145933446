"""Compile every Triton kernel variant for a GPU, without a GPU.

    python -m bench.compile_check [--arch 90] [--quick] [--only MODULE ...] [--sass] [--loop-stages N]

The interpreter (TRITON_INTERPRET=1) proves that the kernels compute the
right function, not that they compile: code it accepts can still fail in
Triton's compiler. This check runs the real host code on CPU tensors with
every launch intercepted: each kernel is compiled for the target GPU
(triton ships ptxas, so no GPU or driver is needed) with exactly the
signature and constexprs the host chose, and never launched. It reports
each variant's shared memory, registers and spill stack (read from the
binary with triton's cuobjdump) and fails when one does not compile or
needs more shared memory than the target has (the driver would refuse it at
launch). Spills are reported, not failed: whether they cost time is for a
GPU run to show.

--sass adds each variant's SASS instruction count, and the instructions of
each loop body: the issue floor of a kernel that the instruction stream
bounds, not its bytes (the GELU + dropout passes on an H200): warp
instructions = instructions per tile x warps x tiles, issued at 4 per SM per
clock (docs/kernel-tuning.md, "Instruction counts"). --loop-stages N
compiles the persistent backward loops software-pipelined N deep
(kernels._launch.BWD_LOOP_STAGES), as bench.kernel_times --sweep runs them.

It must run in its own process: TRITON_INTERPRET has to be 0 before triton
is imported, which a test session (interpreter on) cannot undo.
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ["TRITON_INTERPRET"] = "0"
os.environ.pop("MIGT_BACKEND", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from bench import sass  # noqa: E402

# Largest dynamic shared memory per block (bytes) by compute capability.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CompileOnlyDriver:
    """The part of a Triton driver that compiling asks for: a device, a
    stream and the target. Loading or launching a binary is not possible."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _cuobjdump(kernel, option: str) -> str:
    """cuobjdump's output for a compiled kernel's binary ('' without cuobjdump)."""
    if not os.path.exists(CUOBJDUMP):
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([CUOBJDUMP, option, f.name], capture_output=True, text=True).stdout


def resource_usage(kernel) -> str:
    """'regs R stack S' of a compiled kernel (S > 0: register spills), or ''."""
    found = re.search(r"REG:(\d+) STACK:(\d+)", _cuobjdump(kernel, "--dump-resource-usage"))
    return f"regs {found[1]:>3} stack {found[2]:>4} B" if found else ""


def sass_summary(kernel) -> str:
    """'sass N loop L' of a compiled kernel (L: loop bodies, + between), or ''."""
    listing = _cuobjdump(kernel, "-sass")
    if not listing:
        return ""
    total, bodies = sass.counts(sass.instructions(listing))
    return f"sass {total:5d} loop {'+'.join(map(str, bodies)) or '-'}"


class LaunchRecorder:
    """Replaces JITFunction.run: compile (warmup=True never launches), record."""

    def __init__(self):
        self.compiled = {}  # (kernel name, cache key) -> compiled kernel
        self.label = ""
        self._run = JITFunction.run

    def __enter__(self):
        recorder = self

        def compile_only(fn, *args, grid, warmup, **kwargs):
            kernel = recorder._run(fn, *args, grid=grid, warmup=True, **kwargs)
            recorder.compiled.setdefault((fn.fn.__name__, kernel.hash), (recorder.label, kernel))
            return kernel

        JITFunction.run = compile_only
        return self

    def __exit__(self, *exc):
        JITFunction.run = self._run


def attention_cases(quick: bool):
    """(label, thunk) pairs: forward and backward of both entry points along
    both axes (the packed one with and without the QKV bias), for every head
    dim and dtype the kernel supports."""
    from kernels import attention

    head_dims = [32] if quick else [16, 32, 64, 128]
    for dtype, dh, axis, n_vars in itertools.product(DTYPES, head_dims, ("time", "variable"), (24, 128)):
        if axis == "time" and n_vars != 24:
            continue  # V only shapes the variable kernel
        qkv = torch.zeros(2, n_vars, 80, 3, 2, dh, dtype=DTYPES[dtype], requires_grad=True)
        mask = torch.ones(2, 80, dtype=torch.bool)
        q, k, v = qkv.unbind(3)
        if attention.unsupported_reason(q, k, v, mask, axis) is not None:
            continue
        label = f"attention {axis} V={n_vars} Dh={dh} {dtype}"

        def run(qkv=qkv, mask=mask, axis=axis):
            attention.masked_attention_qkvpacked(qkv, mask, axis).sum().backward()
            bias = torch.zeros(3 * qkv.shape[4] * qkv.shape[5], dtype=qkv.dtype, requires_grad=True)
            attention.masked_attention_qkvpacked(qkv, mask, axis, bias=bias).sum().backward()
            q, k, v = qkv.unbind(3)
            attention.masked_attention(q, k, v, mask, axis).sum().backward()

        yield label, run


def attention_launch_cases(quick: bool):
    """The attention kernels at the model's case (Dh=32, bf16, V=24, with the
    QKV bias along time) under each launch setting a tuning run compares
    (kernels.attention_launch.LAUNCH_CANDIDATES), the table's included."""
    from kernels import attention, attention_launch

    qkv = torch.zeros(2, 24, 80, 3, 2, 32, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.zeros(3 * 2 * 32, dtype=torch.bfloat16, requires_grad=True)
    mask = torch.ones(2, 80, dtype=torch.bool)
    for kernel, settings in attention_launch.LAUNCH_CANDIDATES.items():
        axis = "variable" if kernel.startswith("var") else "time"
        for setting in settings:
            def run(kernel=kernel, setting=setting, axis=axis):
                with attention_launch.overridden(kernel, setting):
                    attention.masked_attention_qkvpacked(qkv, mask, axis, bias=bias).sum().backward()

            yield f"attention {kernel} {attention_launch.format_setting(setting)}", run


def revin_cases(quick: bool):
    """Forward and backward in every dtype the op takes (float64 too): with
    every gradient, and the model's case (features need none, the loss reads
    y only), whose backward skips dx and the statistics' gradients."""
    from kernels import revin

    for dtype in [*DTYPES, "fp64"]:
        x = torch.zeros(2, 70, 24, dtype=DTYPES.get(dtype, torch.float64))
        w = torch.ones(24, requires_grad=True)
        mask = torch.ones(2, 70, dtype=torch.bool)

        def run(x=x, w=w, mask=mask):
            y, mean, std = revin.revin_normalize(x.requires_grad_(), mask, w, torch.zeros(24))
            (y.sum() + mean.sum() + std.sum()).backward()
            y, _, _ = revin.revin_normalize(x.detach(), mask, w, torch.zeros(24))
            y.sum().backward()

        yield f"revin {dtype}", run


def gated_norm_cases(quick: bool):
    """Forward and backward in every dtype, for a small, the model's and the largest D."""
    from kernels import gated_norm

    for dtype, d in itertools.product([*DTYPES, "fp64"], [256] if quick else [48, 256, 8192]):
        t = [torch.zeros(3, 5, d, dtype=DTYPES.get(dtype, torch.float64), requires_grad=True) for _ in range(3)]

        def run(t=t, d=d):
            gated_norm.gated_residual_norm(*t, torch.ones(d), torch.zeros(d)).sum().backward()

        yield f"gated_norm D={d} {dtype}", run


def fused_block_cases(quick: bool):
    """layer_norm_linear, residual_feed_forward and gated_feed_forward
    (kernels/norm_linear.py, feed_forward.py, ffn_gated_norm.py), forward
    and backward, with dropout and a branch bias (the model's case) and
    with neither,
    for the residual/GEMM dtype pairs the model runs (float32 stream under
    autocast, bf16 stream, no autocast) and float64, at a small, the model's
    and the largest D (and a hidden of 2D)."""
    from kernels import feed_forward, ffn_gated_norm, norm_linear

    pairs = [("fp32", "fp32"), ("fp32", "bf16"), ("fp32", "fp16"), ("bf16", "bf16"), ("fp64", "fp64")]
    cases = list(itertools.product(pairs, [256], (0.0, 0.1)))
    if not quick:  # other tile shapes: the widths change BLOCK_D, BLOCK_M and the warps
        cases += [(("fp32", "bf16"), d, 0.1) for d in (48, 8192)]
    for (res, gemm), d, p in cases:
        res_dtype, gemm_dtype = DTYPES.get(res, torch.float64), DTYPES.get(gemm, torch.float64)

        def run(res_dtype=res_dtype, gemm_dtype=gemm_dtype, d=d, p=p):
            x = torch.zeros(3, 5, d, dtype=res_dtype, requires_grad=True)
            branch = torch.zeros(3, 5, d, dtype=gemm_dtype, requires_grad=True)
            norm_w, norm_b = torch.ones(d, requires_grad=True), torch.zeros(d, requires_grad=True)
            w1 = torch.zeros(2 * d, d, dtype=gemm_dtype, requires_grad=True)
            b1 = torch.zeros(2 * d, dtype=gemm_dtype, requires_grad=True)
            w2 = torch.zeros(d, 2 * d, dtype=gemm_dtype, requires_grad=True)
            b2 = torch.zeros(d, dtype=gemm_dtype, requires_grad=True)
            seeds = torch.tensor([1, 2, 3]) if p else torch.empty(0, dtype=torch.int64)
            # with dropout the model's case, out_proj's bias added to the branch; without, no branch bias
            bb = torch.zeros(d, requires_grad=True) if p else None
            feed_forward.residual_feed_forward(x, branch, seeds, p, norm_w, norm_b, w1, b1, w2, b2,
                                               branch_bias=bb).sum().backward()
            # a variable block's tail: the gated norm's backward with the gate's outputs, the
            # FFN's norm backward adding x's other gradients
            gate_w = torch.zeros(d, d, dtype=gemm_dtype, requires_grad=True)
            gate_b = torch.zeros(d, dtype=gemm_dtype, requires_grad=True)
            ffn_gated_norm.gated_feed_forward(x, branch, seeds, p, norm_w, norm_b, w1, b1, w2, b2, gate_w, gate_b,
                                              norm_w, norm_b, branch_bias=bb).sum().backward()
            norm_linear.layer_norm_linear(x, norm_w, norm_b, w1, b1).sum().backward()
            # the block's form: x handed on, its gradient added in the norm backward
            y, residual = norm_linear.layer_norm_linear(x, norm_w, norm_b, w1, b1, return_residual=True)
            (y.float().sum() + residual.float().sum()).backward()

        yield f"fused_block {res}/{gemm} D={d} p={p}", run


def dropout_cases(quick: bool):
    """kernels.dropout (kernels/seeded_dropout.py): the feed_forward row kernel without
    the added tensor at site 0 (the embedding dropout), forward and backward,
    in each float dtype, at the model's D and (not quick) a small and the
    largest D."""
    from kernels import seeded_dropout as dropout

    widths = [256] if quick else [7, 256, 8192]
    for dtype, d in itertools.product(("fp32", "bf16", "fp16", "fp64"), widths):
        def run(dtype=DTYPES.get(dtype, torch.float64), d=d):
            x = torch.zeros(3, 5, d, dtype=dtype, requires_grad=True)
            dropout.dropout(x, torch.tensor([1]), 0.1).sum().backward()

        yield f"dropout D={d} {dtype}", run


def value_embedding_cases(quick: bool):
    """kernels.value_embedding (kernels/embedding.py), forward and backward,
    with and without dropout: float32 (the model), a bf16 stream written from
    float32 math, float64; at the model's D and (not quick) a small and the
    largest D."""
    from kernels import embedding

    variants = [("fp32", "fp32"), ("fp32", "bf16")] + ([] if quick else [("fp64", "fp64"), ("fp64", "bf16")])
    widths = [256] if quick else [7, 256, 8192]
    for (dtype, out), d, p in itertools.product(variants, widths, (0.0, 0.1)):
        def run(dtype=DTYPES.get(dtype, torch.float64), out=DTYPES.get(out, torch.float64), d=d, p=p):
            y = torch.zeros(2, 3, 5, dtype=dtype, requires_grad=True)
            w, b = torch.zeros(3, d, dtype=dtype, requires_grad=True), torch.zeros(3, d, dtype=dtype)
            pos = torch.zeros(2, 5, d, dtype=dtype)
            embedding.value_embedding(y, w, b, pos, torch.tensor([1]), p, out).float().sum().backward()

        yield f"value_embedding {dtype}->{out} D={d} p={p}", run


def pooling_cases(quick: bool):
    """kernels.norm_attention_pool (kernels/pooling.py), forward and backward:
    a float32 stream written in bf16 (the model under autocast), a bf16
    stream, float32 and float64; at the model's D and (not quick) a small
    and the largest D."""
    from kernels import pooling

    variants = [("fp32", "bf16"), ("bf16", "bf16")] + ([] if quick else [("fp32", "fp32"), ("fp64", "fp64")])
    widths = [256] if quick else [7, 256, 8192]
    for (dtype, out), d in itertools.product(variants, widths):
        def run(dtype=DTYPES.get(dtype, torch.float64), out=DTYPES.get(out, torch.float64), d=d):
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            x = torch.zeros(2, 3, 5, d, dtype=dtype, requires_grad=True)
            w, b = torch.ones(d, requires_grad=True), torch.zeros(d, requires_grad=True)
            kq, c = torch.zeros(d, dtype=acc, requires_grad=True), torch.zeros((), dtype=acc, requires_grad=True)
            mask = torch.ones(2, 5, dtype=torch.bool)
            pooling.norm_attention_pool(x, mask, w, b, 1e-5, kq, c, out).float().sum().backward()

        yield f"pooling {dtype}->{out} D={d}", run


def gelu_gemm_cases(quick: bool):
    """kernels/gelu_gemm.py (the FFN's ``gelu_in_gemm`` path): the forward
    GEMM writing hidden and g, and g alone (selective recompute), and the
    backward GEMM reading the hidden or making it again, with and without
    dropout, in both 16-bit dtypes (not quick); at the model's D and d_ff
    (K a multiple of the K step) and (not quick) an odd D."""
    from kernels import gelu_gemm

    dtypes = ("bf16",) if quick else ("bf16", "fp16")
    shapes = [(256, 1024)] + ([] if quick else [(48, 96)])
    for dtype, (d, c), p in itertools.product(dtypes, shapes, (0.0, 0.1)):
        def run(dtype=DTYPES[dtype], d=d, c=c, p=p):
            seeds = torch.tensor([1, 2, 3])
            h, w1, b1 = torch.zeros(200, d, dtype=dtype), torch.zeros(c, d, dtype=dtype), torch.zeros(c, dtype=dtype)
            hidden = torch.zeros(200, c, dtype=dtype)
            w2 = torch.zeros(d, c, dtype=dtype)
            gelu_gemm.fc1_gelu(h, w1, b1, seeds, p, 1, hidden=hidden)
            gelu_gemm.fc1_gelu(h, w1, b1, seeds, p, 1)
            gelu_gemm.dhidden_gelu(h, w2, hidden, seeds, p, 1)
            gelu_gemm.dhidden_gelu(h, w2, None, seeds, p, 1, recompute=(h, w1, b1))

        yield f"gelu_gemm {dtype} D={d} d_ff={c} p={p}", run


# One entry per kernel module: name -> function(quick) yielding (label, thunk)
# pairs, each thunk running the host code that launches that module's
# kernels. A new kernel module registers its variants here.
KERNEL_MODULES = {
    "attention": attention_cases,
    "attention_launch": attention_launch_cases,
    "revin": revin_cases,
    "gated_norm": gated_norm_cases,
    "fused_block": fused_block_cases,
    "dropout": dropout_cases,
    "value_embedding": value_embedding_cases,
    "pooling": pooling_cases,
    "gelu_gemm": gelu_gemm_cases,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100/H200), 80 (A100)")
    parser.add_argument("--quick", action="store_true", help="Dh=32 and D=256 only")
    parser.add_argument("--only", nargs="+", choices=sorted(KERNEL_MODULES), metavar="MODULE",
                        help=f"check these kernel modules only (of {', '.join(KERNEL_MODULES)})")
    parser.add_argument("--sass", action="store_true",
                        help="add each variant's SASS instruction count and loop body sizes")
    parser.add_argument("--loop-stages", type=int, help="pipeline the persistent backward loops this deep")
    args = parser.parse_args(argv)
    if args.loop_stages:
        from kernels import _launch

        _launch.BWD_LOOP_STAGES = args.loop_stages
    modules = args.only or list(KERNEL_MODULES)
    limit = SHARED_LIMIT.get(args.arch)
    driver.set_active(CompileOnlyDriver(args.arch))
    failures = 0
    start = time.perf_counter()
    with LaunchRecorder() as recorder:
        for label, run in itertools.chain.from_iterable(KERNEL_MODULES[m](args.quick) for m in modules):
            recorder.label = label
            try:
                run()
            except Exception as err:  # a compile error: report it, check the rest
                failures += 1
                print(f"FAILED  {label}: {type(err).__name__}: {str(err)[-1500:]}", flush=True)
    for (name, _), (label, kernel) in sorted(recorder.compiled.items(), key=lambda kv: kv[1][0]):
        shared = kernel.metadata.shared
        too_big = limit is not None and shared > limit
        failures += too_big
        flag = f"  OVER THE {limit} B LIMIT" if too_big else ""
        print(f"{'FAILED' if too_big else 'ok':7s} {label:36s} {name:26s} warps {kernel.metadata.num_warps:2d} "
              f"stages {kernel.metadata.num_stages} shared {shared:6d} B {resource_usage(kernel)}"
              f"{' ' + sass_summary(kernel) if args.sass else ''}{flag}")
    print(f"{len(recorder.compiled)} kernel variants compiled for sm_{args.arch} in "
          f"{time.perf_counter() - start:.0f} s, {failures} failure(s)")
    return 1 if failures or not recorder.compiled else 0


if __name__ == "__main__":
    sys.exit(main())
