"""The one timing harness every suite uses, so their numbers are comparable.

A suite describes its cases as `Case` objects whose `setup()` builds the
inputs and returns a `Timed` (the callable to time and the work it does).
`run_case` turns a case into one result row and never raises for the
expected failures: an out-of-memory case is a row with status "OOM", an
unsupported backend is a row "skipped: <reason>", any other exception is a
row "error: <type>: <message>" (the CLI exits non-zero when there is one).

Timing: on CUDA, CUDA events around each call (median over the repeats, after
warm-up calls that include any compilation); on the CPU, time.perf_counter.
Peak memory (CUDA only): torch.cuda.max_memory_allocated over the timed
repeats, after reset_peak_memory_stats; `peak_delta_mib` is the part above
what was allocated before the repeats (the activations and gradients the
call itself needs).

Every case starts from the same state: all cases share one process (a
process per case would cost seconds of CUDA and compiler start-up each), so
after each case its objects are released, exception frames cleared, compiled
graphs dropped (torch._dynamo.reset) and the CUDA cache emptied; a case that
still leaves device memory allocated becomes an "error: leak" row.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20

# Throughput units and the divisor that turns "amount per second" into them.
UNITS = {"samples/s": 1.0, "TFLOP/s": 1e12, "GB/s": 1e9}


class Skip(Exception):
    """Raised by a case's setup when its backend cannot run it here."""


@dataclasses.dataclass
class Work:
    """What one call does, for the throughput column."""

    amount: float  # samples, FLOPs or bytes per call
    unit: str  # a key of UNITS


@dataclasses.dataclass
class Timed:
    fn: Callable[[], Any]  # the call to time; its result is dropped each time
    work: Optional[Work] = None
    # Called once after timing (untimed), for extra row fields (e.g. saved-activation bytes).
    after: Optional[Callable[[], dict]] = None


@dataclasses.dataclass
class Case:
    suite: str
    op: str
    backend: str
    dtype: str
    batch: int
    shape: str
    setup: Callable[[], Timed]
    baseline: Optional[str] = None  # the backend the ratio column divides by
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Measurement:
    median_ms: float
    first_ms: float  # the first call alone: compilation / autotuning show here
    times_ms: list
    peak_mib: Optional[float]
    peak_delta_mib: Optional[float]


class Timer:
    """Warm-up then timed repeats of a callable on one device."""

    def __init__(self, device: torch.device, *, warmup: int = 3, repeats: int = 10):
        if warmup < 1 or repeats < 1:
            raise ValueError(f"warmup and repeats must be >= 1, got warmup={warmup}, repeats={repeats}")
        self.device = torch.device(device)
        self.warmup = warmup
        self.repeats = repeats
        self.cuda = self.device.type == "cuda"

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def measure(self, fn: Callable[[], Any]) -> Measurement:
        self._sync()
        start = time.perf_counter()
        fn()
        self._sync()
        first_ms = (time.perf_counter() - start) * 1e3
        for _ in range(self.warmup - 1):
            fn()
        self._sync()
        peak = delta = None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(self.repeats)]
            for begin, end in events:
                begin.record()
                fn()
                end.record()
            self._sync()
            times = [begin.elapsed_time(end) for begin, end in events]
            peak_bytes = torch.cuda.max_memory_allocated(self.device)
            peak, delta = peak_bytes / MIB, (peak_bytes - before) / MIB
        else:
            times = []
            for _ in range(self.repeats):
                begin = time.perf_counter()
                fn()
                times.append((time.perf_counter() - begin) * 1e3)
        return Measurement(statistics.median(times), first_ms, times, peak, delta)


