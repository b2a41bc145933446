"""`python -m bench.roofline`: what a training step must cost, without a GPU.

Runs one training step of the model (forward under bf16 autocast, pinball
loss, backward, AdamW with foreach, as on CUDA) on fake tensors: every
tensor has its full shape (seed config, B=64, T=288) and no storage, so it
runs on any machine in seconds. A dispatch mode below autograd sees each op
and its tensors, and bench/roofline_costs.py gives its bytes, FLOPs and
kernel launches. Per op (and per group of bench/op_groups.py) the predicted
time on a GPU is

    launches * launch overhead + max(bytes / copy bandwidth, FLOPs / GEMM peak)

with the GPU's measured ceilings (H200: copy 4257 GB/s, bf16 GEMM 803
TFLOP/s). That is the floor the kernels could reach; the gap to the
measured step is the number to drive down. The report compares with the
H200 measurements (bench/h200_measured.py, or a `python -m bench.profile`
JSON given with --measured) and gives the error per group and in total.

The trace runs on the CPU, so two things are made to act as on CUDA: dropout
goes through native_dropout (CUDA's fused kernel, a 1-byte mask; the CPU's
dropout is three ops), and the triton backend is chosen with
TRITON_INTERPRET=1 (its custom ops only run their fake implementations).

Backends: triton, sdpa, reference, triton_modules: the triton backend
with the transformer blocks as plain modules around the Triton attention
(kernels.fused_block_backend answering "sdpa"), the model the H200 measured
on 2026-11-28, before the fused blocks of issue 11; and
triton_gelu_in_gemm: the triton backend with ffn_gelu_in_gemm (the FFN's
GELU in the GEMMs' epilogues, kernels/gelu_gemm.py).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench import h200_measured, roofline_costs
from bench.common import DEFAULT_CONFIG
from bench.harness import REPO_ROOT, git_commit
from bench.op_groups import GROUPS, group_of


@dataclasses.dataclass(frozen=True)
class Ceilings:
    name: str
    copy_gbs: float  # device-to-device copy, GB/s (each byte read or written counted once)
    bf16_tflops: float  # dense GEMM under bf16 (and fp16)
    fp32_tflops: float  # GEMM in float32 without TF32
    source: str


GPUS = {
    "H200": Ceilings("H200", h200_measured.COPY_GBS, h200_measured.GEMM_BF16_TFLOPS, 54.0,
                     "copy and bf16 GEMM measured on an H200 (2026-11-28); fp32: 80% of the 67 TFLOP/s nominal"),
    # Not measured here: the H100 SXM has the H200's SMs and clocks (same GEMM
    # peak) and 3.35 of its 4.8 TB/s of HBM; the copy is scaled by that ratio.
    "H100": Ceilings("H100", h200_measured.COPY_GBS * 3.35 / 4.8, h200_measured.GEMM_BF16_TFLOPS, 54.0,
                     "not measured: H200's measured ceilings, copy scaled by HBM 3.35/4.8 TB/s"),
}
# GPU time per kernel launch beyond its work (launch, ramp-up, tail): an
# assumption, not a measurement; --launch-us changes it.
LAUNCH_US = 3.0


@dataclasses.dataclass
class Call:
    op: str  # "aten::addmm", "migt::masked_attention_fwd"
    group: str
    phase: str  # forward, backward, optimizer
    bytes: float
    flops: float
    launches: int
    registered: bool
    fp32: bool  # FLOPs at the fp32 peak (a float32 GEMM)


class _Recorder(TorchDispatchMode):
    """Records the cost of every op dispatched below autograd."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.phase = "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        costs, registered = roofline_costs.op_cost(func, args, kwargs, out)
        op = func.name().split(".")[0]
        fp32 = any(isinstance(a, torch.Tensor) and a.dtype == torch.float32 for a in args[:3])
        for cost in costs if isinstance(costs, list) else [costs]:
            if cost.launches or cost.bytes or cost.flops:
                name = f"{op}[{cost.part}]" if cost.part else op
                # a part says its own group and dtype (a fused op's GEMM runs in the weights' dtype)
                part_fp32 = fp32 and not cost.part
                self.calls.append(Call(name, cost.group or group_of(name), self.phase, cost.bytes, cost.flops,
                                       cost.launches, registered, part_fp32 and cost.flops > 0))
        return out


