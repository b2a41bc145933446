"""Norms suite: RevIN and the gated residual norm, forward and forward+backward.

Shapes as in the model: RevIN on features (B, T, V) in float32 (the model's
input dtype; autocast leaves it alone), the gated norm on (B, V, T, D) in
each run dtype. Backends: triton (kernels API), reference (eager plain
PyTorch) and compile (torch.compile of the reference function).
revin_denormalize has no Triton kernel (the API runs plain PyTorch), so its
triton rows are skips. The backward follows the model: RevIN features need
no gradient (only weight, bias do); the gated norm's every input does.

GB/s counts the fewest bytes each pass must move, every tensor read or
written once; `extra.of_copy` is that rate over the device-to-device copy
bandwidth measured in the same run (op "copy"). Ratio: / reference.
"""
from __future__ import annotations

import torch

from bench.common import DTYPES, RunSettings, load_config, skip_unless_runnable
from bench.harness import Case, Skip, Timed, Work

BACKENDS = ("reference", "triton", "compile")
D_MODEL, N_VARIABLES = 256, 24
COPY_BYTES = {"cuda": 2**30, "cpu": 2**26}  # source size of the bandwidth copy


def cases(settings: RunSettings) -> list:
    T = settings.seq_len
    out = [copy_case(settings, "norms")]
    for backend in (b for b in BACKENDS if b in settings.backends):
        for batch in settings.batch_sizes:
            for op in ("revin_normalize", "revin_denormalize"):
                for pass_ in ("fwd", "fwd_bwd"):
                    out.append(Case(
                        suite="norms", op=f"{op}_{pass_}", backend=backend, dtype="fp32", batch=batch,
                        shape=f"B={batch},T={T},V={N_VARIABLES}", baseline="reference",
                        setup=_revin_setup(settings, op, backend, batch, T, pass_ == "fwd_bwd"),
                    ))
            for dtype in settings.dtypes:
                for pass_ in ("fwd", "fwd_bwd"):
                    out.append(Case(
                        suite="norms", op=f"gated_residual_norm_{pass_}", backend=backend, dtype=dtype,
                        batch=batch, shape=f"B={batch},V={N_VARIABLES},T={T},D={D_MODEL}", baseline="reference",
                        setup=_gated_setup(settings, backend, dtype, batch, T, pass_ == "fwd_bwd"),
                    ))
    return out


