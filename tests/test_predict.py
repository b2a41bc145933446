"""python -m migt.predict: forecasts per session and horizon, date ranges, output formats, bad input."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from compile_spy import compile_spy  # noqa: F401  (a fixture)
from trained_run import SYNTHETIC_DAYS, trained_run

from migt.data.bars import synthetic_bars
from migt.data.dataset import BarDayDataset, collate_days
from migt.data.features import FEATURE_NAMES
from migt.forecast.sessions import check_feature_names
from migt.forecast.table import parquet_engine, write_table
from migt.predict import main as predict

LEVELS = ["q05", "q10", "q25", "q50", "q75", "q90", "q95"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def forecast(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "forecasts.csv"
    result = predict(["--checkpoint", str(run.out), "--data", "synthetic", "--out", str(out), "--no-progress"])
    return result, pd.read_csv(out)


def test_one_row_per_session_and_horizon_with_non_crossing_quantiles(forecast):
    result, table = forecast
    # The first of the synthetic sessions has no indicator history; every other one is forecast.
    assert result.skipped_history == 1
    assert len(table) == (SYNTHETIC_DAYS - 1) * 5 and table["session"].nunique() == SYNTHETIC_DAYS - 1
    per_session = table.groupby("session")["horizon_bars"].apply(tuple)
    assert set(per_session) == {(3, 6, 12, 24, 48)}
    for kind in ("logret", "price"):
        values = table[[f"{kind}_{q}" for q in LEVELS]].to_numpy()
        assert np.isfinite(values).all() and (np.diff(values, axis=1) >= 0).all(), kind
    np.testing.assert_allclose(table["price_q50"], table["last_close"] * np.exp(table["logret_q50"]), rtol=1e-12)


def test_forecasts_match_the_model_on_the_training_samples(run, forecast):
    """The latest sessions are forecast from the same features the training samples had."""
    _, table = forecast
    arrays = run.trainer.train_set.arrays  # every session with known targets, as training cut them
    days = pd.to_datetime(arrays.days).strftime("%Y-%m-%d")
    model = run.trainer.model.eval()
    every = BarDayDataset(arrays, run.trainer.config)
    batch = collate_days([every[i] for i in range(len(every))])
    with torch.no_grad():
        q = model(batch["features"], batch["attention_mask"], batch["temporal_info"])["quantiles"] / 100.0
    got = table.set_index(["session", "horizon_bars"])
    for n, day in enumerate(days):
        rows = got.loc[day]
        np.testing.assert_allclose(rows[[f"logret_{q}" for q in LEVELS]].to_numpy(), q[n].double().numpy(),
                                   rtol=1e-6, atol=1e-7, err_msg=day)
        np.testing.assert_allclose(rows["realised_logret"].to_numpy(), arrays.targets[n], rtol=1e-6, err_msg=day)
    # Beyond them: the last session, whose 48-bar target lies past the bars' end.
    latest = table[~table["session"].isin(days)]
    assert latest["session"].nunique() == 1 and latest["realised_logret"].isna().iloc[-1]
    assert latest["session"].iloc[0] > days.max()


def test_date_range_selects_sessions(run, tmp_path, capsys):
    out = tmp_path / "week.csv"
    result = predict(["--checkpoint", str(run.out), "--data", "synthetic", "--out", str(out), "--no-progress",
                      "--start", "2021-01-11", "--end", "2021-01-15", "--batch-size", "2"])
    assert sorted(result.table["session"].unique()) == [f"2021-01-{d}" for d in range(11, 16)]
    assert result.skipped_history == 0
    assert "skipped" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="start must be a date YYYY-MM-DD; got '11/01/2021'"):
        predict(["--checkpoint", str(run.out), "--data", "synthetic", "--out", str(out), "--start", "11/01/2021"])


def test_skipped_sessions_are_counted_aloud(run, tmp_path, capsys):
    predict(["--checkpoint", str(run.out), "--data", "synthetic", "--out", str(tmp_path / "a.csv"),
             "--no-progress", "--end", "2021-01-06"])
    assert "skipped 1 session(s) with too little history" in capsys.readouterr().err


def test_bars_without_the_needed_columns(run, tmp_path):
    bars = tmp_path / "bars.csv"
    synthetic_bars(4).drop(columns=["volume"]).to_csv(bars, index=False)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['volume'\]"):
        predict(["--checkpoint", str(run.out), "--data", str(bars), "--out", str(tmp_path / "f.csv")])


def test_missing_checkpoint_and_bad_out(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict(["--checkpoint", str(tmp_path / "none"), "--data", "synthetic", "--out", str(tmp_path / "f.csv")])
    with pytest.raises(ValueError, match=r"out must end in .csv or .parquet; got '.*f.xlsx'"):
        predict(["--checkpoint", str(run.out), "--data", "synthetic", "--out", str(tmp_path / "f.xlsx")])


def test_parquet_without_an_engine_is_a_clear_error_before_any_work(monkeypatch, tmp_path):
    for name in ("pyarrow", "fastparquet"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    assert parquet_engine() is None
    with pytest.raises(ImportError, match=r"needs pyarrow or fastparquet.*or write a \.csv"):
        write_table(pd.DataFrame({"a": [1.0]}), tmp_path / "f.parquet")
    # The checkpoint does not exist: the output is checked first.
    with pytest.raises(ImportError, match="needs pyarrow or fastparquet"):
        predict(["--checkpoint", str(tmp_path / "none"), "--data", "synthetic", "--out", str(tmp_path / "f.parquet")])


def test_compile_flag_runs_the_compiled_model(run, forecast, compile_spy, tmp_path):
    result = predict(["--checkpoint", str(run.out), "--data", "synthetic", "--out", str(tmp_path / "c.csv"),
                      "--no-progress", "--compile", "--start", "2021-01-18"])
    assert len(compile_spy["modules"]) == 1 and type(compile_spy["modules"][0]).__name__ == "MIGT_TVDT"
    assert compile_spy["graphs"] >= 1
    plain = forecast[1].set_index(["session", "horizon_bars"])
    compiled = result.table.set_index(["session", "horizon_bars"])
    cols = [f"logret_{q}" for q in LEVELS]
    np.testing.assert_allclose(compiled[cols].to_numpy(), plain.loc[compiled.index, cols].to_numpy(), rtol=1e-5, atol=1e-7)


def test_a_checkpoint_trained_on_other_features_is_refused():
    check_feature_names(FEATURE_NAMES)
    swapped = ["high", "open", *FEATURE_NAMES[2:]]
    with pytest.raises(ValueError, match=r"trained on features \['high', 'open'.*cannot read these inputs"):
        check_feature_names(swapped)
