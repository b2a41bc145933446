"""Edges of the learning-rate schedule and the validation metrics that the
broad tests in test_train.py leave open (mutmut found them: see docs/testing.md)."""
from __future__ import annotations

import pytest
import torch

from migt.training import QuantileMetrics, warmup_cosine, warmup_cosine_factor

LEVELS = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]


# ---------------------------------------------------------------- schedule

def test_one_warmup_step_starts_at_the_full_rate():
    assert warmup_cosine_factor(0, 1, 10, 0.1) == 1.0
    assert warmup_cosine_factor(1, 1, 10, 0.1) == 1.0  # the cosine starts at 1


def test_one_decay_step_reaches_the_floor():
    # total - warmup = 1: the step after warm-up is already the end of the cosine
    assert warmup_cosine_factor(2, 2, 3, 0.1) == 1.0
    assert warmup_cosine_factor(3, 2, 3, 0.1) == pytest.approx(0.1)


def test_scheduler_sets_every_group_to_base_lr_times_factor():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1], "lr": 0.5}, {"params": params[1:], "lr": 2.0}])
    sched = warmup_cosine(opt, 3, 9, 0.2)
    for step in range(12):
        factor = warmup_cosine_factor(step, 3, 9, 0.2)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5 * factor, 2.0 * factor]), step
        opt.step()
        sched.step()
    assert warmup_cosine(torch.optim.SGD(params, lr=1.0), 3, 9).lr_lambdas[0](100) == pytest.approx(0.1)


# ---------------------------------------------------------------- metrics

def pinball(q, y, levels):
    lv = torch.tensor(levels, dtype=torch.float64)
    err = y.double()[..., None] - q.double()
    return torch.maximum(lv * err, (lv - 1) * err).mean(-1)  # [B, H]


def ladder(batch, horizons, shift=0.0):
    """(B, H, 7) non-crossing quantiles -3..3 (+ shift)."""
    return (torch.arange(-3.0, 4.0) + shift).expand(batch, horizons, 7).clone()


def test_two_horizons_average_and_coverage():
    q = ladder(3, 2)
    y = torch.tensor([[0.5, 2.0], [-2.5, 5.0], [0.0, -0.5]])
    m = QuantileMetrics(LEVELS, 2, torch.device("cpu"))
    m.update(q, y)
    r = m.result()
    per_h = pinball(q, y, LEVELS).mean(0)  # [H]
    assert r["pinball_per_horizon"] == pytest.approx(per_h.tolist(), rel=1e-12)
    assert r["loss"] == pytest.approx(float(per_h.mean()), rel=1e-12)
    # inside [-1, 1]: 0.5, 0.0, -0.5 of 6; inside [-3, 3]: all but 5.0
    assert r["coverage_50"] == pytest.approx(3 / 6) and r["coverage_90"] == pytest.approx(5 / 6)
    assert r["n_samples"] == 3 and r["quantile_crossings"] == 0


def test_one_sample():
    q, y = ladder(1, 1), torch.tensor([[4.0]])
    m = QuantileMetrics(LEVELS, 1, torch.device("cpu"))
    m.update(q, y)
    r = m.result()
    assert r["loss"] == pytest.approx(float(pinball(q, y, LEVELS)), rel=1e-12)
    assert r["coverage_90"] == 0.0 and r["n_samples"] == 1


def test_sums_keep_float64_precision():
    # float32 sums (or float32 levels) would lose the small batch next to the
    # large one: 1e8 + 1 is not a float32
    m = QuantileMetrics(LEVELS, 1, torch.device("cpu"))
    big_q, big_y = ladder(1, 1), torch.tensor([[1e8]])
    small_q, small_y = ladder(1, 1), torch.tensor([[0.1]])
    m.update(big_q, big_y)
    m.update(small_q, small_y)
    exact = (pinball(big_q, big_y, LEVELS) + pinball(small_q, small_y, LEVELS)) / 2
    assert m.result()["loss"] == pytest.approx(float(exact), rel=1e-15)


def test_coverage_of_an_interval_whose_levels_are_missing_is_none():
    no_quartiles = [0.05, 0.5, 0.95]  # 90% interval present, 50% absent
    m = QuantileMetrics(no_quartiles, 1, torch.device("cpu"))
    m.update(torch.tensor([[[-1.0, 0.0, 1.0]]]), torch.tensor([[0.2]]))
    r = m.result()
    assert r["coverage_50"] is None and r["coverage_90"] == 1.0
    one_sided = [0.25, 0.5, 0.95]  # has the 50% interval's lower level only
    m = QuantileMetrics(one_sided, 1, torch.device("cpu"))
    m.update(torch.tensor([[[-1.0, 0.0, 1.0]]]), torch.tensor([[0.2]]))
    assert m.result()["coverage_50"] is None and m.result()["coverage_90"] is None


def test_running_sums_live_on_the_given_device():
    # the trainer all-reduces `sums` across ranks on the process's device (NCCL
    # needs them on the GPU); "meta" stands in for a second device here
    m = QuantileMetrics(LEVELS, 2, torch.device("meta"))
    assert m.sums.device.type == "meta" and m._levels_t.device.type == "meta"
    assert m.sums.dtype == torch.float64 and m.sums.shape == (2 + 2 + 2,)
