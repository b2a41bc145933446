"""Trainer: the training loop of MIGT-TVDT in small, separately callable steps.

One instance per process. With a process group (torchrun) the model is
wrapped in DistributedDataParallel and each rank reads its own shard of every
epoch (DistributedSampler); only rank 0 writes logs and checkpoints.

Determinism: the batch order of step s is a function of (seed, epoch, rank)
only, so a run resumed from a checkpoint at step s continues with exactly the
batches, learning rates, optimizer state and dropout masks (RNG states are
saved per rank) of the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..config import MIGTConfig
from ..data.dataset import BarDayDataset, collate_days
from ..data.features import FEATURE_NAMES
from ..loss import pinball_loss
from ..model import MIGT_TVDT
from ..validation import input_values_checked, validate_inputs
from . import checkpoint as ckpt
from .distributed import DistContext, all_reduce_sum, barrier, gather_objects
from .metrics import QuantileMetrics
from .schedule import warmup_cosine


@dataclass
class TrainOptions:
    """Optimisation and bookkeeping settings (the model's are in MIGTConfig)."""

    max_steps: int = 2000
    batch_size: int = 32          # per process
    eval_batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0        # max global grad norm; <= 0 disables
    eval_every: int = 200         # also the checkpoint interval
    log_every: int = 20
    # Targets are multiplied by this before the loss (100: percent log returns).
    # 5-minute returns are ~1e-3; at unit scale the heads' softplus increments
    # would have to shrink ~1000x from their initial ~0.7 before the loss even
    # sees the spread, so training starts in percent.
    target_scale: float = 100.0
    seed: int = 0
    num_workers: int = 0
    amp: str = "auto"             # "auto" = bf16 autocast on CUDA, "bf16", "off"
    compile: bool = False         # torch.compile the model (the fastest measured setting on CUDA)
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "eval_batch_size", "eval_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0; got {self.warmup_steps}")
        if not (self.lr > 0 and self.target_scale > 0):
            raise ValueError(f"lr and target_scale must be > 0; got {self.lr}, {self.target_scale}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}; got {self.amp!r}")


AMP_MODES = ("auto", "bf16", "off")
# Progress-bar labels of the throughput fields of the train log.
_BAR_LABELS = {"samples_per_s": "samples/s", "peak_mem_gib": "peak_GiB"}


class StepStats:
    """One step's loss and gradient norm on their way to the host: a copy
    queued behind the step's kernels (non-blocking into pinned memory on
    CUDA), read by result(), which waits for that step only."""

    def __init__(self, values: torch.Tensor, lr: float):
        self.lr = lr
        self._event = None
        if values.device.type == "cuda":
            self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self._host.copy_(values, non_blocking=True)  # on values' device's current stream
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(values.device))  # that stream, whatever device is current
        else:
            self._host = values
        self._result = None

    def result(self) -> dict:
        """{"loss", "grad_norm" (NaN without clipping), "lr"}, as floats."""
        if self._result is None:
            if self._event is not None:
                self._event.synchronize()
            loss, grad_norm = self._host.tolist()
            self._result = {"loss": loss, "grad_norm": grad_norm, "lr": self.lr}
        return self._result


def autocast_context(amp: str, device: torch.device):
    """A factory of the forward's autocast context: bf16 for "bf16", and for
    "auto" on CUDA (how the model trains there); float32 otherwise."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}; got {amp!r}")
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def compile_model(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile of ``module`` (the kernels are custom ops, so the whole
    model is one graph). Parameters stay shared with ``module``; save and load
    the uncompiled module, whose state-dict keys have no ``_orig_mod.`` prefix."""
    return torch.compile(module)


