"""`python -m bench --max-batch`: the largest batch whose training step runs, per backend.

Batch sizes from --max-batch-start double until a try fails (or reaches
--max-batch-limit); then bisection between the last batch that ran and the
first that failed, until the gap is at most an eighth of the batch that ran
(256 vs 288, not 256 vs 257: each try at that size costs seconds). A try is
the model suite's train_step case (forward, pinball loss, backward, AdamW)
run twice (a warm-up and a timed step), each try in a process of its own, so
a failed one (out of memory, or a kernel refusing the size, like cuDNN's
attention backward at sdpa B=256 on the H200) leaves nothing behind: no
memory, no fragmented allocator cache, no broken CUDA context.

Each (backend, dtype, op) is searched on its own: op "train_step" by
default, or the train_step variants given with --ops (train_step_recompute_ffn:
recompute_ffn_hidden, which keeps less; train_step_bf16_stream; ...), each
where its backend runs it.

Rows: suite "max_batch", op, batch = the largest that ran, with its time and
peak memory; extra.first_failing and extra.tries (each batch tried and how it
ended).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Callable, Optional

import torch

from bench.harness import REPO_ROOT, Timer, run_case

DEFAULT_BACKENDS = ("triton", "sdpa")
# Bisection stops when first failing - largest ok <= largest ok // RESOLUTION.
RESOLUTION = 8
_MARK = "MAX_BATCH_TRY "


@dataclasses.dataclass
class Try:
    batch: int
    status: str  # "ok", "OOM", "skipped: ...", "error: ..."
    median_ms: Optional[float] = None
    peak_mib: Optional[float] = None


def search(run_try: Callable[[int], Try], start: int, limit: int) -> tuple:
    """(largest batch that ran or None, first batch that failed or None, tries in order)."""
    if not 1 <= start <= limit:
        raise ValueError(f"need 1 <= start <= limit, got start={start}, limit={limit}")
    tries = []

    def runs(batch: int) -> bool:
        tries.append(run_try(batch))
        return tries[-1].status == "ok"

    good = bad = None
    batch = start
    while True:
        if not runs(batch):
            bad = batch
            break
        good = batch
        if batch >= limit:
            break
        batch = min(2 * batch, limit)
    if good is None:
        return None, bad, tries
    while bad is not None and bad - good > max(1, good // RESOLUTION):
        mid = (good + bad) // 2
        if runs(mid):
            good = mid
        else:
            bad = mid
    return good, bad, tries


def try_in_subprocess(spec: dict, timeout_s: float) -> Try:
    """One training-step try in a fresh python process (see module doc)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "bench.max_batch", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return Try(spec["batch"], f"error: try timed out after {timeout_s:.0f} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            return Try(**json.loads(line[len(_MARK):]))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return Try(spec["batch"], f"error: try exited {proc.returncode}: {tail}")


def _one_try(spec: dict) -> Try:
    """The child's side: the model suite's train_step case at one batch size."""
    from bench import suite_model
    from bench.common import RunSettings

    device = torch.device(spec["device"])
    settings = RunSettings(
        device=device, batch_sizes=(spec["batch"],), dtypes=(spec["dtype"],), backends=(spec["backend"],),
        seq_len=spec["seq_len"], model_seq_len=spec["seq_len"], config_path=spec["config"],
        measure_saved=False,
    )
    [case] = [c for c in suite_model.cases(settings) if c.op == spec.get("op", "train_step")]
    row = run_case(case, Timer(device, warmup=1, repeats=1))
    return Try(spec["batch"], row["status"], row["median_ms"], row["peak_mib"])


def train_step_ops(ops) -> list:
    """The training-step ops of the model suite among ``ops`` (["train_step"] for none)."""
    from bench import suite_model

    unknown = sorted(set(ops or ()) - set(suite_model.TRAIN_STEP_OPS))
    if unknown:
        raise SystemExit(f"--max-batch --ops: {unknown} are not training steps; choose from "
                         f"{list(suite_model.TRAIN_STEP_OPS)}")
    return list(ops or ("train_step",))


def run(settings, *, start: int, limit: int, timeout_s: float = 300.0, log=print, ops=None) -> list:
    """Search each (backend, dtype, op) of the run; returns partial result rows
    (the harness's keys that apply, without the run's environment)."""
    from bench import suite_model

    backends = [b for b in settings.backends if b in DEFAULT_BACKENDS] or list(DEFAULT_BACKENDS)
    rows = []
    try:
        for backend in backends:
            for dtype in (d for d in settings.dtypes if d in ("fp32", "bf16")):
                for op in train_step_ops(ops):
                    if backend in suite_model.OP_BACKENDS.get(op, (backend,)):
                        rows.append(_search_row(settings, backend, dtype, start, limit, timeout_s, log, op))
    except KeyboardInterrupt:  # a time limit: keep the searches that ended
        log(f"interrupted: keeping the {len(rows)} searches done")
    return rows


def _search_row(settings, backend, dtype, start, limit, timeout_s, log, op="train_step") -> dict:
    """One search: the row of the largest batch of `backend` that ran."""
    def run_try(batch):
        spec = {"device": str(settings.device), "backend": backend, "dtype": dtype, "batch": batch,
                "seq_len": settings.model_seq_len, "config": str(settings.config_path), "op": op}
        result = try_in_subprocess(spec, timeout_s)
        log(f"max-batch {backend} {op} {dtype} B={batch}: {result.status}"
            + (f", {result.median_ms} ms" if result.median_ms is not None else "")
            + (f", peak {result.peak_mib} MiB" if result.peak_mib is not None else ""))
        return result

    good, bad, tries = search(run_try, start, limit)
    best = next((t for t in tries if t.batch == good and t.status == "ok"), None)
    failed = next((t for t in tries if t.batch == bad), None)
    if best is not None:
        status = "ok"
    elif failed.status == "OOM":  # a result, not an error: the start was too large
        status = f"OOM: the first try, B={bad}, is out of memory; lower --max-batch-start"
    else:
        status = failed.status
    return {
        "suite": "max_batch", "op": op, "backend": backend, "dtype": dtype,
        "batch": good or 0, "shape": f"T={settings.model_seq_len}", "baseline": None,
        "median_ms": best and best.median_ms, "first_ms": None, "repeats": 1,
        "throughput": None, "throughput_unit": None,
        "peak_mib": best and best.peak_mib, "peak_delta_mib": None, "ratio": None,
        "status": status,
        "extra": {
            "first_failing": bad, "first_failing_status": failed and failed.status,
            "limit": limit, "limit_reached": bad is None,
            "tries": [dataclasses.asdict(t) for t in tries],
        },
    }


if __name__ == "__main__":
    result = _one_try(json.loads(sys.argv[1]))
    print(_MARK + json.dumps(dataclasses.asdict(result)), flush=True)
