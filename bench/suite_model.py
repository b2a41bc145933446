"""Model suite: inference forward and full training step of the default-config model.

Cases, for each batch size and dtype (fp32, or bf16 autocast):
  inference        eval mode, torch.no_grad, one forward;
  train_step       forward, migt.pinball_loss, backward, AdamW step, zero_grad;
  train_step_ckpt  the same with activation_checkpointing=True;
  train_step_pooled  the same with variable_attention="pooled" (the variable
                   blocks after aggregation, the FuturesSL order);
  train_step_recompute_ffn  with recompute_ffn_hidden=True (triton backends only);
  train_step_bf16_stream    with residual_stream="autocast" (a bf16 stream);
  train_step_gelu_in_gemm   with ffn_gelu_in_gemm=True (the FFN's GELU in a
                   Triton GEMM's epilogue; triton backends only);
  train_step_recompute_gelu_in_gemm  the same with recompute_ffn_hidden=True;
  train_step_device_checks  the input value checks on the device, a host sync
                   a step (eager triton and sdpa: a loop without
                   migt.input_values_checked());
for backends triton, sdpa, reference (the config's `backend`), compile
(torch.compile of the sdpa model) and compile_triton (torch.compile of the
triton model, the fastest configuration on the H200). Inputs: migt.data.synthetic_batch,
whose values every case checks on a host copy before the forward, which runs
under migt.input_values_checked(), as the trainer does (no host sync in a
step: the host queues the next step while the GPU runs this one). The
ratio column divides by sdpa. Each row also carries the memory model's
estimate (bench/memory_model.py) and, for training without checkpointing,
the saved-activation bytes measured with saved_tensors_hooks.
"""
from __future__ import annotations

import contextlib

import torch

from bench import memory_model
from bench.common import RunSettings, load_config, skip_unless_runnable
from bench.harness import MIB, Case, Timed, Work, is_oom

BACKENDS = ("sdpa", "triton", "reference", "compile", "compile_triton")
# op -> the config changes it runs with
OPS = {
    "inference": {},
    "train_step": {},
    # the FFN's GELU + dropout in a Triton GEMM's epilogue (kernels/gelu_gemm.py),
    # next to the step it would replace: a time budget cuts later ops first
    "train_step_gelu_in_gemm": {"ffn_gelu_in_gemm": True},
    # and with selective recompute, whose hidden it then never writes
    "train_step_recompute_gelu_in_gemm": {"ffn_gelu_in_gemm": True, "recompute_ffn_hidden": True},
    "train_step_ckpt": {"activation_checkpointing": True},
    "train_step_pooled": {"variable_attention": "pooled"},
    # the fused blocks' memory options (docs/fused-block.md)
    "train_step_recompute_ffn": {"recompute_ffn_hidden": True},
    "train_step_bf16_stream": {"residual_stream": "autocast"},
    # the model checking its input values on the device, one host sync a step:
    # a user's own loop without migt.input_values_checked()
    "train_step_device_checks": {},
}
# ops whose forward reads its input value checks back from the device
DEVICE_CHECK_OPS = ("train_step_device_checks",)
TRAIN_STEP_OPS = tuple(op for op in OPS if op.startswith("train_step"))
# ops that only mean something on some backends (recompute_ffn_hidden and
# ffn_gelu_in_gemm are the fused blocks'); every other op runs on every backend
OP_BACKENDS = {"train_step_recompute_ffn": ("triton", "compile_triton"),
               "train_step_gelu_in_gemm": ("triton", "compile_triton"),
               "train_step_recompute_gelu_in_gemm": ("triton", "compile_triton"),
               "train_step_device_checks": ("triton", "sdpa")}  # compiled graphs skip the checks
# what each compiled backend compiles
COMPILED = {"compile": "sdpa", "compile_triton": "triton"}
KERNEL_OPS = ("masked_attention", "revin_normalize", "gated_residual_norm")


def cases(settings: RunSettings) -> list:
    backends = [b for b in BACKENDS if b in settings.backends]
    # compile cases last: their first call compiles, and a time budget should
    # cut them rather than the kernels' rows
    backends.sort(key=lambda b: b in COMPILED)
    T = settings.model_seq_len
    out = []
    for backend in backends:
        for batch in settings.batch_sizes:
            for dtype in settings.dtypes:
                if dtype not in ("fp32", "bf16"):
                    continue  # the model runs in fp32 or under bf16 autocast
                for op in OPS:
                    if backend not in OP_BACKENDS.get(op, (backend,)):
                        continue
                    out.append(Case(
                        suite="model", op=op, backend=backend, dtype=dtype, batch=batch,
                        shape=f"B={batch},V=cfg,T={T}", baseline="sdpa",
                        setup=_setup(settings, op, backend, dtype, batch, T),
                    ))
    return out


