"""`python -m bench.kernel_times`: each of the fused block's memory-bound
kernels alone, at the seed config's full shapes, against the copy bandwidth.

    python3 -m bench.kernel_times [--batch 64] [--sweep] [--out DIR]
    python3 -m bench.kernel_times --attention-sweep [--out DIR]

The training step's profile groups kernels by name; this times each kernel
variant the step runs (the fused FFN's norm, GELU + dropout and output
passes, forward and backward; the gated norm; the pre-norm of
layer_norm_linear; the final norm + pooling) on its own, and the FFN's GELU
work both ways: cuBLAS GEMM + pass, and in a Triton GEMM's epilogue
(kernels/gelu_gemm.py, the model's ffn_gelu_in_gemm): B*V*T rows of D=256 (the hidden: d_ff=1024),
a float32 residual stream, bf16 GEMM operands, dropout p=0.1. Per kernel:
the median over 7 repeats of 5 back-to-back calls (CUDA events, after 2
warm-ups; the host-side sums of a backward's partials included), the bytes it
must move (each tensor read or written once), and that as a share of the
device copy bandwidth measured on the H200 (bench/h200_measured.py).
--sweep also times the persistent backward kernels with other launch
settings (programs per SM, the GELU backward's rows per tile, software
pipelining of their loops over row blocks), the knobs a tuning run turns.
--attention-sweep times the attention kernels instead (B x 24 x 288, H=8,
Dh=32, bf16, day masks) under each launch setting of
kernels.attention_launch.LAUNCH_CANDIDATES: tile sizes, warps, pipeline stages
along time; steps per program and warps along variables. Needs CUDA;
installs nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from bench import h200_measured
from bench.harness import git_commit


def _time_ms(fn, repeats: int = 7, calls: int = 5) -> float:
    """Median over `repeats` of the mean time of `calls` back-to-back calls:
    the GPU stays busy between them, so host launch latency is not counted
    (the host-side partial sums of the backward kernels are)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def cases(batch: int, device="cuda", rows=None):
    """(name, thunk, bytes) of every kernel variant, inputs at full shapes
    (``rows`` rows instead of B*V*T: the tests' small run)."""
    from kernels import embedding, feed_forward, gated_norm, gelu_gemm, norm_linear, pooling

    N, D, F = rows or batch * 24 * 288, 256, 1024
    p, f32, bf16 = 0.1, torch.float32, torch.bfloat16
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, dtype=f32):
        return torch.randn(*shape, generator=g, device=device, dtype=f32).to(dtype)

    seeds = torch.tensor([11, 12, 13], device=device)
    x, branch, w, b = rand(N, D), rand(N, D, dtype=bf16), 1 + 0.1 * rand(D), 0.1 * rand(D)
    hidden, dg = rand(N, F, dtype=bf16), rand(N, F, dtype=bf16)
    f, dh, dout = rand(N, D, dtype=bf16), rand(N, D, dtype=bf16), rand(N, D)
    _, _, mean, rstd = norm_linear.residual_norm_fwd(x, branch, seeds, 0, p, w, b, 1e-5, bf16)
    logits, update = rand(N, D, dtype=bf16), rand(N, D)
    _, g_mean, g_rstd = gated_norm.gated_norm_fwd(x, update, logits, w, b, 1e-5)
    dx, dbranch = torch.empty_like(x), torch.empty_like(branch)
    nd, nf = N * D, N * F
    emb = (batch, 24, 288) if rows is None else (rows, 1, 1)  # the embedding's (B, V, T) view of the N rows
    y_emb, w_emb = rand(*emb), rand(emb[1], D)
    # the final norm + pooling over x viewed (B, V, T, D), every step valid
    x_series, steps_ok = x.view(*emb, D), torch.ones(emb[0], emb[2], dtype=torch.bool, device=device)
    kq, c = 0.1 * rand(D), torch.zeros((), device=device)
    pool = pooling.norm_pool_fwd(x_series, steps_ok, w, b, 1e-5, kq, c, bf16)
    series = emb[0] * emb[1]
    # the FFN's GEMMs around the GELU: h (N, D) @ W1.T (F, D), df (N, D) @ W2 (D, F)
    h, w1, b1, w2 = rand(N, D, dtype=bf16), rand(F, D, dtype=bf16), rand(F, dtype=bf16), rand(D, F, dtype=bf16)
    hidden_out = torch.empty_like(hidden)
    site = feed_forward.HIDDEN_SITE
    return [
        ("residual_norm_fwd (FFN: x + drop(a), norm)",
         lambda: norm_linear.residual_norm_fwd(x, branch, seeds, 0, p, w, b, 1e-5, bf16), 8 * nd + 8 * N),
        ("residual_norm_fwd (pre-norm, hands x on)",
         lambda: norm_linear.residual_norm_fwd(x, None, None, 0, 0.0, w, b, 1e-5, bf16, store_x=True),
         10 * nd + 8 * N),
        ("gelu_dropout_fwd", lambda: feed_forward.gelu_dropout_fwd(hidden, seeds, p), 4 * nf),
        ("dropout_add (block output)", lambda: feed_forward.residual_out(x, branch, f, seeds, p), 12 * nd),
        ("dropout_grad (+ fc2 bias grad)", lambda: feed_forward.dropout_grad(dout, seeds, p, bf16, f32), 6 * nd),
        # writes dhidden over dg: the values drift from call to call, the time does not
        ("gelu_dropout_bwd", lambda: feed_forward.gelu_dropout_bwd(dg, hidden, seeds, p), 8 * nf),
        ("residual_norm_bwd (FFN)",
         lambda: norm_linear.residual_norm_bwd(dh, dout, x, mean, rstd, w, branch=branch, seeds=seeds, p=p,
                                               dx=dx, dbranch=dbranch), 18 * nd + 8 * N),
        # the model's FFN: out_proj's bias added to the branch, its gradient summed in this pass
        ("residual_norm_bwd (FFN, branch bias)",
         lambda: norm_linear.residual_norm_bwd(dh, dout, x, mean, rstd, w, branch=branch, seeds=seeds, p=p,
                                               dx=dx, dbranch=dbranch, branch_bias=b), 18 * nd + 8 * N),
        ("residual_norm_bwd (variable tail: + dx, + gate dx)",
         lambda: norm_linear.residual_norm_bwd(dh, dout, x, mean, rstd, w, branch=branch, seeds=seeds, p=p,
                                               dx=dx, dbranch=dbranch, dx_add=f, accumulate_dx=True),
         24 * nd + 8 * N),
        ("residual_norm_bwd (pre-norm + handed-on x)",
         lambda: norm_linear.residual_norm_bwd(dh, dout, x, mean, rstd, w, dx=dx), 14 * nd + 8 * N),
        ("gated_norm_fwd", lambda: gated_norm.gated_norm_fwd(x, update, logits, w, b, 1e-5), 14 * nd + 8 * N),
        # reads the gradient twice (dy and dpos; dweight and dbias) and y, writes dpos (B*T rows) and dy
        ("value_embedding_bwd (two passes)",
         lambda: embedding.value_embedding_bwd(dout.view(*emb, D), y_emb, w_emb, seeds, p, f32),
         8 * nd + 4 * (N // emb[1]) * D + 8 * N),
        ("norm_pool_fwd (final norm + pooling)",
         lambda: pooling.norm_pool_fwd(x_series, steps_ok, w, b, 1e-5, kq, c, bf16), 4 * nd + 14 * series * D),
        # writes dx and three (series, D) partial rows, which the host sums
        ("norm_pool_bwd (final norm + pooling)",
         lambda: pooling.norm_pool_bwd(pool[0], x_series, steps_ok, w, b, 1e-5, kq, c, *pool[1:]),
         8 * nd + 30 * series * D),
        # each pair: the same work, the second in one kernel (bytes: h or df once, the
        # hidden's tensors each read or written once; the weights are small)
        ("fc1 GEMM + gelu_dropout_fwd (cuBLAS, pass)",
         lambda: feed_forward.gelu_dropout_fwd(torch.addmm(b1, h, w1.t(), out=hidden_out), seeds, p),
         2 * nd + 6 * nf),
        ("fc1_gelu (Triton GEMM, GELU in its epilogue)",
         lambda: gelu_gemm.fc1_gelu(h, w1, b1, seeds, p, site, hidden=hidden_out), 2 * nd + 4 * nf),
        ("d-hidden GEMM + gelu_dropout_bwd (cuBLAS, pass)",
         lambda: feed_forward.gelu_dropout_bwd(torch.mm(f, w2, out=hidden_out), hidden, seeds, p),
         2 * nd + 10 * nf),
        ("dhidden_gelu (Triton GEMM, GELU backward in its epilogue)",
         lambda: gelu_gemm.dhidden_gelu(f, w2, hidden, seeds, p, site), 2 * nd + 6 * nf),
        ("gated_norm_bwd (+ gate bias grad)",
         lambda: gated_norm.gated_norm_bwd(dout, x, update, logits, w, b, g_mean, g_rstd, dx=dx,
                                           gate_bias_grad=True), 24 * nd + 8 * N),
    ]


def attention_cases(batch: int, device="cuda", steps: int = 288, heads: int = 8, n_vars: int = 24):
    """(name, thunk, bytes) of the attention kernels at the model's case:
    (B, V=24, T, H=8, Dh=32) bf16 strided views of one packed QKV tensor, day
    masks (full days, short sessions, gaps), the QKV bias along time (the
    temporal blocks' case), the backward writing one packed gradient. Bytes:
    q, k, v and O once (forward), q, k, v, O, dO read and dq, dk, dv written
    (backward), padded steps included."""
    from bench.common import day_masks
    from kernels import attention

    B, V, T, H, Dh = batch, n_vars, steps, heads, 32
    g = torch.Generator(device=device).manual_seed(0)
    bf16 = torch.bfloat16
    qkv = torch.randn(B, V, T, 3, H, Dh, generator=g, device=device).to(bf16)
    bias = (0.1 * torch.randn(3, H, Dh, generator=g, device=device)).to(bf16)
    mask = day_masks(B, T, V, device)
    q, k, v = qkv.unbind(3)
    scale = Dh ** -0.5
    out_t, lse_t = attention.attention_fwd(q, k, v, mask, "time", scale, bias=bias)
    out_v, lse_v = attention.attention_fwd(q, k, v, mask, "variable", scale)
    dout = torch.randn(out_t.shape, generator=g, device=device).to(bf16)
    grads = torch.empty_like(qkv).unbind(3)
    nbytes = 2 * q.numel()  # one (B, V, T, H, Dh) bf16 tensor
    return [
        ("attention time fwd (+ QKV bias)",
         lambda: attention.attention_fwd(q, k, v, mask, "time", scale, bias=bias), 4 * nbytes),
        ("attention time bwd: dq, dk/dv (+ QKV bias)",
         lambda: attention.attention_bwd(dout, q, k, v, out_t, lse_t, mask, "time", scale, grads=grads, bias=bias),
         8 * nbytes),
        ("attention variable fwd", lambda: attention.attention_fwd(q, k, v, mask, "variable", scale), 4 * nbytes),
        ("attention variable bwd",
         lambda: attention.attention_bwd(dout, q, k, v, out_v, lse_v, mask, "variable", scale, grads=grads),
         8 * nbytes),
    ]


def attention_sweep(batch: int, device="cuda", time_ms=None, **shape):
    """Each attention launch setting a tuning run compares
    (kernels.attention_launch.LAUNCH_CANDIDATES, the table's first), timed on the
    case that runs that kernel, the others at the table's: (label, name, ms,
    bytes) rows, yielded as each is timed. ``shape``: attention_cases'
    steps, heads, n_vars (the tests' small run)."""
    from kernels import attention_launch

    time_ms = time_ms or _time_ms
    case_of = {"fwd": 0, "dq": 1, "dkdv": 1, "var_fwd": 2, "var_bwd": 3}
    cases = attention_cases(batch, device, **shape)
    for kernel, settings in attention_launch.LAUNCH_CANDIDATES.items():
        name, fn, nbytes = cases[case_of[kernel]]
        for i, setting in enumerate(settings):
            with attention_launch.overridden(kernel, setting):
                ms = time_ms(fn)
            yield f"{kernel} {attention_launch.format_setting(setting)}{' (table)' if i == 0 else ''}", name, ms, nbytes


def fastest_attention_settings(records) -> str:
    """The fastest setting of each attention kernel in an --attention-sweep's
    kernel-times.json records, as MIGT_ATTENTION_LAUNCH takes them
    ("fwd=128x64x8x3,dq=...")."""
    best = {}
    for record in records:
        kernel, setting = record["setting"].split()[:2]  # e.g. "fwd 64x64x4x3 (table)"
        if kernel not in best or record["ms"] < best[kernel][1]:
            best[kernel] = (setting, record["ms"])
    return ",".join(f"{kernel}={setting}" for kernel, (setting, _) in best.items())


def sweep(batch: int):
    """The persistent backward kernels under other launch settings: (label, name, ms, bytes)."""
    from kernels import _launch, feed_forward, norm_linear

    chosen = ("gelu_dropout_bwd", "residual_norm_bwd (FFN)", "residual_norm_bwd (FFN, branch bias)",
              "gated_norm_bwd (+ gate bias grad)")
    defaults = (_launch.BWD_PROGRAMS_PER_SM, norm_linear.NORM_BWD_PROGRAMS_PER_SM,
                feed_forward.HIDDEN_BWD_PROGRAMS_PER_SM, feed_forward.HIDDEN_BWD_BLOCK_M, _launch.BWD_LOOP_STAGES,
                norm_linear.BRANCH_BIAS_BWD_TILE_ELEMENTS)

    def restore():
        (_launch.BWD_PROGRAMS_PER_SM, norm_linear.NORM_BWD_PROGRAMS_PER_SM,
         feed_forward.HIDDEN_BWD_PROGRAMS_PER_SM, feed_forward.HIDDEN_BWD_BLOCK_M, _launch.BWD_LOOP_STAGES,
         norm_linear.BRANCH_BIAS_BWD_TILE_ELEMENTS) = defaults

    rows = []
    try:
        # the branch-bias variant at the other variants' tile height (2048 elements: 8 rows at D=256)
        norm_linear.BRANCH_BIAS_BWD_TILE_ELEMENTS = norm_linear.BWD_TILE_ELEMENTS
        for name, fn, nbytes in cases(batch):
            if name == "residual_norm_bwd (FFN, branch bias)":
                rows.append(("8-row tiles", name, _time_ms(fn), nbytes))
        restore()
        for programs in (1, 2, 4, 8, 16):  # each kernel's own count (the gated norm's is the default's)
            _launch.BWD_PROGRAMS_PER_SM = norm_linear.NORM_BWD_PROGRAMS_PER_SM = programs
            feed_forward.HIDDEN_BWD_PROGRAMS_PER_SM = programs
            for name, fn, nbytes in cases(batch):
                if name in chosen:
                    rows.append((f"{programs} programs/SM", name, _time_ms(fn), nbytes))
        restore()
        for block_m in (8, 16, 32):
            feed_forward.HIDDEN_BWD_BLOCK_M = block_m
            for name, fn, nbytes in cases(batch):
                if name == "gelu_dropout_bwd":
                    rows.append((f"{block_m} rows/tile", name, _time_ms(fn), nbytes))
        restore()
        for stages in (2, 3):  # each kernel at its own programs per SM
            _launch.BWD_LOOP_STAGES = stages
            for name, fn, nbytes in cases(batch):
                if name in chosen or name.startswith(("dropout_grad", "residual_norm_bwd", "value_embedding_bwd")):
                    rows.append((f"loop stages {stages}", name, _time_ms(fn), nbytes))
    finally:
        restore()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kernel_times", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sweep", action="store_true", help="also other launch settings of the backward kernels")
    parser.add_argument("--attention-sweep", action="store_true",
                        help="instead: the attention kernels under each launch setting a tuning run compares "
                             "(kernels.attention_launch.LAUNCH_CANDIDATES)")
    parser.add_argument("--fastest-attention", type=Path, metavar="JSON",
                        help="print the fastest setting of each attention kernel in an --attention-sweep's "
                             "kernel-times.json, as MIGT_ATTENTION_LAUNCH takes them, and exit (no GPU needed)")
    parser.add_argument("--out", type=Path, help="write kernel-times.json there")
    args = parser.parse_args(argv)
    if args.fastest_attention:
        print(fastest_attention_settings(json.loads(args.fastest_attention.read_text())))
        return 0
    if not torch.cuda.is_available():
        print("bench.kernel_times needs a CUDA device", file=sys.stderr)
        return 2
    copy = h200_measured.COPY_GBS
    name_gpu = torch.cuda.get_device_name()
    command = "python -m bench.kernel_times " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.attention_sweep:
        shape = f"B={args.batch}, V=24, T=288, H=8, Dh=32, bf16, day masks"
    else:
        shape = (f"B={args.batch} (N={args.batch * 24 * 288} rows, D=256, d_ff=1024), "
                 f"fp32 stream, bf16 operands, p=0.1")
    print(f"Made by `{command.strip()}`, git {git_commit()}.\n\n"
          f"{name_gpu}, {shape}; copy bandwidth {copy:.0f} GB/s (H200, measured)\n")
    print("| kernel | setting | ms | GB | GB/s | of copy |\n|---|---|---|---|---|---|")
    if args.attention_sweep:
        rows = attention_sweep(args.batch)
    else:
        rows = [("default", name, _time_ms(fn), nbytes) for name, fn, nbytes in cases(args.batch)]
        if args.sweep:
            rows += sweep(args.batch)
    records = []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for setting, name, ms, nbytes in rows:  # each row as it comes: a sweep cut short keeps its rows
        gbs = nbytes / ms / 1e6
        print(f"| {name} | {setting} | {ms:.3f} | {nbytes / 1e9:.2f} | {gbs:.0f} | {gbs / copy:.0%} |", flush=True)
        records.append(dict(kernel=name, setting=setting, ms=ms, bytes=nbytes, gbs=gbs, device=name_gpu,
                            batch=args.batch))
        if args.out:
            (args.out / "kernel-times.json").write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
