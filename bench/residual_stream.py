"""`python -m bench.residual_stream`: what a bfloat16 residual stream costs in accuracy.

MIGTConfig.residual_stream chooses the dtype of the residual stream under
autocast: "float32" (every residual add in float32) or "autocast" (half the
bytes of the stream and of what the backward keeps of it). This measures the
price of the second, on any device:

1. at initialisation, the error of the forecasts and of the gradients under
   bf16 autocast, relative to the same model run in float64, per stream;
2. short training runs (the same seed, batches and dropout for each) under
   bf16 autocast with each stream, and one without autocast as the yardstick:
   their loss curves and final held-out loss.

The default model is small so that it runs on a CPU in a few minutes (the
numerics of the stream do not depend on the kernel backend; the sdpa backend
is used); --d-model etc. scale it up on a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

import migt
from migt.data import synthetic_batch


def _config(args, **changes) -> migt.MIGTConfig:
    return migt.MIGTConfig(
        d_model=args.d_model, n_heads=args.n_heads, d_ff=4 * args.d_model, dropout=0.1,
        n_temporal_layers=args.temporal_layers, n_variable_layers=args.variable_layers,
        max_seq_len=args.seq_len, backend=args.backend, **changes,
    )


def _loss(model, batch, autocast: bool):
    with torch.autocast(batch["features"].device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(batch["features"], batch["attention_mask"], batch["temporal_info"])["quantiles"]
    return migt.pinball_loss(out.float(), batch["targets"] * 100.0, model.config.quantiles), out


def init_error(args, stream: str, device) -> dict:
    """Relative max error of forecasts and gradients under bf16 autocast vs float64."""
    torch.manual_seed(0)
    model = migt.MIGT_TVDT(_config(args, residual_stream=stream)).to(device).eval()
    exact = migt.MIGT_TVDT(_config(args, residual_stream=stream)).to(device).double().eval()
    exact.load_state_dict(model.state_dict())
    batch = synthetic_batch(args.batch, model.config, seed=123, seq_len=args.seq_len, device=device)
    loss, out = _loss(model, batch, True)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    batch64 = {**batch, "features": batch["features"].double(), "targets": batch["targets"].double()}
    loss64, out64 = _loss(exact, batch64, False)
    grads64 = torch.autograd.grad(loss64, list(exact.parameters()))

    def rel(a, b):  # in the L2 norm: one number per tensor, blind to its tiny entries
        return ((a.double() - b).norm() / b.norm()).item()

    # parameters whose exact gradient is ~0 (the pooling key's bias: softmax
    # is shift-invariant) have no relative error to speak of: leave them out
    largest = max(b.norm() for b in grads64)
    grad_errs = sorted(rel(a, b) for a, b in zip(grads, grads64) if b.norm() > 1e-8 * largest)
    return {"forecast_rel_err": rel(out, out64),
            "grad_rel_err_max": grad_errs[-1], "grad_rel_err_median": grad_errs[len(grad_errs) // 2]}


def train_curve(args, stream: str, autocast: bool, device) -> dict:
    torch.manual_seed(args.seed)
    model = migt.MIGT_TVDT(_config(args, residual_stream=stream)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    held_out = [synthetic_batch(args.batch, model.config, seed=10_000 + i, seq_len=args.seq_len, device=device)
                for i in range(4)]
    curve = []
    for step in range(args.steps):
        batch = synthetic_batch(args.batch, model.config, seed=step, seq_len=args.seq_len, device=device)
        loss, _ = _loss(model, batch, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    model.eval()
    with torch.no_grad():
        held = sum(_loss(model, b, autocast)[0].item() for b in held_out) / len(held_out)
    tail = curve[-max(1, args.steps // 5):]
    return {"final_train_loss": sum(tail) / len(tail), "held_out_loss": held, "curve": curve}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backend", default="sdpa")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--temporal-layers", type=int, default=4)
    parser.add_argument("--variable-layers", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    start = time.perf_counter()
    results = {"args": vars(args), "init": {}, "train": {}}
    for stream in ("float32", "autocast"):
        results["init"][stream] = init_error(args, stream, device)
    runs = {"no autocast (float32)": ("float32", False), "bf16 autocast, float32 stream": ("float32", True),
            "bf16 autocast, bf16 stream": ("autocast", True)}
    for name, (stream, autocast) in runs.items():
        results["train"][name] = train_curve(args, stream, autocast, device)
    print(f"residual stream numerics on {device}, {args.steps} steps, "
          f"{time.perf_counter() - start:.0f} s\n")
    print("| stream (bf16 autocast) | forecast rel. error vs float64 | gradient rel. error, median / max |")
    print("|---|---|---|")
    for stream, r in results["init"].items():
        print(f"| {stream} | {r['forecast_rel_err']:.2e} | {r['grad_rel_err_median']:.2e} / {r['grad_rel_err_max']:.2e} |")
    print("\n| run | train loss, last fifth | held-out loss |\n|---|---|---|")
    for name, r in results["train"].items():
        print(f"| {name} | {r['final_train_loss']:.4f} | {r['held_out_loss']:.4f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
