"""`python -m bench.saved_bytes`: what a training step keeps for the backward,
and the step's peak, measured on the CPU, per token, against the memory model.

Runs one training step (forward, a loss, backward) of the seed config (bf16
autocast, B=2, every step valid) at T=16 and T=32, and reports slopes in
bytes per token, so fixed costs cancel:
- saved: what autograd saves in the forward, under
  torch.autograd.graph.saved_tensors_hooks (bench/memory_model.measure_saved_bytes:
  distinct storages, parameters left out);
- peak: the most bytes the step's own tensors hold at once, forward and
  backward (bench/live_bytes.LiveBytes, which sees inside the fused ops).
  At these sizes the FFN runs as one chunk of rows (kernels/feed_forward.py
  kernels/chunking.py), so this is the unchunked per-token peak; chunks bound the
  d_ff part of the working set at large batches.
The triton backend runs its kernels under TRITON_INTERPRET=1 (set here). On
the CPU a plain dropout keeps its scaled noise (2 bytes an element under
bf16), not CUDA's 1-byte mask, so the CPU figure of sdpa is above its CUDA
one; the memory model's CPU figures are printed beside each measurement, and
its CUDA estimates at B=64 (saved) and B=512 (step peak above the model and
optimizer) after them. Takes about 15 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import migt  # noqa: E402
from bench import memory_model  # noqa: E402
from bench.live_bytes import LiveBytes  # noqa: E402
from kernels import chunking  # noqa: E402

CASES = {
    "sdpa": dict(backend="sdpa"),
    "triton": dict(backend="triton"),
    "triton, recompute_ffn_hidden": dict(backend="triton", recompute_ffn_hidden=True),
}


def measured_per_token(config, steps=(16, 32)) -> tuple[float, float]:
    """(saved, peak) bytes per token of one training step."""
    saved, peak = {}, {}
    for T in steps:
        torch.manual_seed(0)
        model = migt.MIGT_TVDT(config).train()
        batch = migt.data.synthetic_batch(2, config, seq_len=T)
        batch["attention_mask"][:] = True

        losses = []

        def forward():  # keeps the loss for the backward below
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(batch["features"], batch["attention_mask"], batch["temporal_info"])["quantiles"]
            losses.append(out.float().square().mean())
            return out

        with LiveBytes() as live:
            saved[T] = memory_model.measure_saved_bytes(forward, exclude=list(model.parameters()))
            losses.pop().backward()
        peak[T] = live.peak
    tokens = 2 * config.n_variables * (steps[1] - steps[0])
    return (saved[steps[1]] - saved[steps[0]]) / tokens, (peak[steps[1]] - peak[steps[0]]) / tokens


def modelled_per_token(config, steps=(16, 32)) -> tuple[float, float]:
    """(saved, saved + transient) bytes per token by the memory model on the CPU."""
    est = [memory_model.estimate(config, 2, seq_len=T, backend=config.backend, autocast_bf16=True,
                                 device_type="cpu") for T in steps]
    tokens = 2 * config.n_variables * (steps[1] - steps[0])
    return ((est[1].saved_total - est[0].saved_total) / tokens,
            (est[1].saved_total + est[1].transient_bytes - est[0].saved_total - est[0].transient_bytes) / tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/model_config.yaml")
    parser.add_argument("--hidden-chunk-bytes", type=int,
                        help="the fused FFN's chunk budget (kernels/chunking.py; default 1 GiB, one chunk at "
                             "these sizes): e.g. 524288 for 256-row chunks, to measure the chunked peak")
    args = parser.parse_args()
    if args.hidden_chunk_bytes:
        chunking.HIDDEN_CHUNK_BYTES = args.hidden_chunk_bytes
    base = migt.MIGTConfig.from_yaml(args.config)
    n_params = memory_model.count_parameters(base)
    cuda = {}
    print("| config | saved, measured (CPU) KB/token | saved, model (CPU) | peak, measured (CPU) | "
          "peak, model (CPU) | saved, model B=64 CUDA GiB | vs sdpa (CUDA) | step peak, model B=512 CUDA GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, changes in CASES.items():
        config = dataclasses.replace(base, **changes)
        estimate = lambda batch: memory_model.estimate(config, batch, backend=config.backend,  # noqa: E731
                                                        autocast_bf16=True, n_params=n_params)
        cuda[name] = estimate(64).saved_total
        saved, peak = measured_per_token(config)
        model_saved, model_peak = modelled_per_token(config)
        print(f"| {name} | {saved / 1e3:.1f} | {model_saved / 1e3:.1f} | {peak / 1e3:.1f} | {model_peak / 1e3:.1f} | "
              f"{cuda[name] / 2**30:.2f} | {cuda[name] / cuda['sdpa']:.3f}x | "
              f"{estimate(512).step_delta / 2**30:.1f} |", flush=True)


if __name__ == "__main__":
    main()