def copy_case(settings: RunSettings, suite: str) -> Case:
    """A device-to-device tensor copy: the bandwidth ceiling of the norms."""
    n_bytes = COPY_BYTES["cuda" if settings.device.type == "cuda" else "cpu"]

    def setup() -> Timed:
        src = torch.randn(n_bytes // 4, device=settings.device)
        dst = torch.empty_like(src)
        return Timed(lambda: dst.copy_(src), Work(2 * n_bytes, "GB/s"))

    return Case(suite=suite, op="copy", backend="torch", dtype="fp32", batch=0,
                shape=f"{n_bytes // 2**20} MiB", setup=setup)


def _compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def _revin_setup(settings: RunSettings, op: str, backend: str, batch: int, T: int, backward: bool):
    def setup() -> Timed:
        import kernels
        import migt
        from kernels import reference

        skip_unless_runnable(settings, backend)
        device = settings.device
        config = load_config(settings)
        data = migt.data.synthetic_batch(batch, config, seed=0, device=device, seq_len=T)
        x, mask = data["features"], data["attention_mask"]  # [B, T, V] (NaN at padding), [B, T]
        V = x.shape[-1]
        g = torch.Generator(device=device).manual_seed(0)
        weight = (1 + 0.1 * torch.randn(V, generator=g, device=device)).requires_grad_(backward)
        bias = (0.1 * torch.randn(V, generator=g, device=device)).requires_grad_(backward)
        elems = x.numel()
        if op == "revin_normalize":
            skip_unless_runnable(settings, backend, ["revin_normalize"])
            if backend == "compile":
                f = _compiled(reference.revin_normalize)
            else:
                def f(*args):
                    return kernels.revin_normalize(*args, backend=backend)
            args = (x, mask, weight, bias)
            # fwd: read x, mask; write y, mean, std. bwd: read dy, x, mask, mean, std.
            fwd_bytes = 4 * elems + mask.numel() + 4 * elems + 2 * 4 * batch * V
            bwd_bytes = 4 * elems + 4 * elems + mask.numel() + 2 * 4 * batch * V
        else:
            if backend == "triton":
                raise Skip("revin_denormalize has no Triton kernel (the API runs plain PyTorch)")
            with torch.no_grad():
                y, mean, std = reference.revin_normalize(x, mask, weight, bias)  # y [B, V, T]
            y.requires_grad_(backward)
            f = _compiled(reference.revin_denormalize) if backend == "compile" else kernels.revin_denormalize
            args = (y, mean, std, weight, bias)
            # fwd: read y, write x. bwd: read dx, write dy.
            fwd_bytes = bwd_bytes = 2 * 4 * elems
        if not backward:
            def fn():
                with torch.no_grad():
                    f(*args)
            return Timed(fn, Work(fwd_bytes, "GB/s"))
        out_like = f(*args)
        out_like = out_like[0] if isinstance(out_like, tuple) else out_like
        grad_out = torch.randn(out_like.shape, generator=g, device=device, dtype=out_like.dtype)
        del out_like

        def fn():
            out = f(*args)
            (out[0] if isinstance(out, tuple) else out).backward(grad_out)
            for t in args:
                t.grad = None
        return Timed(fn, Work(fwd_bytes + bwd_bytes, "GB/s"))

    return setup


def _gated_setup(settings: RunSettings, backend: str, dtype: str, batch: int, T: int, backward: bool):
    def setup() -> Timed:
        import kernels
        from kernels import reference

        skip_unless_runnable(settings, backend, ["gated_residual_norm"])
        device = settings.device
        g = torch.Generator(device=device).manual_seed(0)
        shape = (batch, N_VARIABLES, T, D_MODEL)

        def rand(*s, scale=1.0, shift=0.0):
            t = shift + scale * torch.randn(*s, generator=g, device=device)
            return t.to(DTYPES[dtype]).requires_grad_(backward)

        args = (rand(*shape), rand(*shape), rand(*shape), rand(D_MODEL, scale=0.1, shift=1.0), rand(D_MODEL, scale=0.1))
        if backend == "compile":
            f = _compiled(reference.gated_residual_norm)
        else:
            def f(*a):
                return kernels.gated_residual_norm(*a, backend=backend)
        elem = torch.finfo(DTYPES[dtype]).bits // 8
        n = batch * N_VARIABLES * T * D_MODEL
        rows = n // D_MODEL
        fwd_bytes = 4 * n * elem  # read x, update, gate; write out
        if not backward:
            def fn():
                with torch.no_grad():
                    f(*args)
            return Timed(fn, Work(fwd_bytes, "GB/s"))
        grad_out = torch.randn(shape, generator=g, device=device).to(DTYPES[dtype])
        # bwd: read dout, x, update, gate and a mean/rstd per row; write dx, dupdate, dgate
        bwd_bytes = 7 * n * elem + 8 * rows

        def fn():
            f(*args).backward(grad_out)
            for t in args:
                t.grad = None
        return Timed(fn, Work(fwd_bytes + bwd_bytes, "GB/s"))

    return setup


def fill_copy_fraction(rows: list) -> None:
    """extra.of_copy = GB/s / the copy bandwidth of the same run."""
    copies = [r["throughput"] for r in rows if r["op"] == "copy" and r["status"] == "ok"]
    if not copies:
        return
    for r in rows:
        if r["throughput_unit"] == "GB/s" and r["op"] != "copy" and r["throughput"]:
            r["extra"]["of_copy"] = float(f"{r['throughput'] / copies[0]:.4g}")
