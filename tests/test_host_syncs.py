"""A model's training step reads the device from the host once: the input
range checks, all read together; none inside migt.input_values_checked(),
which the trainer uses after checking the host batch. Each read of a GPU tensor's value (item, bool,
tolist, nonzero, a copy to the host, a blocking copy from pageable host
memory) waits for every kernel queued before it, and the GPU then idles
while the host launches the next ones. The CPU cannot time that, but it can
count the reads: a TorchFunctionMode sees every tensor method call."""
from __future__ import annotations

import collections
import math
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from migt import input_values_checked, pinball_loss, validate_inputs
from migt.data import synthetic_batch
from migt.loss import _checked_levels
from test_model import make_model

ROOT = Path(__file__).resolve().parents[1]
HOST_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
    torch.Tensor.__index__, torch.Tensor.nonzero, torch.Tensor.numpy, torch.Tensor.cpu,
}


class HostReads(TorchFunctionMode):
    """Counts reads of tensor values by the project file that asked (sites),
    and by the project function that called into that file (callers)."""

    def __init__(self):
        super().__init__()
        self.sites = collections.Counter()
        self.callers = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            ours = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(str(ROOT))
                    and "/tests/" not in f.filename]
            site = f"{Path(ours[-1].filename).relative_to(ROOT)}" if ours else "outside the project"
            self.sites[site] += 1
            outside = [f for f in ours if not f.filename.endswith(site)]
            if outside:
                self.callers[f"{Path(outside[-1].filename).relative_to(ROOT)}:{outside[-1].name}"] += 1
        return func(*args, **(kwargs or {}))


def small_trainer(**options):
    from migt.config import MIGTConfig
    from migt.data.bars import synthetic_bars
    from migt.data.dataset import BarDayDataset, chronological_split
    from migt.training import Trainer, TrainOptions

    config = MIGTConfig(d_model=16, n_heads=2, d_ff=32, n_temporal_layers=1, n_variable_layers=1, dropout=0.1)
    train, val, _ = chronological_split(BarDayDataset.from_bars(synthetic_bars(16, seed=4), config), 0.2, 0.0)
    return Trainer(config, train, val, TrainOptions(batch_size=2, progress=False, **options))


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_a_training_step_reads_the_device_once(backend):
    model = make_model(backend=backend, n_heads=2).train()  # Dh=16: the Triton kernels take it
    batch = synthetic_batch(2, model.config, seed=0, seq_len=8)

    # the loss checks the levels once (on the host) and keeps them: as a second step would
    levels, H = model.config.quantiles, batch["targets"].shape[1]
    pinball_loss(torch.zeros(1, H, len(levels)), torch.zeros(1, H), levels)
    reads = HostReads()
    with reads:
        out = model(batch["features"], batch["attention_mask"], batch["temporal_info"])
        pinball_loss(out["quantiles"], batch["targets"], levels).backward()
    assert dict(reads.sites) == {"migt/validation.py": 1}
    # the same step for a caller that checked the batch itself: no read at all
    reads = HostReads()
    with reads, input_values_checked():
        out = model(batch["features"], batch["attention_mask"], batch["temporal_info"])
        pinball_loss(out["quantiles"], batch["targets"], levels).backward()
    assert not reads.sites


def test_input_values_checked_skips_only_the_value_checks():
    model = make_model().eval()
    batch = synthetic_batch(2, model.config, seed=0, seq_len=8)
    batch["temporal_info"]["day_of_week"][0] = 9  # out of range
    with pytest.raises(ValueError, match=r"day_of_week.*\[0, 6\]"):
        model(batch["features"], batch["attention_mask"], batch["temporal_info"])
    with input_values_checked(), pytest.raises(ValueError, match="attention_mask must have shape"):
        model(batch["features"], batch["attention_mask"][:, :4], batch["temporal_info"])
    with input_values_checked():
        validate_inputs(model.config, batch["features"], batch["attention_mask"], batch["temporal_info"])
    with pytest.raises(ValueError, match="day_of_week"):  # the context is gone
        validate_inputs(model.config, batch["features"], batch["attention_mask"], batch["temporal_info"])


