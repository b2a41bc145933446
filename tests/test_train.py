"""Training: schedule, metrics, learning, exact resume and 2-process DDP (gloo, CPU)."""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from migt.config import MIGTConfig
from migt.data.bars import synthetic_bars
from migt.data.dataset import BarDayDataset, chronological_split
from migt.train import main
from migt.training import QuantileMetrics, Trainer, TrainOptions, warmup_cosine_factor

TINY = dict(d_model=16, n_heads=2, d_ff=32, n_temporal_layers=1, n_variable_layers=1, dropout=0.1)
TINY_FLAGS = ["--d-model", "16", "--n-heads", "2", "--d-ff", "32",
              "--n-temporal-layers", "1", "--n-variable-layers", "1", "--no-progress"]


def test_warmup_cosine_schedule():
    f = [warmup_cosine_factor(s, 4, 20, 0.1) for s in range(25)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(f[3:], f[4:]))  # non-increasing after warm-up
    assert f[20] == pytest.approx(0.1) and f[24] == pytest.approx(0.1)
    assert f[12] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine


def test_quantile_metrics_by_hand():
    levels = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    q = torch.tensor([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]).repeat(2, 1, 1)  # [B=2, H=1, Q=7]
    q[1, 0, 4] = -5.0  # one crossing pair (0.5 -> 0.75) and one more (0.75 -> 0.9 is fine: -5 < 2)
    y = torch.tensor([[0.5], [2.5]])
    m = QuantileMetrics(levels, 1, torch.device("cpu"))
    m.update(q, y)
    r = m.result()
    assert r["quantile_crossings"] == 1
    assert r["coverage_50"] == 0.5   # 0.5 in [-1, 1]; 2.5 not in [-1, -5]
    assert r["coverage_90"] == 1.0   # both in [-3, 3]
    lv = torch.tensor(levels)
    expected = sum(
        float(torch.maximum(lv * (y[b, 0] - q[b, 0]), (lv - 1) * (y[b, 0] - q[b, 0])).mean()) for b in range(2)
    ) / 2
    assert r["loss"] == pytest.approx(expected) and r["n_samples"] == 2


def test_cli_training_lowers_validation_loss(tmp_path):
    out = tmp_path / "run"
    argv = ["--data", "synthetic", "--synthetic-days", "24", *TINY_FLAGS, "--max-steps", "20",
            "--batch-size", "4", "--eval-every", "10", "--warmup-steps", "3", "--lr", "3e-3",
            "--val-fraction", "0.25", "--test-fraction", "0.1", "--out", str(out)]
    trainer, summary = main(argv)
    vals = [r for r in trainer.history if r["split"] == "val"]
    assert [r["step"] for r in vals] == [10, 20]
    # Loss at step 0 vs the end: evaluate a freshly initialised model on the same split.
    fresh = Trainer(trainer.config, trainer.train_set, trainer.val_set,
                    TrainOptions(**{**trainer.options.__dict__, "progress": False}))
    initial = fresh.evaluate(trainer.val_set)["loss"]
    assert vals[-1]["loss"] < 0.8 * initial, (initial, [r["loss"] for r in vals])
    assert summary["val"]["quantile_crossings"] == 0 and summary["test"]["quantile_crossings"] == 0
    assert 0.0 <= summary["val"]["coverage_90"] <= 1.0 and len(summary["val"]["pinball_per_horizon"]) == 5
    for name in ("checkpoint.pt", "checkpoint_best.pt", "config.yaml", "metrics.jsonl", "summary.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "summary.json").read_text())["step"] == 20


@pytest.fixture(scope="module")
def splits():
    config = MIGTConfig(**TINY)
    ds = BarDayDataset.from_bars(synthetic_bars(16, seed=4), config)
    train, val, _ = chronological_split(ds, 0.2, 0.0)
    return config, train, val


def test_resume_reproduces_the_uninterrupted_run(splits, tmp_path):
    config, train, val = splits
    # 5 steps per epoch with batch 2: the interruption (step 7) falls mid-epoch.
    opts = TrainOptions(max_steps=12, batch_size=2, eval_every=6, warmup_steps=2, lr=3e-3, progress=False)
    straight = Trainer(config, train, val, opts)
    straight.fit()

    first = Trainer(config, train, val, opts)
    first.fit(stop_at=7)
    first.save_checkpoint(tmp_path / "ckpt.pt")
    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    resumed = Trainer(config, train, val, opts)
    resumed.load_checkpoint(tmp_path / "ckpt.pt")
    assert resumed.step == 7
    resumed.fit()
    assert resumed.step == straight.step == 12
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], abs=1e-6)
    # A different config is refused by name.
    other = Trainer(MIGTConfig(**{**TINY, "dropout": 0.2}), train, val, opts)
    with pytest.raises(ValueError, match="dropout: checkpoint 0.1 vs now 0.2"):
        other.load_checkpoint(tmp_path / "ckpt.pt")
    rescaled = Trainer(config, train, val, TrainOptions(**{**opts.__dict__, "target_scale": 1.0}))
    with pytest.raises(ValueError, match="target_scale: checkpoint 100.0 vs now 1.0"):
        rescaled.load_checkpoint(tmp_path / "ckpt.pt")


def test_logged_lr_is_the_one_the_step_used(splits):
    config, train, val = splits
    trainer = Trainer(config, train, val, TrainOptions(max_steps=10, batch_size=2, warmup_steps=4, lr=1e-3,
                                                       progress=False))
    batches = trainer.train_batches()
    assert [trainer.train_step(next(batches))["lr"] for _ in range(2)] == pytest.approx([2.5e-4, 5e-4])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, argv: list, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, summary = main(argv)
    torch.save({"params": trainer.model.state_dict(), "batches": trainer.epoch_batches(0),
                "summary": summary, "history": trainer.history,
                "warnings": [str(w.message) for w in caught]}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_two_process_ddp_ends_with_identical_parameters(tmp_path):
    argv = ["--data", "synthetic", "--synthetic-days", "16", *TINY_FLAGS, "--max-steps", "4",
            "--batch-size", "2", "--eval-every", "4", "--warmup-steps", "1", "--lr", "3e-3",
            "--device", "cpu", "--out", str(tmp_path / "run")]
    mp.spawn(_ddp_worker, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # The group was freed by shutdown, not left for interpreter exit, where gloo
    # aborted about 1 run in 75 ("terminate called without an active exception").
    for r in (r0, r1):
        assert not [w for w in r["warnings"] if "process group" in w], r["warnings"]
    for name, p0 in r0["params"].items():
        assert torch.equal(p0, r1["params"][name]), name
    # Each rank trained on its own shard, and both report the same (all-reduced) metrics.
    shard0 = {i for b in r0["batches"] for i in b}
    shard1 = {i for b in r1["batches"] for i in b}
    assert shard0 and shard1 and not shard0 & shard1
    assert r0["summary"] == r1["summary"] and r0["summary"]["step"] == 4
    # The logged train loss is the mean over both shards, not rank 0's alone.
    train_logs = [[r for r in h if r["split"] == "train"] for h in (r0["history"], r1["history"])]
    assert train_logs[0] and train_logs[0] == train_logs[1]
    assert math.isfinite(r0["summary"]["val"]["loss"])
    # Only rank 0 wrote, and the checkpoint holds both ranks' RNG states.
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert len(state["rng"]) == 2 and state["world_size"] == 2
    for name, p in state["model"].items():
        assert torch.equal(p, r0["params"][name]), name
