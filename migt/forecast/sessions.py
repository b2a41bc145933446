"""Day samples for forecasting: every session with enough history, known targets or not.

``BarDayDataset.from_bars`` keeps only sessions whose targets lie inside the
data, which drops the latest sessions -- the ones a forecast is for. Here the
bars are extended by ``max(horizons)`` copies of the last bar, placed a day
later (so they form a session of their own), and the dataset is built on that
frame. Features only look back (no look-ahead, tested in test_features), so
the real sessions get exactly the features they would get alone; targets that
reach the added rows are set to NaN. Sessions dropped for too little
indicator history are counted, never silently lost.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..data.bars import BAR_MINUTES, session_slots
from ..data.dataset import BarDayDataset, build_day_arrays
from ..data.features import FEATURE_NAMES


@dataclass
class Sessions:
    """Samples and where each sits in the bars (N sessions, H horizons)."""

    dataset: BarDayDataset  # targets (log returns) NaN where not known yet
    bars: pd.DataFrame      # the real bars
    horizons: list[int]
    anchor_row: np.ndarray  # (N,) row of each session's last bar (the forecast origin)
    all_days: np.ndarray    # every session day of the bars, kept or not
    skipped_history: int    # sessions (of those selected by day) left out: too little indicator history

    @property
    def days(self) -> np.ndarray:
        return self.dataset.arrays.days[self.dataset.indices]

    @property
    def targets(self) -> np.ndarray:
        """(N, H) realised log returns, NaN where the bars end first."""
        return self.dataset.arrays.targets[self.dataset.indices].astype(np.float64)

    @property
    def known(self) -> np.ndarray:
        """(N,) whether every horizon's target is inside the bars."""
        return self.anchor_row + max(self.horizons) < len(self.bars)

    @property
    def last_close(self) -> np.ndarray:
        return self.bars["close"].to_numpy(np.float64)[self.anchor_row]

    @property
    def anchor_time(self) -> np.ndarray:
        return self.bars["timestamp"].to_numpy()[self.anchor_row]

    def subset(self, indices: Sequence[int]) -> "Sessions":
        idx = np.asarray(indices, dtype=np.int64)
        return Sessions(self.dataset.subset(idx), self.bars, self.horizons, self.anchor_row[idx],
                        self.all_days, self.skipped_history)

    def in_range(self, start: str | None = None, end: str | None = None) -> "Sessions":
        """The sessions whose label day lies in [start, end] (ISO dates, inclusive);
        ``skipped_history`` then counts the skipped sessions of that range."""
        lo = _parse_day(start, "start") if start is not None else np.datetime64("NaT")
        hi = _parse_day(end, "end") if end is not None else np.datetime64("NaT")
        if start is not None and end is not None and lo > hi:
            raise ValueError(f"start {start} is after end {end}")

        def inside(days: np.ndarray) -> np.ndarray:
            keep = np.ones(len(days), bool)
            if start is not None:
                keep &= days >= lo
            if end is not None:
                keep &= days <= hi
            return keep

        out = self.subset(np.flatnonzero(inside(self.days)))
        out.skipped_history = int(inside(self.all_days).sum()) - len(out)
        return out

    def __len__(self) -> int:
        return len(self.anchor_row)


def _parse_day(value: str, name: str) -> np.datetime64:
    try:
        return np.datetime64(dt.date.fromisoformat(str(value)), "D")
    except ValueError as err:
        raise ValueError(f"{name} must be a date YYYY-MM-DD; got {value!r}") from err


def check_feature_names(saved: Sequence[str]) -> None:
    """The checkpoint's features must be the ones this version computes, in order."""
    if list(saved) != list(FEATURE_NAMES):
        raise ValueError(
            f"the checkpoint was trained on features {list(saved)} but this version computes "
            f"{list(FEATURE_NAMES)}; the model cannot read these inputs"
        )


def _extend_bars(bars: pd.DataFrame, n_rows: int) -> pd.DataFrame:
    """``bars`` plus ``n_rows`` copies of the last bar starting one day after it (a later session)."""
    last = bars.iloc[-1]
    stamps = last["timestamp"] + pd.Timedelta(days=1) + pd.to_timedelta(np.arange(n_rows) * BAR_MINUTES, unit="min")
    tail = pd.DataFrame({col: np.repeat(last[col], n_rows) for col in bars.columns if col != "timestamp"})
    tail.insert(0, "timestamp", stamps)
    return pd.concat([bars, tail[bars.columns]], ignore_index=True)


def forecast_sessions(bars: pd.DataFrame, config, horizons: Sequence[int], session_open: str) -> Sessions:
    """Every session of ``bars`` with enough history, as samples (see the module docstring).

    bars: a validated bar frame; session_open: "HH:MM" (as in training).
    """
    horizons = [int(h) for h in horizons]
    n_real = len(bars)
    arrays = build_day_arrays(_extend_bars(bars, max(horizons)), session_open=session_open, horizons=horizons)
    anchor = arrays.target_end_row - max(horizons)  # [N]
    # The added session never passes (its targets would need rows past it); drop
    # any sample anchored in the added rows all the same.
    real = anchor < n_real
    target_rows = anchor[:, None] + np.asarray(horizons)[None, :]  # [N, H]
    arrays.targets[target_rows >= n_real] = np.nan
    dataset = BarDayDataset(arrays, config, indices=np.flatnonzero(real), horizons=horizons)
    all_days = np.unique(session_slots(bars["timestamp"], session_open)[0])
    return Sessions(dataset, bars, horizons, anchor[real], all_days,
                    skipped_history=len(all_days) - int(real.sum()))