class Budget:
    """Wall-clock budget shared by the cases of a run (None: unlimited)."""

    def __init__(self, seconds: Optional[float]):
        self.seconds = seconds
        self.start = time.monotonic()

    def spent(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.start > self.seconds


def is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def triton_backend_reason(err: BaseException) -> Optional[str]:
    """The reason, when err is the kernels API refusing backend='triton' for a case."""
    match = re.search(r"backend='triton' cannot run this case: (.*)", str(err))
    return match.group(1) if isinstance(err, ValueError) and match else None


def _allocated_mib(device: torch.device) -> Optional[float]:
    return torch.cuda.memory_allocated(device) / MIB if device.type == "cuda" else None


def _forget_exception(err: BaseException) -> None:
    """Drop the frames an exception's traceback holds: an OOM raised inside a
    training step keeps every local of the forward (the activations) alive for
    as long as anything refers to the exception."""
    seen = set()
    while err is not None and id(err) not in seen:  # chains can loop
        seen.add(id(err))
        if err.__traceback__ is not None:
            traceback.clear_frames(err.__traceback__)
            err.__traceback__ = None
        err = err.__cause__ or err.__context__


def reset_state(device: torch.device) -> None:
    """Bring the process back to the state a case starts from: compiled graphs
    and their caches dropped (they can hold a model's tensors), cycles
    collected, the CUDA allocator's cache returned."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except RuntimeError:  # a sticky CUDA error: the case's row has it, and a crash here would lose every row
            pass


def run_case(case: Case, timer: Timer, budget: Optional[Budget] = None) -> dict:
    """Set up, time and describe one case as a result row (see module doc)."""
    row = {
        "suite": case.suite, "op": case.op, "backend": case.backend, "dtype": case.dtype,
        "batch": case.batch, "shape": case.shape, "baseline": case.baseline,
        "median_ms": None, "first_ms": None, "repeats": timer.repeats,
        "throughput": None, "throughput_unit": None,
        "peak_mib": None, "peak_delta_mib": None, "ratio": None,
        "status": "ok", "extra": dict(case.extra),
    }
    if budget is not None and budget.spent():
        row["status"] = f"skipped: time budget of {budget.seconds:.0f} s spent"
        return row
    timed = None
    start_mib = _allocated_mib(timer.device)
    try:
        timed = case.setup()
        m = timer.measure(timed.fn)
        row.update(median_ms=_sig(m.median_ms), first_ms=_sig(m.first_ms),
                   peak_mib=_round(m.peak_mib), peak_delta_mib=_round(m.peak_delta_mib))
        row["extra"]["min_ms"] = _sig(min(m.times_ms))
        if timed.work is not None and m.median_ms > 0:
            row["throughput"] = _sig(timed.work.amount / (m.median_ms / 1e3) / UNITS[timed.work.unit])
            row["throughput_unit"] = timed.work.unit
        if timed.after is not None:
            row["extra"].update(timed.after())
    except Skip as err:
        row["status"] = f"skipped: {err}"
    except Exception as err:  # noqa: BLE001 -- every failure becomes a row, see module doc
        _forget_exception(err)
        reason = triton_backend_reason(err)
        if is_oom(err):
            row["status"] = "OOM"
        elif reason is not None:
            row["status"] = f"skipped: {reason}"
        else:
            row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    finally:
        del timed
        reset_state(timer.device)
    _check_nothing_left(row, start_mib, _allocated_mib(timer.device))
    return row


# Allocations a case may leave behind without it being a leak: cuBLAS / cuDNN
# workspaces and the like, which stay once created (tens of MiB at most).
LEAK_TOLERANCE_MIB = 256.0


def _check_nothing_left(row: dict, start_mib: Optional[float], end_mib: Optional[float]) -> None:
    """A case that leaves device memory allocated would inflate every later
    row (the H200 run's train_step cases each left their activations behind):
    make it an error row, so the run exits non-zero."""
    if start_mib is None or end_mib is None:
        return
    row["extra"]["start_allocated_mib"] = round(start_mib, 1)
    left = end_mib - start_mib
    if left > LEAK_TOLERANCE_MIB and not row["status"].startswith("error"):
        row["status"] = (f"error: leak: {left:.0f} MiB still allocated after the case "
                         f"(tolerance {LEAK_TOLERANCE_MIB:.0f} MiB); later rows' peaks are inflated")


def _sig(x: float, digits: int = 5) -> float:
    """x to `digits` significant digits (small rates must not round to 0)."""
    return float(f"{x:.{digits}g}")


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 2)


def fill_ratios(rows: list) -> None:
    """ratio = median_ms / the baseline backend's median_ms for the same
    (suite, op, shape, dtype) in the same run: below 1 is faster."""
    base = {
        (r["suite"], r["op"], r["shape"], r["dtype"]): r["median_ms"]
        for r in rows if r["status"] == "ok" and r["backend"] == r.get("baseline")
    }
    for r in rows:
        ref = base.get((r["suite"], r["op"], r["shape"], r["dtype"]))
        if r["status"] == "ok" and ref:
            r["ratio"] = _sig(r["median_ms"] / ref, 4)


# --- where and what the run was ----------------------------------------------

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """File-name form of the device kind: 'nvidia-h100-80gb-hbm3', 'cpu-x86_64'."""
    if device.type == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")
    return f"cpu-{platform.machine().lower()}"


def git_commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "timestamp": now.isoformat(timespec="seconds"),
        "run_id": now.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}",
        "git_commit": git_commit(),
        "device": device_name(device),
        "device_slug": device_slug(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
    }
