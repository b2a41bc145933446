"""What the H200 run of 2026-11-28 measured, for the roofline to check against
(bench/results/2026-11-28-nvidia-h200/: README.md, profile-train-step-eager.log).

Seed config, B=64, T=288, bf16 autocast, AdamW, eager, each in a fresh process.
"""
from __future__ import annotations

import re
from pathlib import Path

from bench.harness import REPO_ROOT
from bench.op_groups import group_of

RUN_DIR = REPO_ROOT / "bench" / "results" / "2026-11-28-nvidia-h200"
# Wall time of one training step (README of the run, fresh-process table).
STEP_MS = {"triton": 117.3, "sdpa": 168.4}
# Ceilings measured in the same run (bench/suite_ceilings.py).
COPY_GBS = 4257.0
GEMM_BF16_TFLOPS = 803.1


def profile_log_groups(path: Path = RUN_DIR / "profile-train-step-eager.log") -> dict:
    """backend -> {"total_ms", "kernels", "groups_ms"} from the run's profile
    log, which lists only the largest kernels of each backend: their time is
    grouped (bench/op_groups.py) and the rest is the group "unlisted"."""
    out = {}
    current = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        head = re.match(r"=== profile (\w+) B=\d+: total self CUDA ([\d.]+) ms, (\d+) kernels", line)
        if head:
            current = {"total_ms": float(head.group(2)), "kernels": int(head.group(3)), "groups_ms": {}}
            out[head.group(1)] = current
            continue
        row = re.match(r"\s+([\d.]+) ms\s+[\d.]+% x(\d+)\s+(.*)", line)
        if row and current is not None:
            group = group_of(row.group(3))
            current["groups_ms"][group] = current["groups_ms"].get(group, 0.0) + float(row.group(1))
    for profile in out.values():
        listed = sum(profile["groups_ms"].values())
        profile["groups_ms"]["unlisted"] = max(0.0, profile["total_ms"] - listed)
    return out
