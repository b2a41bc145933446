"""Forecasts as a table: one row per session and horizon, written as CSV or Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .sessions import Sessions


def level_name(level: float) -> str:
    """0.05 -> 'q05', 0.5 -> 'q50', 0.025 -> 'q2.5'."""
    return f"q{level * 100:02g}"


def forecast_table(sessions: Sessions, log_quantiles: np.ndarray, levels: Sequence[float]) -> pd.DataFrame:
    """Rows (session, horizon): the quantiles of the log return from the session's
    last close (``logret_qXX``) and as price levels (``price_qXX`` = last close x
    exp(logret)), with the realised return and price where the bars have them (NaN else).

    log_quantiles: (N, H, Q) non-crossing log-return quantiles of ``sessions``.
    """
    N, H = len(sessions), len(sessions.horizons)
    if log_quantiles.shape != (N, H, len(levels)):
        raise ValueError(
            f"log_quantiles must have shape (sessions, horizons, levels) = {(N, H, len(levels))}; "
            f"got {log_quantiles.shape}"
        )
    close = sessions.last_close  # [N]
    frame = pd.DataFrame({
        "session": np.repeat(pd.to_datetime(sessions.days).strftime("%Y-%m-%d").to_numpy(), H),
        "origin_time": np.repeat(sessions.anchor_time, H),
        "last_close": np.repeat(close, H),
        "horizon_bars": np.tile(np.asarray(sessions.horizons), N),
    })
    flat = log_quantiles.reshape(N * H, len(levels))
    for k, level in enumerate(levels):
        frame[f"logret_{level_name(level)}"] = flat[:, k]
    for k, level in enumerate(levels):
        frame[f"price_{level_name(level)}"] = frame["last_close"] * np.exp(flat[:, k])
    realised = sessions.targets.reshape(N * H)
    frame["realised_logret"] = realised
    frame["realised_price"] = frame["last_close"] * np.exp(realised)
    return frame


def parquet_engine() -> str | None:
    """'pyarrow' or 'fastparquet' when one is installed, else None."""
    import importlib

    for name in ("pyarrow", "fastparquet"):
        try:
            importlib.import_module(name)
            return name
        except ImportError:
            continue
    return None


def check_out_path(path: str | Path) -> str | None:
    """Fail early (before any forecasting) on an output table that cannot be written:
    a suffix other than .csv/.parquet, or .parquet without an engine. Returns the
    parquet engine to use, or None for CSV."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"out must end in .csv or .parquet; got {str(path)!r}")
    if suffix == ".csv":
        return None
    engine = parquet_engine()
    if engine is None:
        raise ImportError(
            f"writing {str(path)!r} needs pyarrow or fastparquet, and neither is installed: "
            "`pip install pyarrow`, or write a .csv"
        )
    return engine


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to ``path``: .csv, or .parquet when pyarrow or fastparquet is installed."""
    path = Path(path)
    engine = check_out_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if engine is None:
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False, engine=engine)
    return path
