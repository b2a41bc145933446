"""Day samples for MIGT-TVDT: one trading session per sample, padded to 288 slots.

A sample holds the session's features at their slots (slot = minutes since the
session open / 5, so a missing bar leaves a hole with mask False; padded
feature values are 0), the calendar fields of the session's label day, and
the targets.

Targets (anchor choice): the anchor is the session's *last valid bar* (row a
of the bar frame). For horizon h (3, 6, 12, 24, 48 bars) the target is the
close-to-close log return log(close[a + h] / close[a]), where a + h counts
*bars present in the data* (a missing bar is skipped, not counted) and may lie
in the next sessions. Sessions whose target would need a bar past the data's
end are dropped, as are the first ``warmup_days`` sessions and any session
that starts within the data's first ``WARMUP_BARS`` rows (their indicators are
not warmed up; a file may start with a partial session).

Splits are chronological (train, validation, test) with a purge: a sample is
dropped from the earlier split when its target window (up to row a + 48)
reaches the first bar of the next split's first session, so no target ever
overlaps the inputs of a later split.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .bars import BAR_MINUTES, BARS_PER_DAY, infer_session_open, session_slots
from .horizons import HORIZON_BARS
from .features import FEATURE_NAMES, N_FEATURES, WARMUP_BARS, check_feature_count, compute_features


def check_config_for_bars(config, horizons: Sequence[int] = HORIZON_BARS) -> None:
    """Raise ValueError (naming both numbers) if the config does not fit the bar data."""
    check_feature_count(config)
    if config.n_horizons != len(horizons):
        raise ValueError(
            f"the dataset has {len(horizons)} target horizons {tuple(horizons)} but the config "
            f"has n_horizons={config.n_horizons}"
        )
    if config.bars_per_day != BARS_PER_DAY:
        raise ValueError(
            f"{BAR_MINUTES}-minute bars give {BARS_PER_DAY} slots a day but the config has "
            f"bars_per_day={config.bars_per_day}"
        )
    if config.max_seq_len < BARS_PER_DAY:
        raise ValueError(
            f"day samples are padded to {BARS_PER_DAY} steps but the config has "
            f"max_seq_len={config.max_seq_len}; set max_seq_len >= {BARS_PER_DAY}"
        )


@dataclass
class DayArrays:
    """All samples as arrays (N samples, T = 288 slots, V = 24 features, H horizons)."""

    features: np.ndarray      # (N, T, V) float32, 0 at padded slots
    mask: np.ndarray          # (N, T) bool
    bar_in_day: np.ndarray    # (N, T) int64 slot index (0..287 everywhere)
    day_of_week: np.ndarray   # (N,) int64 0..6, Monday 0
    day_of_month: np.ndarray  # (N,) int64 1..31
    day_of_year: np.ndarray   # (N,) int64 1..366
    targets: np.ndarray       # (N, H) float32 forward log returns
    days: np.ndarray          # (N,) datetime64[D] session label
    first_row: np.ndarray     # (N,) int64 first bar row of the session
    target_end_row: np.ndarray  # (N,) int64 last bar row any target reads


def build_day_arrays(
    bars: pd.DataFrame,
    *,
    session_open: str | dt.time | None = None,
    horizons: Sequence[int] = HORIZON_BARS,
    warmup_days: int = 1,
) -> DayArrays:
    """Features, masks, calendar and targets of every usable session of ``bars``.

    bars: a validated bar frame (``load_bars`` / ``synthetic_bars``).
    session_open: "HH:MM"; None infers it (``bars.infer_session_open``).
    """
    horizons = tuple(int(h) for h in horizons)
    if not horizons or min(horizons) < 1:
        raise ValueError(f"horizons must be positive bar counts; got {horizons}")
    if session_open is None:
        session_open = infer_session_open(bars["timestamp"])
    feats = compute_features(bars, session_open).to_numpy(np.float32)  # [n_rows, V]
    day, slot = session_slots(bars["timestamp"], session_open)
    log_close = np.log(bars["close"].to_numpy(np.float64))
    n_rows = len(bars)

    # Sessions are contiguous runs of rows because the bars are sorted.
    starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
    ends = np.r_[starts[1:], n_rows]  # exclusive
    keep = [
        i for i in range(warmup_days, len(starts))
        if starts[i] >= WARMUP_BARS and ends[i] - 1 + max(horizons) < n_rows
    ]
    N, T, V, H = len(keep), BARS_PER_DAY, N_FEATURES, len(horizons)
    out = DayArrays(
        features=np.zeros((N, T, V), np.float32),
        mask=np.zeros((N, T), bool),
        bar_in_day=np.broadcast_to(np.arange(T, dtype=np.int64), (N, T)).copy(),
        day_of_week=np.zeros(N, np.int64),
        day_of_month=np.zeros(N, np.int64),
        day_of_year=np.zeros(N, np.int64),
        targets=np.zeros((N, H), np.float32),
        days=np.zeros(N, "datetime64[D]"),
        first_row=np.zeros(N, np.int64),
        target_end_row=np.zeros(N, np.int64),
    )
    hz = np.asarray(horizons)
    for n, i in enumerate(keep):
        rows = slice(starts[i], ends[i])
        out.features[n, slot[rows]] = feats[rows]
        out.mask[n, slot[rows]] = True
        label = pd.Timestamp(day[starts[i]])
        out.day_of_week[n] = label.day_of_week
        out.day_of_month[n] = label.day
        out.day_of_year[n] = label.day_of_year
        anchor = ends[i] - 1
        out.targets[n] = log_close[anchor + hz] - log_close[anchor]
        out.days[n] = day[starts[i]]
        out.first_row[n] = starts[i]
        out.target_end_row[n] = anchor + hz.max()
    return out


class BarDayDataset(Dataset):
    """torch Dataset of day samples; ``collate_days`` batches them for the model.

    Built from a bar frame (``from_bars``) or from ``DayArrays``; ``indices``
    selects a subset (splits share one set of arrays). The config is checked
    against the data first: feature count, horizons, T (see
    ``check_config_for_bars``).
    """

    def __init__(self, arrays: DayArrays, config, indices: Sequence[int] | None = None,
                 horizons: Sequence[int] = HORIZON_BARS) -> None:
        check_config_for_bars(config, horizons)
        if arrays.features.shape[-1] != config.n_variables:
            raise ValueError(
                f"the arrays hold {arrays.features.shape[-1]} features but the config has "
                f"n_variables={config.n_variables}"
            )
        self.arrays = arrays
        self.config = config
        self.horizons = tuple(horizons)
        n = len(arrays.features)
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        self._features = torch.from_numpy(arrays.features)
        self._mask = torch.from_numpy(arrays.mask)
        self._bar = torch.from_numpy(arrays.bar_in_day)
        self._targets = torch.from_numpy(arrays.targets)

    @classmethod
    def from_bars(cls, bars: pd.DataFrame, config, *, session_open=None,
                  horizons: Sequence[int] = HORIZON_BARS, warmup_days: int = 1) -> "BarDayDataset":
        check_config_for_bars(config, horizons)  # fail before the feature work
        arrays = build_day_arrays(bars, session_open=session_open, horizons=horizons, warmup_days=warmup_days)
        return cls(arrays, config, horizons=horizons)

    def subset(self, indices: Sequence[int]) -> "BarDayDataset":
        """A dataset over ``self.indices[indices]`` sharing the same arrays."""
        return BarDayDataset(self.arrays, self.config, self.indices[np.asarray(indices, dtype=np.int64)],
                             self.horizons)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = int(self.indices[i])
        a = self.arrays
        return {
            "features": self._features[j],       # (T, V)
            "attention_mask": self._mask[j],     # (T,)
            "temporal_info": {
                "bar_in_day": self._bar[j],      # (T,)
                "day_of_week": torch.tensor(a.day_of_week[j]),
                "day_of_month": torch.tensor(a.day_of_month[j]),
                "day_of_year": torch.tensor(a.day_of_year[j]),
            },
            "targets": self._targets[j],         # (H,)
        }

    @property
    def first_row(self) -> np.ndarray:
        return self.arrays.first_row[self.indices]

    @property
    def target_end_row(self) -> np.ndarray:
        return self.arrays.target_end_row[self.indices]


def collate_days(items: list[dict]) -> dict:
    """Stack day samples into the model's input dict:
    features (B, T, V), attention_mask (B, T), temporal_info {bar_in_day (B, T),
    day_of_week / day_of_month / day_of_year (B,)}, targets (B, H)."""
    return {
        "features": torch.stack([it["features"] for it in items]),
        "attention_mask": torch.stack([it["attention_mask"] for it in items]),
        "temporal_info": {
            key: torch.stack([it["temporal_info"][key] for it in items])
            for key in items[0]["temporal_info"]
        },
        "targets": torch.stack([it["targets"] for it in items]),
    }


def chronological_split(
    dataset: BarDayDataset, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> tuple[BarDayDataset, BarDayDataset, BarDayDataset]:
    """(train, validation, test) in time order, purged at each boundary.

    Sessions are cut by count (the last ``test_fraction`` to test, the
    ``val_fraction`` before it to validation); then every sample of an earlier
    split whose target window reaches the first bar of the next split is
    dropped. Empty validation/test (fraction 0) is allowed; an empty train
    split is an error.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not (0.0 <= frac < 1.0):
            raise ValueError(f"{name} must lie in [0, 1); got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1; got {val_fraction} + {test_fraction}")
    n = len(dataset)
    order = np.argsort(dataset.first_row, kind="stable")
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    n_train = n - n_val - n_test
    parts = [order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]]
    # Purge against the next non-empty split.
    first_rows, end_rows = dataset.first_row, dataset.target_end_row
    for k in range(len(parts) - 1):
        later = next((p for p in parts[k + 1:] if len(p)), None)
        if later is not None:
            boundary = first_rows[later].min()
            parts[k] = parts[k][end_rows[parts[k]] < boundary]
    if len(parts[0]) == 0:
        raise ValueError(
            f"the train split is empty ({n} usable sessions, val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}); use more data or smaller fractions"
        )
    return tuple(dataset.subset(p) for p in parts)


__all__ = [
    "HORIZON_BARS", "FEATURE_NAMES", "DayArrays", "BarDayDataset", "build_day_arrays",
    "check_config_for_bars", "collate_days", "chronological_split",
]