def _native_dropout(input, p=0.5, training=True, inplace=False):
    """F.dropout as CUDA runs it: one fused kernel that writes a 1-byte mask."""
    if not training or p == 0.0:
        return input
    return torch.native_dropout(input, p, training)[0]


@contextlib.contextmanager
def _as_on_cuda():
    """Let the CPU trace take CUDA's paths (see module doc)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, {"TRITON_INTERPRET": "1"}))
        stack.enter_context(mock.patch("torch.nn.functional.dropout", _native_dropout))
        # Value checks (calendar ranges, quantile levels) need data; fake tensors have none.
        stack.enter_context(mock.patch("torch.compiler.is_compiling", lambda: True))
        yield


# roofline backend -> (the config's backend, whether the blocks' fused ops
# run, other config fields)
BACKENDS = {"triton": ("triton", True, {}), "triton_modules": ("triton", False, {}),
            "triton_gelu_in_gemm": ("triton", True, {"ffn_gelu_in_gemm": True}),
            "sdpa": ("sdpa", True, {}), "reference": ("reference", True, {})}


def trace_step(config, batch: int, seq_len: Optional[int] = None, *, autocast_bf16: bool = True,
               fused_blocks: bool = True) -> list:
    """The Calls of one full training step of MIGT_TVDT(config) at this batch size.
    fused_blocks=False: the blocks as plain modules even on the triton backend."""
    import kernels
    import migt
    from torch._subclasses.fake_tensor import FakeTensorMode

    T = seq_len or config.max_seq_len
    data = migt.data.synthetic_batch(batch, config, seed=0, seq_len=T)  # real: its mask sets attention FLOPs
    recorder = _Recorder()
    roofline_costs.valid_steps = data["attention_mask"].sum(1).tolist()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_as_on_cuda())
            if not fused_blocks:
                stack.enter_context(mock.patch.object(kernels, "fused_block_backend", lambda backend, x: "sdpa"))
            fake = stack.enter_context(FakeTensorMode())
            fake_in = {k: fake.from_tensor(v) for k, v in data.items() if isinstance(v, torch.Tensor)}
            temporal = {k: fake.from_tensor(v) for k, v in data["temporal_info"].items()}
            torch.manual_seed(0)
            model = migt.MIGT_TVDT(config).train()
            # capturable: its step counters are device tensors (a host step
            # counter would need a value); foreach as on CUDA.
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True, capturable=True)

            def step(phase):
                phase("forward")
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
                    out = model(fake_in["features"], fake_in["attention_mask"], temporal)
                    loss = migt.pinball_loss(out["quantiles"], fake_in["targets"], config.quantiles)
                phase("backward")
                loss.backward()
                phase("optimizer")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            step(lambda name: None)  # the first step creates AdamW's state: not a steady step
            with recorder:
                step(lambda name: setattr(recorder, "phase", name))
    finally:
        roofline_costs.valid_steps = None
    return recorder.calls


def predict_ms(call: Call, gpu: Ceilings, launch_us: float = LAUNCH_US) -> float:
    memory_s = call.bytes / (gpu.copy_gbs * 1e9)
    compute_s = call.flops / ((gpu.fp32_tflops if call.fp32 else gpu.bf16_tflops) * 1e12)
    return call.launches * launch_us * 1e-3 + max(memory_s, compute_s) * 1e3


def summarize(calls: list, gpus: list, launch_us: float = LAUNCH_US) -> dict:
    """Totals, per group and per op (name and phase), with predicted ms per GPU."""
    def empty():
        return {"bytes": 0.0, "flops": 0.0, "launches": 0, "calls": 0, "ms": {g.name: 0.0 for g in gpus}}

    total, groups, ops = empty(), {g: empty() for g in GROUPS}, {}
    unregistered = set()
    for c in calls:
        key = f"{c.op} ({c.phase})"
        if key not in ops:
            ops[key] = {**empty(), "group": c.group}
        for agg in (total, groups[c.group], ops[key]):
            agg["bytes"] += c.bytes
            agg["flops"] += c.flops
            agg["launches"] += c.launches
            agg["calls"] += 1
            for g in gpus:
                agg["ms"][g.name] += predict_ms(c, g, launch_us)
        if not c.registered:
            unregistered.add(c.op)
    return {"total": total, "groups": groups, "ops": ops, "unregistered": sorted(unregistered)}


def compare(summary: dict, measured_total_ms: float, measured_groups: Optional[dict], gpu: str) -> list:
    """(name, predicted ms, measured ms or None, error %) for each group and the total;
    error = (predicted - measured) / measured."""
    rows = []
    for group in GROUPS:
        predicted = summary["groups"][group]["ms"][gpu]
        measured = None if measured_groups is None else measured_groups.get(group, 0.0)
        rows.append((group, predicted, measured, _error(predicted, measured)))
    predicted = summary["total"]["ms"][gpu]
    if measured_groups:
        if measured_groups.get("unlisted"):
            rows.append(("unlisted", None, measured_groups["unlisted"], None))
        kernels = sum(measured_groups.values())  # the GPU's busy time, without the gaps between kernels
        rows.append(("kernel time", predicted, kernels, _error(predicted, kernels)))
    rows.append(("total", predicted, measured_total_ms, _error(predicted, measured_total_ms)))
    return rows


def _error(predicted, measured):
    return None if not measured else 100.0 * (predicted - measured) / measured


# --- the report -------------------------------------------------------------

def _fmt(x, digits=2):
    return "" if x is None else f"{x:.{digits}f}"


def report(results: dict, gpus: list, measured: dict, launch_us: float, top: int, header: str) -> str:
    lines = [header, "",
             "Predicted = launches x %.1f us + max(bytes / copy bandwidth, FLOPs / GEMM peak), per op; "
             "ceilings: " % launch_us + "; ".join(f"{g.name} copy {g.copy_gbs:.0f} GB/s, bf16 GEMM "
                                                   f"{g.bf16_tflops:.0f} TFLOP/s ({g.source})" for g in gpus), ""]
    for backend, summary in results.items():
        t = summary["total"]
        lines += [f"## {backend}", "",
                  f"{t['calls']} ops, {t['launches']} kernel launches, {t['bytes'] / 1e9:.1f} GB moved, "
                  f"{t['flops'] / 1e12:.2f} TFLOP; predicted " +
                  ", ".join(f"{g.name} {t['ms'][g.name]:.1f} ms" for g in gpus), ""]
        m = measured.get(backend)
        if m is not None:
            gpu = m["gpu"]
            lines += [f"Against the measurement on {m['device']} ({m['source']}):", "",
                      f"| group | predicted {gpu} ms | measured ms | error |", "|---|---|---|---|"]
            for name, pred, meas, err in compare(summary, m["total_ms"], m.get("groups_ms"), gpu):
                lines.append(f"| {name} | {_fmt(pred)} | {_fmt(meas)} | {'' if err is None else f'{err:+.0f}%'} |")
            lines.append("")
        else:
            lines += ["No measurement of this model to compare with.", ""]
        lines += ["| group | GB | GFLOP | launches | " + " | ".join(f"{g.name} ms" for g in gpus) + " |",
                  "|---|---|---|---|" + "---|" * len(gpus)]
        for group in GROUPS:
            a = summary["groups"][group]
            if a["calls"]:
                lines.append(f"| {group} | {a['bytes'] / 1e9:.2f} | {a['flops'] / 1e9:.0f} | {a['launches']} | "
                             + " | ".join(f"{a['ms'][g.name]:.2f}" for g in gpus) + " |")
        lines += ["", f"Largest {top} ops by predicted {gpus[0].name} time:", "",
                  "| op (phase) | group | calls | GB | GFLOP | " + " | ".join(f"{g.name} ms" for g in gpus) + " |",
                  "|---|---|---|---|---|" + "---|" * len(gpus)]
        ranked = sorted(summary["ops"].items(), key=lambda kv: -kv[1]["ms"][gpus[0].name])
        for name, a in ranked[:top]:
            lines.append(f"| {name} | {a['group']} | {a['calls']} | {a['bytes'] / 1e9:.3f} | {a['flops'] / 1e9:.1f} | "
                         + " | ".join(f"{a['ms'][g.name]:.3f}" for g in gpus) + " |")
        if summary["unregistered"]:
            lines += ["", "**unregistered** custom ops (default cost: bytes of inputs and outputs, 0 FLOPs; "
                      "add an entry to bench/roofline_costs.py): " + ", ".join(summary["unregistered"])]
        lines.append("")
    return "\n".join(lines)


def measured_reference(path: Optional[Path]) -> dict:
    """backend -> {"total_ms", "groups_ms", "source"}: a bench.profile JSON
    when given, else the H200 run's profile log and step times."""
    if path is not None:
        data = json.loads(Path(path).read_text())
        gpu = "H100" if "H100" in data["device"] else "H200"  # the prediction to compare with
        return {b: {"total_ms": p["total_ms"], "groups_ms": p["groups_ms"], "device": data["device"], "gpu": gpu,
                    "source": f"{path}: {p['time_kind']}, B={data['batch']}, T={data['seq_len']}"}
                for b, p in data["profiles"].items() if not p.get("skipped")}
    out = {}
    logged = h200_measured.profile_log_groups() if h200_measured.RUN_DIR.exists() else {}
    for backend, step_ms in h200_measured.STEP_MS.items():
        # the H200's triton step had the blocks as modules: compare it with triton_modules
        backend = "triton_modules" if backend == "triton" else backend
        entry = {"total_ms": step_ms, "groups_ms": None, "device": "NVIDIA H200, 2026-11-28", "gpu": "H200",
                 "source": f"step {step_ms} ms wall; groups: largest kernels of the profile log"}
        logged_name = "triton" if backend == "triton_modules" else backend
        if logged_name in logged:
            entry["groups_ms"] = logged[logged_name]["groups_ms"]
        out[backend] = entry
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", choices=tuple(BACKENDS),
                   default=["triton", "triton_gelu_in_gemm", "triton_modules", "sdpa"],
                   help="triton_modules: the blocks as measured on the H200 (see above)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq-len", type=int, help="T (default the config's max_seq_len)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--launch-us", type=float, default=LAUNCH_US, help=f"per-kernel overhead (default {LAUNCH_US})")
    p.add_argument("--measured", type=Path, help="a bench.profile JSON to compare with (default: the H200 run)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results",
                   help="writes roofline.md and roofline.json here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import dataclasses as dc

    import migt

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    gpus = list(GPUS.values())
    results = {}
    for backend in args.backends:
        config_backend, fused, fields = BACKENDS[backend]
        config = dc.replace(migt.MIGTConfig.from_yaml(args.config), backend=config_backend, **fields)
        calls = trace_step(config, args.batch, args.seq_len, autocast_bf16=not args.fp32, fused_blocks=fused)
        results[backend] = summarize(calls, gpus, args.launch_us)
    T = args.seq_len or migt.MIGTConfig.from_yaml(args.config).max_seq_len
    header = (f"# Roofline of one training step\n\nB={args.batch}, T={T}, config {args.config.name}, "
              f"{'fp32' if args.fp32 else 'bf16 autocast'}, AdamW; traced on fake tensors, git {git_commit()}; "
              f"made by `python -m bench.roofline{' ' + ' '.join(argv) if argv else ''}`.")
    measured = measured_reference(args.measured) if not args.fp32 else {}
    text = report(results, gpus, measured, args.launch_us, args.top, header)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "roofline.md").write_text(text, encoding="utf-8")
    (args.out / "roofline.json").write_text(json.dumps({
        "batch": args.batch, "seq_len": T, "launch_us": args.launch_us,
        "gpus": {g.name: dc.asdict(g) for g in gpus},
        "backends": {b: {"total": s["total"], "groups": s["groups"], "unregistered": s["unregistered"],
                         "vs_measured": compare(s, measured[b]["total_ms"], measured[b].get("groups_ms"),
                                                measured[b]["gpu"])
                         if b in measured else None}
                     for b, s in results.items()},
    }, indent=1), encoding="utf-8")
    print(text)
    print(f"written: {args.out / 'roofline.md'}, {args.out / 'roofline.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
