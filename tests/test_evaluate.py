"""python -m migt.evaluate, its scores (pinball, coverage, calibration, CRPS) and baselines."""
from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from trained_run import trained_run

from migt.evaluate import main as evaluate
from migt.forecast.baselines import gaussian_quantiles, rolling_volatility, unconditional_quantiles
from migt.forecast.scores import crps_weights, score_quantiles

LEVELS = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = trained_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("eval")
    result = evaluate(["--checkpoint", str(run.out), "--data", "synthetic", "--out", str(out), "--no-progress"])
    return run, result


def test_report_scores_the_test_split_like_training(report):
    run, result = report
    rep, test = result.report, run.summary["test"]
    assert rep["split"] == "test" and rep["n_sessions"] == test["n_samples"] == 3
    model = rep["results"]["migt"]
    # Same sessions, same units: the training summary's test metrics come back.
    assert model["loss"] == pytest.approx(test["loss"], rel=1e-6)
    np.testing.assert_allclose(model["pinball_per_horizon"], test["pinball_per_horizon"], rtol=1e-6)
    assert model["coverage_90"]["observed"] == pytest.approx(test["coverage_90"])
    assert model["coverage_50"]["nominal"] == 0.5 and model["coverage_90"]["nominal"] == pytest.approx(0.9)
    assert set(rep["results"]) == {"migt", "unconditional", "rolling_vol_gaussian"}
    for scores in rep["results"].values():
        assert scores["n_samples"] == 3 and np.shape(scores["pinball"]) == (5, 7)
        assert np.shape(scores["calibration"]) == (5, 7) and len(scores["crps_per_horizon"]) == 5
    assert rep["skipped_too_little_history"] == 1 and rep["left_out_unknown_targets"] == 1


def test_report_files(report):
    _, result = report
    out = result.out_dir
    assert json.loads((out / "metrics.json").read_text())["results"]["migt"]["loss"] > 0
    assert len((out / "forecasts.csv").read_text().splitlines()) == 1 + 3 * 5
    for name in ("calibration.png", "fan_chart.png", "loss_per_horizon.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def test_an_empty_selection_is_refused(report, tmp_path):
    run, _ = report
    with pytest.raises(SystemExit, match="no session to score in split 'test' between 2020-01-01 and 2020-02-01"):
        evaluate(["--checkpoint", str(run.out), "--data", "synthetic", "--out", str(tmp_path),
                  "--start", "2020-01-01", "--end", "2020-02-01"])


def test_scores_by_hand():
    q = np.array([[[-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]]] * 2)  # [N=2, H=1, Q=7]
    y = np.array([[0.5], [2.5]])
    s = score_quantiles(q, y, LEVELS)
    lv = np.array(LEVELS)
    err = y[:, :, None] - q
    pinball = np.maximum(lv * err, (lv - 1) * err).mean(0)  # [1, 7]
    np.testing.assert_allclose(s["pinball"], pinball)
    assert s["loss"] == pytest.approx(pinball.mean())
    assert s["crps"] == pytest.approx(2 * (pinball[0] * [0.075, 0.1, 0.2, 0.25, 0.2, 0.1, 0.075]).sum())
    assert s["coverage_50"]["observed"] == 0.5 and s["coverage_90"]["observed"] == 1.0
    # y=0.5 lies at or below the quantiles 1, 2, 3; y=2.5 only below 3.
    np.testing.assert_allclose(s["calibration"], [[0, 0, 0, 0, 0.5, 0.5, 1.0]])
    assert s["quantile_crossings"] == 0
    with pytest.raises(ValueError, match="targets must be finite"):
        score_quantiles(q, np.array([[0.5], [np.nan]]), LEVELS)


def test_crps_from_quantiles_approaches_the_exact_gaussian_crps():
    assert crps_weights(LEVELS) == pytest.approx([0.075, 0.1, 0.2, 0.25, 0.2, 0.1, 0.075])
    levels = np.linspace(0.005, 0.995, 199)
    z = np.array([NormalDist().inv_cdf(t) for t in levels])
    y = np.array([[-1.3], [0.2], [2.0]])
    s = score_quantiles(np.broadcast_to(z, (3, 1, len(levels))), y, levels)
    exact = np.mean([v * (2 * NormalDist().cdf(v) - 1) + 2 * NormalDist().pdf(v) - 1 / math.sqrt(math.pi)
                     for v in y[:, 0]])
    assert s["crps"] == pytest.approx(exact, rel=0.01)


def test_baselines_by_hand():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((50, 2))
    q = unconditional_quantiles(train, LEVELS, 4)
    assert q.shape == (4, 2, 7)
    np.testing.assert_allclose(q[3, 1], np.quantile(train[:, 1], LEVELS))
    close = 100 * np.exp(np.cumsum(0.01 * rng.standard_normal(40)))
    sigma = rolling_volatility(close, np.array([10, 39]), window=5)
    r = np.diff(np.log(close))  # r[i - 1] is the return into bar i
    np.testing.assert_allclose(sigma, [np.std(r[5:10], ddof=1), np.std(r[34:39], ddof=1)])
    g = gaussian_quantiles(np.array([0.5]), [4, 16], LEVELS)
    assert g[0, 1, 6] == pytest.approx(0.5 * 4 * NormalDist().inv_cdf(0.95))
    assert g[0, 0, 3] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="fewer than 2 bar returns"):
        rolling_volatility(close, np.array([0]), window=5)