def test_python_levels_reach_a_device_once():
    # the "meta" device stands in for a GPU: a second call with the same
    # levels must not check or copy them again
    meta = torch.device("meta")
    first = _checked_levels([0.1, 0.5, 0.9], 3, torch.float32, meta)
    assert first.device == meta and first.dtype == torch.float32 and first.shape == (3,)
    reads = HostReads()
    with reads:
        assert _checked_levels((0.1, 0.5, 0.9), 3, torch.float32, meta) is first
    assert not reads.sites
    assert _checked_levels([0.1, 0.5, 0.9], 3, torch.bfloat16, meta) is not first
    assert _checked_levels([0.1, 0.5, 0.8], 3, torch.float32, meta) is not first
    with pytest.raises(ValueError, match=r"strictly inside \(0, 1\)"):
        _checked_levels([0.1, 1.0, 0.9], 3, torch.float32, meta)
    with pytest.raises(ValueError, match="Q=2 quantile levels"):  # kept levels, another Q
        _checked_levels([0.1, 0.5, 0.9], 2, torch.float32, meta)


def test_a_trainer_step_reads_its_host_batch_and_then_its_stats_once():
    # the input value checks on the host batch (no device read), then loss
    # and gradient norm together after the optimizer step (reading the norm
    # before it would idle the GPU while the host launches the step)
    trainer = small_trainer(max_steps=2)
    batches = trainer.train_batches()
    trainer.train_step(next(batches))
    batch = next(batches)
    reads = HostReads()
    with reads:
        stats = trainer.train_step(batch)
    assert dict(reads.sites) == {"migt/validation.py": 1, "migt/training/trainer.py": 1}
    # the value checks read the host batch, before it moves to the device;
    # the forward reads nothing
    assert reads.callers["migt/training/trainer.py:_to_device"] == 1
    assert not any(caller.startswith("migt/model.py") for caller in reads.callers)
    assert stats["loss"] > 0 and stats["grad_norm"] > 0


def test_fit_reads_each_step_after_queueing_the_next(monkeypatch):
    from migt.training import trainer as trainer_module

    trainer = small_trainer(max_steps=7, log_every=4, eval_every=100)
    events = []
    launch, result = trainer_module.Trainer.launch_step, trainer_module.StepStats.result

    queued = {}

    def logged_launch(self, batch):
        stats = launch(self, batch)
        stats.step = self.step
        queued[self.step] = stats
        events.append(f"launch {self.step}")
        return stats

    def logged_result(self):
        if self._result is None:
            events.append(f"read {self.step}")
        return result(self)

    monkeypatch.setattr(trainer_module.Trainer, "launch_step", logged_launch)
    monkeypatch.setattr(trainer_module.StepStats, "result", logged_result)
    records = trainer.fit()
    # a step's stats are read once the next step is queued; a log (step 4)
    # and the end (step 7) read their own step at once
    assert events == ["launch 1", "launch 2", "read 1", "launch 3", "read 2", "launch 4", "read 3", "read 4",
                      "launch 5", "launch 6", "read 5", "launch 7", "read 6", "read 7"]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [4, 7]
    # each record: the mean loss of its own steps, each counted once, and
    # the grad norm and learning rate of its last step
    for record, steps in zip(train, ([1, 2, 3, 4], [5, 6, 7])):
        own = [result(queued[step]) for step in steps]
        assert record["loss"] == pytest.approx(sum(r["loss"] for r in own) / len(own), rel=1e-12)
        assert (record["grad_norm"], record["lr"]) == (own[-1]["grad_norm"], own[-1]["lr"])
        assert math.isfinite(record["loss"]) and record["grad_norm"] > 0
    assert len({r["loss"] for r in (result(s) for s in queued.values())}) == 7  # the steps differ


def test_bench_steps_check_inputs_on_the_host_but_the_device_checks_case():
    from bench import suite_model
    from bench.common import RunSettings

    settings = RunSettings(device=torch.device("cpu"), batch_sizes=(2,), dtypes=("bf16",), backends=("sdpa",),
                           seq_len=8, model_seq_len=8, measure_saved=False)
    steps = {c.op: c for c in suite_model.cases(settings) if c.op in ("train_step", "train_step_device_checks")}
    callers = {}
    for op, case in steps.items():
        timed = case.setup()
        timed.fn()  # warm: the loss's levels reach the device once
        reads = HostReads()
        with reads:
            timed.fn()
        callers[op] = dict(reads.callers)
    assert callers == {"train_step": {"bench/suite_model.py:checked_on_host": 1},
                       "train_step_device_checks": {"migt/model.py:forward": 1}}
