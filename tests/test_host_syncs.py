"""A training step reads the device from the host once: the input range
checks, all read together. Each read of a GPU tensor's value (item, bool,
tolist, nonzero, a copy to the host, a blocking copy from pageable host
memory) waits for every kernel queued before it, and the GPU then idles
while the host launches the next ones. The CPU cannot time that, but it can
count the reads: a TorchFunctionMode sees every tensor method call."""
from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from migt import pinball_loss
from migt.data import synthetic_batch
from migt.loss import _checked_levels
from test_model import make_model

ROOT = Path(__file__).resolve().parents[1]
HOST_READS = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
    torch.Tensor.__index__, torch.Tensor.nonzero, torch.Tensor.numpy, torch.Tensor.cpu,
}


class HostReads(TorchFunctionMode):
    """Counts reads of tensor values by the project file and line that asked."""

    def __init__(self):
        super().__init__()
        self.sites = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            ours = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(str(ROOT))
                    and "/tests/" not in f.filename]
            self.sites[f"{Path(ours[-1].filename).relative_to(ROOT)}" if ours else "outside the project"] += 1
        return func(*args, **(kwargs or {}))


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


def test_a_trainer_step_reads_the_device_twice():
    # the input checks, then loss and gradient norm together after the
    # optimizer step (reading the norm before it would idle the GPU while the
    # host launches the step)
    from migt.config import MIGTConfig
    from migt.data.bars import synthetic_bars
    from migt.data.dataset import BarDayDataset, chronological_split
    from migt.training import Trainer, TrainOptions

    config = MIGTConfig(d_model=16, n_heads=2, d_ff=32, n_temporal_layers=1, n_variable_layers=1, dropout=0.1)
    train, val, _ = chronological_split(BarDayDataset.from_bars(synthetic_bars(16, seed=4), config), 0.2, 0.0)
    trainer = Trainer(config, train, val, TrainOptions(max_steps=2, batch_size=2, progress=False))
    batches = trainer.train_batches()
    trainer.train_step(next(batches))
    batch = next(batches)
    reads = HostReads()
    with reads:
        stats = trainer.train_step(batch)
    assert dict(reads.sites) == {"migt/validation.py": 1, "migt/training/trainer.py": 1}
    assert stats["loss"] > 0 and stats["grad_norm"] > 0