class Trainer:
    def __init__(
        self,
        config: MIGTConfig,
        train_set: BarDayDataset,
        val_set: BarDayDataset | None,
        options: TrainOptions,
        *,
        ctx: DistContext | None = None,
        out_dir: str | Path | None = None,
        data_info: dict | None = None,
    ) -> None:
        """data_info: how the sessions were cut and split (session open, split
        fractions, ...), stored in checkpoints for predict/evaluate."""
        self.config, self.options = config, options
        self.data_info = dict(data_info or {})
        self.ctx = ctx or DistContext()
        self.device = self.ctx.device
        self.train_set, self.val_set = train_set, val_set
        self.out_dir = Path(out_dir) if out_dir is not None else None

        per_epoch = len(train_set) // self.ctx.world_size // options.batch_size
        if per_epoch < 1:
            raise ValueError(
                f"the train split has {len(train_set)} samples, fewer than batch_size={options.batch_size} "
                f"x {self.ctx.world_size} process(es); lower --batch-size or use more data"
            )
        self.steps_per_epoch = per_epoch

        # Same initial weights on every rank (DDP also broadcasts rank 0's), then
        # a per-rank stream for dropout.
        torch.manual_seed(options.seed)
        self.model = MIGT_TVDT(config).to(self.device)
        torch.manual_seed(options.seed + 1000 * (self.ctx.rank + 1))
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model
        # The compiled wrapper is used for training steps only; evaluation and
        # checkpoints use the plain module (same parameters).
        self.forward_model = compile_model(self.ddp) if options.compile else self.ddp
        # fused: one multi-tensor kernel per step, its step counters on the
        # device (the default foreach path reads host-side counters and
        # launches a dozen kernels per parameter group)
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=options.lr, betas=(0.9, 0.95),
                                           fused=self.device.type in ("cuda", "cpu"))
        self.scheduler = warmup_cosine(self.optimizer, options.warmup_steps, options.max_steps, options.min_lr_ratio)
        self.levels = list(config.quantiles)
        self.step = 0
        self.best_val = math.inf
        self.history: list[dict] = []
        self._autocast = autocast_context(options.amp, self.device)

    def release_distributed(self) -> None:
        """Drop the DDP wrapper, the last holder of the process group, so that the
        group's threads are joined by destroy_process_group and not at interpreter
        exit (where gloo can abort the process). The trainer stays usable on one rank."""
        if self.ddp is not self.model:
            self.ddp = self.forward_model = self.model
            gc.collect()  # DDP's reducer sits in reference cycles

    # ------------------------------------------------------------------ pieces
    def _param_groups(self) -> list[dict]:
        """Weight decay on matrices only; biases, norms and 1-D embeddings are not decayed."""
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        return [{"params": decay, "weight_decay": self.options.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def _loader(self, dataset: BarDayDataset, batches: list[list[int]]) -> DataLoader:
        # A private generator: building a loader must not draw from the global
        # RNG, or resuming mid-epoch would shift the dropout stream.
        return DataLoader(
            dataset, batch_sampler=batches, collate_fn=collate_days,
            num_workers=self.options.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(0),
        )

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch`` (full batches only), deterministic."""
        sampler = DistributedSampler(
            self.train_set, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
            shuffle=True, seed=self.options.seed, drop_last=True,
        )
        sampler.set_epoch(epoch)
        order = list(sampler)
        bs = self.options.batch_size
        return [order[i * bs:(i + 1) * bs] for i in range(self.steps_per_epoch)]

    def train_batches(self) -> Iterator[dict]:
        """Batches from the current step on, across epochs, forever."""
        epoch, offset = divmod(self.step, self.steps_per_epoch)
        while True:
            yield from self._loader(self.train_set, self.epoch_batches(epoch)[offset:])
            epoch, offset = epoch + 1, 0

    def _to_device(self, batch: dict) -> dict:
        # The input value checks run here, on the host batch; the forwards then
        # run under input_values_checked(), where the model would otherwise
        # read them back from the GPU (a host sync) every step.
        validate_inputs(self.config, batch["features"], batch["attention_mask"], batch["temporal_info"])
        nb = self.device.type == "cuda"
        return {
            "features": batch["features"].to(self.device, non_blocking=nb),
            "attention_mask": batch["attention_mask"].to(self.device, non_blocking=nb),
            "temporal_info": {k: v.to(self.device, non_blocking=nb) for k, v in batch["temporal_info"].items()},
            "targets": batch["targets"].to(self.device, non_blocking=nb) * self.options.target_scale,
        }

    def train_step(self, batch: dict) -> dict:
        """One optimisation step on a collated batch; returns loss and grad norm
        (waiting for the step to finish on the device)."""
        return self.launch_step(batch).result()

    def launch_step(self, batch: dict) -> "StepStats":
        """Queue one optimisation step on a collated batch; its loss and grad
        norm come back without blocking the host (StepStats.result waits).
        fit() reads each step's stats after queueing the next step, so the
        GPU always has a step queued while the host reads the last one."""
        self.ddp.train()
        b = self._to_device(batch)
        with self._autocast(), input_values_checked():
            out = self.forward_model(b["features"], b["attention_mask"], b["temporal_info"])
        loss = pinball_loss(out["quantiles"].float(), b["targets"], self.levels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if self.options.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]  # this step's; the scheduler then moves to the next
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        # Loss and norm leave together after the optimizer step: reading the
        # norm before it would idle the GPU while the host launches that step.
        values = torch.stack([loss.detach().float(),
                              grad_norm.float() if grad_norm is not None else torch.full_like(loss, torch.nan)])
        return StepStats(values, lr)

    @torch.no_grad()
    def evaluate(self, dataset: BarDayDataset) -> dict:
        """Metrics (``metrics.QuantileMetrics``) over the whole dataset, in target_scale units.

        Each rank scores a disjoint share of the samples; sums are all-reduced,
        so every rank returns the same numbers.
        """
        self.model.eval()
        metrics = QuantileMetrics(self.levels, self.config.n_horizons, self.device)
        mine = list(range(self.ctx.rank, len(dataset), self.ctx.world_size))
        bs = self.options.eval_batch_size
        batches = [mine[i:i + bs] for i in range(0, len(mine), bs)]
        for batch in self._loader(dataset, batches):
            b = self._to_device(batch)
            with self._autocast(), input_values_checked():
                out = self.model(b["features"], b["attention_mask"], b["temporal_info"])
            metrics.update(out["quantiles"].float(), b["targets"])
        all_reduce_sum(metrics.sums, self.ctx)
        return metrics.result()

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "best_val": self.best_val,
            "config": self.config.to_dict(),
            "train_options": dataclasses.asdict(self.options),
            "feature_names": list(FEATURE_NAMES),
            "horizons": list(self.train_set.horizons),
            "target_scale": self.options.target_scale,
            "world_size": self.ctx.world_size,
            "data": self.data_info,
        }

    def save_checkpoint(self, path: str | Path) -> None:
        """Collective under DDP (RNG states are gathered); only rank 0 writes."""
        rng = gather_objects(ckpt.capture_rng(), self.ctx)
        if self.ctx.is_main:
            ckpt.save_atomic({**self.state(), "rng": rng}, path)
        barrier(self.ctx)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore everything needed to continue exactly where the checkpoint was taken."""
        state = ckpt.load(path)
        differ = ckpt.config_differences(state["config"], self.config.to_dict())
        if differ:
            raise ValueError(
                f"checkpoint {str(path)!r} was trained with a different config; fields differ: " + ", ".join(differ)
            )
        # Options that change the batch order or the units of the loss: resuming
        # with others would silently train a different run (lr, max_steps may change).
        saved_opts, my_opts = state["train_options"], dataclasses.asdict(self.options)
        differ = [k for k in ("batch_size", "seed", "target_scale") if saved_opts.get(k) != my_opts[k]]
        if differ:
            raise ValueError(
                f"checkpoint {str(path)!r} was trained with different options; "
                + ", ".join(f"{k}: checkpoint {saved_opts.get(k)!r} vs now {my_opts[k]!r}" for k in differ)
            )
        if state["world_size"] != self.ctx.world_size:
            raise ValueError(
                f"checkpoint {str(path)!r} was written by {state['world_size']} process(es) but this run has "
                f"{self.ctx.world_size}; the data order would change, so exact resume needs the same count"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.best_val = state["best_val"]
        ckpt.restore_rng(state["rng"][self.ctx.rank])

    # ------------------------------------------------------------------ loop
    def _mean_over_ranks(self, losses: list[float]) -> float:
        """Mean train loss of these steps over every rank's shard (a collective under DDP)."""
        total = torch.tensor(sum(losses) / len(losses), dtype=torch.float64, device=self.device)
        return float(all_reduce_sum(total, self.ctx)) / self.ctx.world_size

    def _throughput(self, step_seconds: list[float], *, all_ranks: bool = False) -> dict:
        """Samples/s over all processes for the steps since the last log line, and
        the peak GPU memory so far (GiB, CUDA only). With ``all_ranks`` (a
        collective, for the log) the slowest rank's time and the largest peak, so
        that every rank logs the same record; else this process's own."""
        seconds = sum(step_seconds)
        peak = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else 0.0
        if all_ranks and self.ctx.enabled:
            both = torch.tensor([seconds, peak], dtype=torch.float64, device=self.device)
            dist.all_reduce(both, op=dist.ReduceOp.MAX)
            seconds, peak = both.tolist()
        out = {"samples_per_s": self.options.batch_size * self.ctx.world_size * len(step_seconds) / max(seconds, 1e-9)}
        if self.device.type == "cuda":
            out["peak_mem_gib"] = peak
        return out

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.ctx.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def validate_and_save(self) -> dict | None:
        """Validation metrics at the current step, logged; checkpoints when out_dir is set."""
        record = None
        if self.val_set is not None and len(self.val_set):
            record = {"step": self.step, "split": "val", **self.evaluate(self.val_set)}
            self._log(record)
        if self.out_dir is not None:
            if record is not None and record["loss"] < self.best_val:
                self.best_val = record["loss"]
                self.save_checkpoint(self.out_dir / "checkpoint_best.pt")
            self.save_checkpoint(self.out_dir / "checkpoint.pt")
        return record

    def fit(self, stop_at: int | None = None) -> list[dict]:
        """Train up to ``options.max_steps`` (or ``stop_at``, to simulate an
        interruption), validating and checkpointing every ``eval_every`` steps
        and at the end. Returns the records logged by this call."""
        end = min(self.options.max_steps, stop_at or self.options.max_steps)
        start_records = len(self.history)
        progress = None
        if self.options.progress and self.ctx.is_main:
            from tqdm.auto import tqdm
            progress = tqdm(total=self.options.max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        batches = self.train_batches()
        running = []
        step_seconds = []  # batch loading + step, validation excluded
        pending = []  # queued steps whose stats are not read yet
        while self.step < end:
            started = time.perf_counter()
            pending.append(self.launch_step(next(batches)))
            boundary = (self.step % self.options.log_every == 0 or self.step % self.options.eval_every == 0
                        or self.step in (end, self.options.max_steps))
            # Read every queued step but the newest: the host waits for the one
            # before it while the GPU has the newest queued. A log, a validation
            # or the end reads the newest too.
            ready, pending = (pending, []) if boundary else (pending[:-1], pending[-1:])
            running.extend(queued.result()["loss"] for queued in ready)
            step_seconds.append(time.perf_counter() - started)
            if progress is not None:
                progress.update(1)
            if not ready:
                continue  # the first step after a boundary: nothing read yet
            stats = ready[-1].result()
            if progress is not None:
                progress.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}",
                                     **{_BAR_LABELS[k]: f"{v:.3g}" for k, v in self._throughput(step_seconds).items()})
            if self.step % self.options.log_every == 0 or self.step == end:
                self._log({"step": self.step, "split": "train", "loss": self._mean_over_ranks(running),
                           "grad_norm": stats["grad_norm"], "lr": stats["lr"],
                           **self._throughput(step_seconds, all_ranks=True)})
                running, step_seconds = [], []
            if self.step % self.options.eval_every == 0 or self.step == self.options.max_steps:
                val = self.validate_and_save()
                if progress is not None and val is not None:
                    progress.write(f"step {self.step}: val loss {val['loss']:.4f} "
                                   f"cov50 {val['coverage_50']} cov90 {val['coverage_90']} "
                                   f"crossings {val['quantile_crossings']}")
        if progress is not None:
            progress.close()
        return self.history[start_records:]
