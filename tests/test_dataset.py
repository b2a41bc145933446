"""Bar loading, day samples, collate and the purged chronological split."""
from __future__ import annotations

import datetime as dt
import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

from migt.config import MIGTConfig
from migt.data.bars import BAR_COLUMNS, infer_session_open, load_bars, synthetic_bars, validate_bars
from migt.data.dataset import HORIZON_BARS, BarDayDataset, chronological_split, collate_days

TINY = dict(d_model=16, n_heads=2, d_ff=32, n_temporal_layers=1, n_variable_layers=1)


@pytest.fixture(scope="module")
def bars():
    # half_day_every=3: several short sessions; missing_rate: holes inside days.
    return synthetic_bars(12, seed=5, half_day_every=3, missing_rate=0.01)


@pytest.fixture(scope="module")
def dataset(bars):
    return BarDayDataset.from_bars(bars, MIGTConfig(**TINY))


# ----------------------------------------------------------------------------- loading

def test_csv_round_trip(bars, tmp_path):
    path = tmp_path / "bars.csv"
    bars.rename(columns={"volume": " Volume"}).to_csv(path, index=False)  # case/space tolerant
    loaded = load_bars(path)
    pd.testing.assert_frame_equal(loaded, bars, check_exact=False, rtol=1e-12)


def _write(tmp_path, frame):
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("case, pattern", [
    ("missing_columns", r"missing column\(s\) \['low', 'volume'\]"),
    ("unsorted", r"not sorted: row 6 \(.*\) comes after row 5"),
    ("duplicate", r"duplicate timestamp .* at rows 3 and 4"),
    ("non_positive", r"prices must be > 0; column 'close' is -1.0 at row 7"),
    ("off_grid", r"not on the 5-minute grid"),
    ("nan_value", r"column 'high' has a missing or non-numeric value at row 2"),
], ids=lambda value: value if value.isidentifier() else "error")
def test_bad_files_give_clear_errors(bars, tmp_path, case, pattern):
    frame = bars.iloc[:20].copy()
    if case == "missing_columns":
        frame = frame.drop(columns=["low", "volume"])
    elif case == "unsorted":
        frame.iloc[[5, 6]] = frame.iloc[[6, 5]].to_numpy()
    elif case == "duplicate":
        frame.loc[4, "timestamp"] = frame.loc[3, "timestamp"]
    elif case == "non_positive":
        frame.loc[7, "close"] = -1.0
    elif case == "off_grid":
        frame.loc[9, "timestamp"] = frame.loc[9, "timestamp"] + pd.Timedelta(minutes=1)
    elif case == "nan_value":
        frame.loc[2, "high"] = np.nan
    with pytest.raises(ValueError, match=pattern):
        load_bars(_write(tmp_path, frame))


def test_file_kind_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_bars(tmp_path / "nope.csv")
    (tmp_path / "bars.xlsx").write_text("x")
    with pytest.raises(ValueError, match="expected .csv or .parquet"):
        load_bars(tmp_path / "bars.xlsx")
    if importlib.util.find_spec("pyarrow") is None:
        (tmp_path / "bars.parquet").write_bytes(b"PAR1")
        with pytest.raises(ImportError, match="pip install pyarrow"):
            load_bars(tmp_path / "bars.parquet")