def _setup(settings: RunSettings, op: str, backend: str, dtype: str, batch: int, T: int):
    def setup() -> Timed:
        import migt

        eager_backend = COMPILED.get(backend, backend)
        skip_unless_runnable(settings, backend, ())
        skip_unless_runnable(settings, eager_backend, KERNEL_OPS)
        device = settings.device
        config = load_config(settings, backend=eager_backend, **OPS[op])
        checkpointing = config.activation_checkpointing
        torch.manual_seed(0)
        model = migt.MIGT_TVDT(config).to(device)
        data = migt.data.synthetic_batch(batch, config, seed=0, device=device, seq_len=T)
        inputs = (data["features"], data["attention_mask"], data["temporal_info"])
        targets = data["targets"]
        # The trainer checks each batch's values on its host copy and runs the
        # forward under migt.input_values_checked(), so the step never waits
        # for the device (migt/validation.py); every case does the same.
        host_inputs = (inputs[0].cpu(), inputs[1].cpu(), {k: v.cpu() for k, v in inputs[2].items()})

        def checked_on_host():
            if op in DEVICE_CHECK_OPS:
                return contextlib.nullcontext()
            migt.validate_inputs(config, *host_inputs)
            return migt.input_values_checked()

        runner = model
        if backend in COMPILED:
            torch._dynamo.reset()
            runner = torch.compile(model)
        use_bf16 = dtype == "bf16"

        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

        if op == "inference":
            model.eval()

            def fn():
                with torch.no_grad(), autocast(), checked_on_host():
                    runner(*inputs)
        else:
            model.train()
            # fused where torch has it, as the trainer (migt/training/trainer.py) runs it
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))

            def forward_loss():
                with autocast(), checked_on_host():
                    out = runner(*inputs)
                    return migt.pinball_loss(out["quantiles"], targets, config.quantiles)

            def fn():
                forward_loss().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        n_params = sum(p.numel() for p in model.parameters())
        layout = f"B={batch},V={config.n_variables},T={T},D={config.d_model}"

        def after() -> dict:
            est = memory_model.estimate(
                config, batch, seq_len=T, backend=backend, autocast_bf16=use_bf16,
                checkpointing=checkpointing, training=op != "inference",
                device_type=device.type, n_params=n_params,
            )
            extra = {
                "layout": layout,
                "mem_est_saved_mib": round(est.saved_total / MIB, 1),
                "mem_est_delta_mib": round(est.step_delta / MIB, 1),
            }
            # Hooks see what autograd saves; compiled graphs and checkpointed
            # blocks save through their own mechanisms, so only eager, full runs.
            if settings.measure_saved and op.startswith("train_step") and op != "train_step_ckpt" \
                    and backend not in COMPILED:
                try:
                    saved = memory_model.measure_saved_bytes(forward_loss, exclude=list(model.parameters()))
                    extra["mem_saved_mib"] = round(saved / MIB, 1)
                except Exception as err:  # noqa: BLE001 -- a report field, not the case
                    if not is_oom(err):
                        raise
                    extra["mem_saved_mib"] = "OOM"
                optimizer.zero_grad(set_to_none=True)
            return extra

        return Timed(fn, Work(batch, "samples/s"), after)

    return setup


def memory_report(rows: list) -> list:
    """One line per model row comparing the memory model with the measurement."""
    lines = []
    for r in rows:
        if r["suite"] != "model" or r["status"] != "ok" or "mem_est_delta_mib" not in r["extra"]:
            continue
        e = r["extra"]
        line = (f"memory model  {r['op']:<15} {r['backend']:<9} {r['dtype']:<4} B={r['batch']:<4} "
                f"estimated saved {e['mem_est_saved_mib'] / 1024:7.2f} GiB, peak above model {e['mem_est_delta_mib'] / 1024:7.2f} GiB")
        if isinstance(e.get("mem_saved_mib"), (int, float)):
            line += f" | measured saved {e['mem_saved_mib'] / 1024:7.2f} GiB (x{e['mem_saved_mib'] / max(e['mem_est_saved_mib'], 1e-9):.2f})"
        if r.get("peak_delta_mib") is not None:
            line += f" | measured peak above model {r['peak_delta_mib'] / 1024:7.2f} GiB (x{r['peak_delta_mib'] / max(e['mem_est_delta_mib'], 1e-9):.2f})"
        lines.append(line)
    return lines

