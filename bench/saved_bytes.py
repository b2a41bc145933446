"""`python -m bench.saved_bytes`: what a training step keeps for the backward,
measured on the CPU, per token, against the memory model.

Runs one training forward of the seed config (bf16 autocast, B=2, every step
valid) at T=16 and T=32 under torch.autograd.graph.saved_tensors_hooks
(bench/memory_model.measure_saved_bytes: distinct storages, parameters left
out) and reports the slope in bytes per token, so fixed costs cancel. The
triton backend runs its kernels under TRITON_INTERPRET=1 (set here). On the
CPU a plain dropout keeps its scaled noise (2 bytes an element under bf16),
not CUDA's 1-byte mask, so the CPU figure of sdpa is above its CUDA one; the
memory model's CPU figure is printed beside each measurement, and its CUDA
estimate at B=64 after it. Takes about 4 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import migt  # noqa: E402
from bench import memory_model  # noqa: E402

CASES = {
    "sdpa": dict(backend="sdpa"),
    "triton": dict(backend="triton"),
    "triton, recompute_ffn_hidden": dict(backend="triton", recompute_ffn_hidden=True),
}


def measured_per_token(config, steps=(16, 32)) -> float:
    saved = {}
    for T in steps:
        torch.manual_seed(0)
        model = migt.MIGT_TVDT(config).train()
        batch = migt.data.synthetic_batch(2, config, seq_len=T)
        batch["attention_mask"][:] = True

        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(batch["features"], batch["attention_mask"], batch["temporal_info"])["quantiles"]

        saved[T] = memory_model.measure_saved_bytes(forward, exclude=list(model.parameters()))
    return (saved[steps[1]] - saved[steps[0]]) / (2 * config.n_variables * (steps[1] - steps[0]))


def modelled_per_token(config, steps=(16, 32)) -> float:
    est = [memory_model.estimate(config, 2, seq_len=T, backend=config.backend, autocast_bf16=True,
                                 device_type="cpu").saved_total for T in steps]
    return (est[1] - est[0]) / (2 * config.n_variables * (steps[1] - steps[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/model_config.yaml")
    args = parser.parse_args()
    base = migt.MIGTConfig.from_yaml(args.config)
    n_params = memory_model.count_parameters(base)
    cuda = {}
    print("| config | measured (CPU) KB/token | model (CPU) KB/token | model B=64 CUDA GiB | vs sdpa (CUDA) |")
    print("|---|---|---|---|---|")
    for name, changes in CASES.items():
        config = dataclasses.replace(base, **changes)
        cuda[name] = memory_model.estimate(config, 64, backend=config.backend, autocast_bf16=True,
                                           n_params=n_params).saved_total
        print(f"| {name} | {measured_per_token(config) / 1e3:.1f} | {modelled_per_token(config) / 1e3:.1f} | "
              f"{cuda[name] / 2**30:.2f} | {cuda[name] / cuda['sdpa']:.3f}x |", flush=True)


if __name__ == "__main__":
    main()