def test_synthetic_bars_are_seeded_and_valid():
    a, b = synthetic_bars(3, seed=1), synthetic_bars(3, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(synthetic_bars(3, seed=2))
    assert tuple(a.columns) == BAR_COLUMNS
    validate_bars(a)
    assert str(infer_session_open(a["timestamp"])) == "18:00:00"


# ----------------------------------------------------------------------------- samples

def test_samples_masks_calendar_and_targets(bars, dataset):
    arrays = dataset.arrays
    n_sessions = 12
    assert len(dataset) == n_sessions - 1 - 1  # first session: warm-up; last: targets past the end
    ts = bars["timestamp"]
    close = bars["close"].to_numpy()
    session_start = pd.Timestamp("18:00").time()
    saw_hole = saw_short = False
    for n in range(len(dataset)):
        first = int(arrays.first_row[n])
        label = pd.Timestamp(arrays.days[n])
        rows = np.flatnonzero(((ts - pd.Timedelta(hours=18)).dt.floor("D") + pd.Timedelta(days=1)) == label)
        assert rows[0] == first and ts.iloc[first].time() == session_start
        slots = ((ts.iloc[rows] - ts.iloc[first]) / pd.Timedelta(minutes=5)).astype(int).to_numpy()
        expected_mask = np.zeros(288, bool)
        expected_mask[slots] = True
        np.testing.assert_array_equal(arrays.mask[n], expected_mask)
        saw_hole |= bool((~expected_mask[: slots.max()]).any())
        saw_short |= slots.max() < 275
        assert (arrays.features[n][~expected_mask] == 0).all()
        assert (label.day_of_week, label.day, label.day_of_year) == (
            arrays.day_of_week[n], arrays.day_of_month[n], arrays.day_of_year[n])
        anchor = rows[-1]
        expected = [np.log(close[anchor + h] / close[anchor]) for h in HORIZON_BARS]
        np.testing.assert_allclose(arrays.targets[n], expected, rtol=1e-5, atol=1e-8)
        assert arrays.target_end_row[n] == anchor + max(HORIZON_BARS) < len(bars)
    assert saw_hole and saw_short  # the fixture exercises both kinds of padding


def test_collate_gives_the_model_input(dataset):
    batch = collate_days([dataset[i] for i in range(3)])
    assert batch["features"].shape == (3, 288, 24) and batch["features"].dtype == torch.float32
    assert batch["attention_mask"].shape == (3, 288) and batch["attention_mask"].dtype == torch.bool
    ti = batch["temporal_info"]
    assert ti["bar_in_day"].shape == (3, 288)
    assert all(ti[k].shape == (3,) for k in ("day_of_week", "day_of_month", "day_of_year"))
    assert batch["targets"].shape == (3, 5)
    from migt.model import MIGT_TVDT
    torch.manual_seed(0)
    out = MIGT_TVDT(MIGTConfig(**TINY))(batch["features"], batch["attention_mask"], batch["temporal_info"])
    assert out["quantiles"].shape == (3, 5, 7) and torch.isfinite(out["quantiles"]).all()


def test_config_disagreeing_with_the_data_fails_early(bars):
    with pytest.raises(ValueError, match=r"24 features.*n_variables=25"):
        BarDayDataset.from_bars(bars, MIGTConfig(**TINY, n_variables=25))
    with pytest.raises(ValueError, match=r"5 target horizons.*n_horizons=4"):
        BarDayDataset.from_bars(bars, MIGTConfig(**TINY, n_horizons=4))
    with pytest.raises(ValueError, match=r"max_seq_len=100"):
        BarDayDataset.from_bars(bars, MIGTConfig(**TINY, max_seq_len=100))


def test_split_is_chronological_and_purged():
    bars = synthetic_bars(30, seed=2)
    ds = BarDayDataset.from_bars(bars, MIGTConfig(**TINY))
    train, val, test = chronological_split(ds, 0.2, 0.2)
    assert min(len(train), len(val), len(test)) > 0
    for earlier, later in ((train, val), (val, test)):
        assert earlier.first_row.max() < later.first_row.min()
        # No target window reaches into the next split's bars.
        assert earlier.target_end_row.max() < later.first_row.min()
    # The 48-bar target of a split's last session crosses into the next session: purged.
    assert len(train) + len(val) + len(test) == len(ds) - 2
    with pytest.raises(ValueError, match="train split is empty"):
        chronological_split(ds.subset([0, 1]), 0.5, 0.4)


def test_timestamps_with_utc_offsets_across_a_dst_change(tmp_path):
    # Local-time exports often write the offset, which changes with DST (-05:00 -> -04:00).
    stamps = pd.date_range("2021-03-13 22:00", periods=60, freq="5min", tz="America/New_York")
    frame = synthetic_bars(1, seed=0).iloc[:60].copy()
    frame["timestamp"] = [t.isoformat() for t in stamps]
    assert frame["timestamp"].str[-6:].nunique() == 2  # the file really mixes offsets
    path = _write(tmp_path, frame)
    loaded = load_bars(path, timezone="America/New_York")
    expected = pd.Series(stamps.tz_localize(None), name="timestamp").astype("datetime64[ns]")
    pd.testing.assert_series_equal(loaded["timestamp"], expected)
    with pytest.raises(ValueError, match=r"different UTC offsets \['-0400', '-0500'\].*--timezone"):
        load_bars(path)


def test_datetime_objects_with_utc_offsets_across_a_dst_change():
    # The same day as Python datetimes (e.g. built in code, or read by another
    # library): each carries its own fixed offset, so pandas finds no single zone.
    stamps = pd.date_range("2021-03-13 22:00", periods=60, freq="5min", tz="America/New_York")
    frame = synthetic_bars(1, seed=0).iloc[:60].copy()
    fixed = [dt.datetime.fromisoformat(t.isoformat()) for t in stamps]  # tzinfo: a fixed offset, not a zone
    frame["timestamp"] = pd.Series(fixed, dtype=object, index=frame.index)
    loaded = validate_bars(frame, timezone="America/New_York")
    expected = pd.Series(stamps.tz_localize(None), name="timestamp").astype("datetime64[ns]")
    pd.testing.assert_series_equal(loaded["timestamp"], expected)
    with pytest.raises(ValueError, match=r"different UTC offsets \['-0400', '-0500'\].*--timezone"):
        validate_bars(frame)


def test_unparsable_timestamp_is_named_on_every_pandas():
    frame = synthetic_bars(1, seed=0).iloc[:3].copy()
    frame["timestamp"] = ["2021-03-14 01:55:00-05:00", "not a time", "2021-03-14 02:05:00-05:00"]
    with pytest.raises(ValueError, match=r"column 'timestamp' could not be parsed as datetimes.*not a time"):
        validate_bars(frame)


def test_sessions_without_warm_up_history_are_dropped(bars):
    # The file starts 20 bars before a session's end: that partial session and the
    # next one (only 20 bars of history for 48-bar indicators) are not samples.
    day_ends = np.flatnonzero(np.diff(bars["timestamp"].to_numpy()) >= np.timedelta64(1, "h"))
    late_start = bars.iloc[day_ends[0] - 19:].reset_index(drop=True)
    arrays = BarDayDataset.from_bars(late_start, MIGTConfig(**TINY)).arrays
    assert arrays.first_row.min() >= 48
    assert pd.Timestamp(arrays.days[0]) == pd.Timestamp(BarDayDataset.from_bars(bars, MIGTConfig(**TINY)).arrays.days[1])
