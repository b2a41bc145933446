"""`python -m bench.profile`: where one training step's time goes, by group.

One training step of the model suite's train_step case (forward, pinball
loss, backward, AdamW) after warm-up steps, under torch.profiler. On CUDA
the kernels' device time; on a CPU the ops' self CPU time. Each kernel or op
is put in a group (bench/op_groups.py: attention, GEMM, norm, dropout,
elementwise, casts, reductions, optimizer, other). Writes, under --out:
  <slug>-profile.md    the table per backend (groups, then the top kernels);
  <slug>-profile.png   a bar chart of the groups, one bar per backend;
  <slug>-profile.json  the groups in ms (bench/roofline.py compares with them).
On CUDA the table also says how long the GPU sat idle between the step's
first and last kernel, and where the longest idle gaps were (the kernels
before and after each): a step slower than its kernels is waiting for the
host (a sync, or launches slower than the kernels they start). The
profiler's own host overhead makes these gaps an upper bound.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from bench import suite_model
from bench.common import DEFAULT_CONFIG, RunSettings
from bench.harness import REPO_ROOT, Skip, device_name, device_slug, git_commit, reset_state
from bench.op_groups import GROUPS, group_of


@dataclasses.dataclass
class StepProfile:
    backend: str
    time_kind: str  # "CUDA kernel time" or "CPU self time"
    kernels: list  # (name, ms, calls, group), largest first
    skipped: str = ""
    timeline: Optional["Timeline"] = None  # CUDA only: the kernels' busy time and idle gaps

    @property
    def total_ms(self) -> float:
        return sum(ms for _, ms, _, _ in self.kernels)

    def groups(self) -> dict:
        out = {g: 0.0 for g in GROUPS}
        for _, ms, _, group in self.kernels:
            out[group] += ms
        return out


@dataclasses.dataclass
class Timeline:
    span_ms: float  # first kernel's start to last kernel's end
    busy_ms: float  # time with at least one kernel running
    gaps: list  # (ms, kernel before, kernel after) of the longest idle gaps, longest first

    @property
    def idle_ms(self) -> float:
        return self.span_ms - self.busy_ms


def timeline(kernels, top: int = 10) -> Timeline:
    """Busy time and the `top` longest idle gaps of (start_us, end_us, name)
    kernel intervals (overlapping kernels, on other streams, count once)."""
    ordered = sorted(kernels)
    if not ordered:
        return Timeline(0.0, 0.0, [])
    busy, gaps = 0.0, []
    start, end, last = ordered[0][0], ordered[0][1], ordered[0][2]
    for k_start, k_end, name in ordered[1:]:
        if k_start > end:
            busy += end - start
            gaps.append(((k_start - end) / 1e3, last, name))
            start = k_start
        if k_end >= end:
            end, last = k_end, name
    busy += end - start
    gaps.sort(key=lambda g: -g[0])
    return Timeline((end - ordered[0][0]) / 1e3, busy / 1e3, gaps[:top])


def profile_step(settings: RunSettings, backend: str, batch: int, dtype: str, warmup: int = 2) -> StepProfile:
    """Profile one train_step of `backend`; a backend that cannot run here comes back skipped."""
    cuda = settings.device.type == "cuda"
    kind = "CUDA kernel time" if cuda else "CPU self time"
    [case] = [c for c in suite_model.cases(settings)
              if (c.op, c.backend, c.dtype, c.batch) == ("train_step", backend, dtype, batch)]
    try:
        timed = case.setup()
    except Skip as err:
        return StepProfile(backend, kind, [], skipped=str(err))
    try:
        for _ in range(warmup):
            timed.fn()
        if cuda:
            torch.cuda.synchronize(settings.device)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            timed.fn()
            if cuda:
                torch.cuda.synchronize(settings.device)
        kernels = _cuda_kernels(prof) if cuda else _cpu_ops(prof)
        kernels.sort(key=lambda k: -k[1])
        spans = None
        if cuda:
            # record_function ranges (e.g. Optimizer.step) also come as device
            # events: they are not kernels, and would hide the gaps they span
            spans = timeline([(e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                              if e.device_type == torch.autograd.DeviceType.CUDA
                              and not getattr(e, "is_user_annotation", False)])
        return StepProfile(backend, kind, kernels, timeline=spans)
    finally:
        del timed
        reset_state(settings.device)


def _cuda_kernels(prof) -> list:
    """(name, ms, calls, group) of each CUDA kernel by its device time (the
    optimizer's foreach / fused kernels are named as such)."""
    return [(e.key, e.self_device_time_total / 1e3, e.count, group_of(e.key))
            for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0
            and not getattr(e, "is_user_annotation", False)]


def _cpu_ops(prof) -> list:
    """(name, ms, calls, group) of each CPU op by its self time; ops run
    inside Optimizer.step are the optimizer's (on a CPU AdamW runs one plain
    op per parameter, which by name alone would look like elementwise work)."""
    totals = {}
    for e in prof.events():
        if e.self_cpu_time_total <= 0:
            continue
        parent, group = e, group_of(e.name)
        while parent is not None:
            if parent.name.startswith("Optimizer."):
                group = "optimizer"
                break
            parent = parent.cpu_parent
        ms, calls = totals.get((e.name, group), (0.0, 0))
        totals[(e.name, group)] = (ms + e.self_cpu_time_total / 1e3, calls + 1)
    return [(name, ms, calls, group) for (name, group), (ms, calls) in totals.items()]


def table(profile: StepProfile, top: int = 25) -> str:
    if profile.skipped:
        return f"{profile.backend}: skipped: {profile.skipped}"
    total = profile.total_ms
    lines = [f"{profile.backend}: {profile.time_kind} {total:.2f} ms in {sum(k[2] for k in profile.kernels)} calls",
             "", "| group | ms | share | calls |", "|---|---|---|---|"]
    calls = {g: 0 for g in GROUPS}
    for _, _, n, group in profile.kernels:
        calls[group] += n
    for group, ms in sorted(profile.groups().items(), key=lambda kv: -kv[1]):
        if ms > 0:
            lines.append(f"| {group} | {ms:.2f} | {100 * ms / total:.1f}% | {calls[group]} |")
    if profile.timeline is not None:
        tl = profile.timeline
        lines += ["", f"GPU timeline: {tl.span_ms:.2f} ms from the first kernel's start to the last's end, "
                      f"{tl.busy_ms:.2f} ms busy, {tl.idle_ms:.2f} ms idle; longest idle gaps:",
                  "", "| idle ms | after kernel | before kernel |", "|---|---|---|"]
        lines += [f"| {ms:.3f} | `{before[:60]}` | `{after[:60]}` |" for ms, before, after in tl.gaps]
    lines += ["", f"top {top}:", "", "| ms | calls | group | kernel |", "|---|---|---|---|"]
    for name, ms, n, group in profile.kernels[:top]:
        lines.append(f"| {ms:.2f} | {n} | {group} | `{name[:110]}` |")
    return "\n".join(lines)


def bar_chart(profiles: list, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [p for p in profiles if not p.skipped]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(GROUPS) * max(1, len(ran)) ** 0.5))
    height = 0.8 / max(1, len(ran))
    for i, p in enumerate(ran):
        groups = p.groups()
        ys = [j + i * height for j in range(len(GROUPS))]
        ax.barh(ys, [groups[g] for g in GROUPS], height=height, label=f"{p.backend} ({p.total_ms:.1f} ms)")
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(GROUPS))], GROUPS)
    ax.invert_yaxis()
    ax.set_xlabel(f"ms ({ran[0].time_kind if ran else ''})")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", choices=suite_model.BACKENDS,
                   help="default triton sdpa on CUDA, sdpa on a CPU")
    p.add_argument("--batch", type=int, help="default 64 on CUDA, 2 on a CPU")
    p.add_argument("--dtype", choices=("fp32", "bf16"), help="default bf16 (autocast) on CUDA, fp32 on a CPU")
    p.add_argument("--seq-len", type=int, help="T (default 288 on CUDA, 48 on a CPU)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--device", choices=("cuda", "cpu"))
    p.add_argument("--warmup", type=int, default=2, help="steps before the profiled one (default 2)")
    p.add_argument("--top", type=int, default=25, help="kernels listed per backend (default 25)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    T = args.seq_len or (288 if cuda else 48)
    batch = args.batch or (64 if cuda else 2)
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    backends = args.backends or (["triton", "sdpa"] if cuda else ["sdpa"])
    settings = RunSettings(device=device, batch_sizes=(batch,), dtypes=(dtype,), backends=tuple(backends),
                           seq_len=T, model_seq_len=T, config_path=args.config, measure_saved=False)
    profiles = [profile_step(settings, b, batch, dtype, args.warmup) for b in backends]
    slug = device_slug(device)
    head = (f"One training step (train_step: forward, pinball loss, backward, AdamW), B={batch}, T={T}, {dtype}, "
            f"config {args.config.name}, on {device_name(device)}, torch {torch.__version__}, git {git_commit()}; "
            f"made by `python -m bench.profile{' ' + ' '.join(argv or sys.argv[1:]) if (argv or sys.argv[1:]) else ''}`.")
    text = head + "\n\n" + "\n\n".join(table(p, args.top) for p in profiles) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{slug}-profile.md").write_text(text, encoding="utf-8")
    (args.out / f"{slug}-profile.json").write_text(json.dumps({
        "device": device_name(device), "batch": batch, "seq_len": T, "dtype": dtype,
        "profiles": {p.backend: {"time_kind": p.time_kind, "total_ms": p.total_ms, "groups_ms": p.groups(),
                                 "skipped": p.skipped,
                                 **({"timeline": dataclasses.asdict(p.timeline)} if p.timeline else {})}
                     for p in profiles},
    }, indent=1), encoding="utf-8")
    if any(not p.skipped for p in profiles):
        bar_chart(profiles, args.out / f"{slug}-profile.png",
                  f"train step by group, B={batch}, T={T}, {dtype}, {device_name(device)}")
    print(text)
    print(f"written: {args.out / (slug + '-profile.md')}, .json, .png")
    return 0 if any(not p.skipped for p in profiles) else 1


if __name__ == "__main__":
    sys.exit(main())
