"""Five-minute OHLCV bars: loading real files, sessions, and a synthetic generator.

A bar frame is a pandas DataFrame with the columns of ``BAR_COLUMNS``:
timestamp (naive datetime64, the bar's *open* time in exchange local time),
open, high, low, close, volume (float64), one row per bar, strictly increasing
timestamps on the 5-minute grid. Missing bars are simply absent rows.

Sessions: a trading session starts every day at ``session_open`` (a time of
day, e.g. "18:00" for CME Globex futures, "09:30" for US equities) and lasts at
most 24 h = 288 bars. A bar's slot is ``(minutes since the session open) / 5``,
so a missing bar leaves a hole. Sessions opening at or after noon are labelled
by the next calendar day (the futures convention: the 18:00 Sunday open is
Monday's session); earlier opens by their own date.
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

BAR_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_MINUTES = 5
BARS_PER_DAY = 24 * 60 // BAR_MINUTES  # 288 slots, the model's padded T


# ----------------------------------------------------------------------------- loading

def load_bars(path: str | Path, *, timezone: str | None = None) -> pd.DataFrame:
    """Read bars from a CSV or Parquet file and validate them (see ``validate_bars``).

    Column names are matched case-insensitively after stripping spaces; extra
    columns are dropped. Timezone-aware timestamps are converted to
    ``timezone`` (default: kept in their own zone) and made naive, so sessions
    are cut in exchange local time.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bar file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise ImportError(
                f"reading {str(path)!r} needs pyarrow, which is not installed: "
                "`pip install pyarrow`, or convert the file to CSV"
            ) from err
        frame = pd.read_parquet(path)
    elif suffix in (".csv", ".txt", ".gz"):
        frame = pd.read_csv(path)
    else:
        raise ValueError(f"bar file {str(path)!r}: unknown extension {suffix!r}; expected .csv or .parquet")
    return validate_bars(frame, source=str(path), timezone=timezone)


def validate_bars(frame: pd.DataFrame, *, source: str = "bars", timezone: str | None = None) -> pd.DataFrame:
    """Check a bar frame and return a clean copy (columns BAR_COLUMNS, RangeIndex).

    Raises ValueError naming the problem and where: missing columns (by
    name), unparsable or NaN values, timestamps not sorted or duplicated
    (row numbers and times), timestamps off the 5-minute grid, non-positive
    prices, high < low, negative volume. Row numbers count data rows from 0.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{source}: bars must be a pandas DataFrame; got {type(frame).__name__}")
    by_lower = {str(c).strip().lower(): c for c in frame.columns}
    missing = [c for c in BAR_COLUMNS if c not in by_lower]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; expected {list(BAR_COLUMNS)}, "
            f"found {[str(c) for c in frame.columns]}"
        )
    out = pd.DataFrame({c: frame[by_lower[c]].to_numpy() for c in BAR_COLUMNS})

    ts = _parse_timestamps(out["timestamp"], source, timezone)
    if ts.dt.tz is not None:
        ts = (ts.dt.tz_convert(timezone) if timezone else ts).dt.tz_localize(None)
    out["timestamp"] = ts.astype("datetime64[ns]")
    if out["timestamp"].isna().any():
        row = int(np.flatnonzero(out["timestamp"].isna().to_numpy())[0])
        raise ValueError(f"{source}: missing timestamp at row {row}")

    for col in BAR_COLUMNS[1:]:
        values = pd.to_numeric(out[col], errors="coerce").astype("float64")
        bad = ~np.isfinite(values.to_numpy())
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{source}: column {col!r} has a missing or non-numeric value at row {row} "
                f"(timestamp {out['timestamp'].iloc[row]}): {frame[by_lower[col]].iloc[row]!r}"
            )
        out[col] = values

    _check_order(out["timestamp"], source)
    _check_grid(out["timestamp"], source)
    for col in PRICE_COLUMNS:
        bad = out[col].to_numpy() <= 0
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{source}: prices must be > 0; column {col!r} is {out[col].iloc[row]} at row {row} "
                f"(timestamp {out['timestamp'].iloc[row]}), {int(bad.sum())} such row(s) in all"
            )
    bad = (out["high"] < out["low"]).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{source}: high < low at row {row} (timestamp {out['timestamp'].iloc[row]}): "
            f"high={out['high'].iloc[row]}, low={out['low'].iloc[row]}"
        )
    bad = (out["volume"] < 0).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{source}: volume must be >= 0; got {out['volume'].iloc[row]} at row {row} "
            f"(timestamp {out['timestamp'].iloc[row]})"
        )
    if len(out) == 0:
        raise ValueError(f"{source}: no bars")
    return out


def _parse_timestamps(column: pd.Series, source: str, timezone: str | None) -> pd.Series:
    """Datetimes of a timestamp column (naive, or aware in one zone).

    Stamps with different UTC offsets (a DST change in local-time data) have
    no single zone to keep: pandas 2 parses them to objects, pandas 3 raises.
    Either way they are converted through UTC when ``timezone`` names the zone
    to cut sessions in, and refused with a message asking for it otherwise.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pandas 2's mixed-offset warning
            ts = pd.to_datetime(column)
        mixed = ts.dtype == object
    except (ValueError, TypeError) as err:
        try:
            pd.to_datetime(column, utc=True)
        except (ValueError, TypeError):
            raise ValueError(f"{source}: column 'timestamp' could not be parsed as datetimes: {err}") from err
        mixed = True  # only a common zone was missing
    if not mixed:
        return ts
    if not timezone:
        raise ValueError(
            f"{source}: column 'timestamp' holds different UTC offsets {_utc_offsets(column)} (e.g. a "
            "daylight-saving change); name the exchange's zone with --timezone (timezone=...), "
            "e.g. America/Chicago"
        )
    return pd.to_datetime(column, utc=True)


def _utc_offsets(column: pd.Series, limit: int = 4) -> list[str]:
    """The first `limit` distinct UTC offsets ('+hhmm') in a column of stamps, sorted."""
    found: set[str] = set()
    for value in column.dropna():
        found.add(pd.Timestamp(value).strftime("%z"))
        if len(found) >= limit:
            break
    return sorted(found)


def _check_order(ts: pd.Series, source: str) -> None:
    step = np.diff(ts.to_numpy().astype("int64"))
    dup = np.flatnonzero(step == 0)
    back = np.flatnonzero(step < 0)
    # Report whichever problem comes first in the file.
    if back.size and (not dup.size or back[0] < dup[0]):
        i = int(back[0])
        raise ValueError(
            f"{source}: timestamps are not sorted: row {i + 1} ({ts.iloc[i + 1]}) comes after "
            f"row {i} ({ts.iloc[i]}); sort the file by timestamp (e.g. df.sort_values('timestamp'))"
        )
    if dup.size:
        i = int(dup[0])
        raise ValueError(
            f"{source}: duplicate timestamp {ts.iloc[i]} at rows {i} and {i + 1} "
            f"({dup.size} duplicate(s) in all); keep one bar per timestamp"
        )


def _check_grid(ts: pd.Series, source: str) -> None:
    off = (ts - ts.dt.floor(f"{BAR_MINUTES}min")).to_numpy().astype("int64")
    if (off != 0).any():
        row = int(np.flatnonzero(off != 0)[0])
        raise ValueError(
            f"{source}: timestamp {ts.iloc[row]} at row {row} is not on the {BAR_MINUTES}-minute grid; "
            f"expected bar open times like hh:00, hh:05, ..."
        )


# ----------------------------------------------------------------------------- sessions

def parse_time_of_day(value: str | dt.time) -> dt.time:
    if isinstance(value, dt.time):
        return value
    try:
        return dt.datetime.strptime(str(value).strip(), "%H:%M").time()
    except ValueError as err:
        raise ValueError(f"session_open must be a time of day 'HH:MM'; got {value!r}") from err


def infer_session_open(timestamps: pd.Series) -> dt.time:
    """The most common time of day of the first bar after a break of >= 1 hour
    (or of the first bar); ties go to the earliest time."""
    ts = pd.Series(pd.to_datetime(timestamps)).reset_index(drop=True)
    gap = ts.diff() >= pd.Timedelta(hours=1)
    gap.iloc[0] = True
    firsts = ts[gap].dt.time
    counts = firsts.value_counts()
    best = counts[counts == counts.max()].index
    return min(best)


def session_slots(timestamps: pd.Series, session_open: str | dt.time) -> tuple[np.ndarray, np.ndarray]:
    """(trading day per bar as datetime64[D], slot per bar in 0..287).

    slot = minutes since the session open / 5; the trading day is the open's
    date, plus one day for opens at or after noon (see the module docstring).
    """
    open_time = parse_time_of_day(session_open)
    offset = pd.Timedelta(hours=open_time.hour, minutes=open_time.minute)
    shifted = pd.to_datetime(pd.Series(timestamps)).reset_index(drop=True) - offset
    start_day = shifted.dt.floor("D")
    slot = ((shifted - start_day) // pd.Timedelta(minutes=BAR_MINUTES)).to_numpy().astype(np.int64)
    label = start_day + pd.Timedelta(days=1 if open_time.hour >= 12 else 0)
    return label.to_numpy().astype("datetime64[D]"), slot


# ----------------------------------------------------------------------------- synthetic

def synthetic_bars(
    n_days: int = 120,
    *,
    seed: int = 0,
    start: str = "2021-01-04",
    session_open: str = "18:00",
    session_bars: int = 276,
    half_day_bars: int = 216,
    half_day_every: int = 25,
    missing_rate: float = 0.005,
    start_price: float = 4000.0,
    bar_volatility: float = 8e-4,
) -> pd.DataFrame:
    """Seeded synthetic 5-minute bars shaped like an index future.

    - Business days (Mon-Fri) from ``start``; each session opens at
      ``session_open`` the evening before (23 h = 276 bars by default).
    - Price: geometric random walk. Per-bar volatility = bar_volatility x a
      daily regime (log-AR(1), persistent, so the next day's spread is
      predictable from today's bars) x an intraday seasonality (busy at the
      open, a peak at the 09:30 cash open, rising into the close).
    - Volume: U-shaped over the session, following volatility, log-normal noise.
    - Half-day sessions: about one day in ``half_day_every`` closes after
      ``half_day_bars`` bars. Missing bars: each bar dropped with probability
      ``missing_rate`` (the first bar of a session never, so the session open
      is inferable).
    Returns a bar frame (see the module docstring); same seed, same frame.
    """
    if n_days < 1:
        raise ValueError(f"n_days must be >= 1; got {n_days}")
    if not (1 <= half_day_bars <= session_bars <= BARS_PER_DAY):
        raise ValueError(
            f"need 1 <= half_day_bars <= session_bars <= {BARS_PER_DAY}; "
            f"got half_day_bars={half_day_bars}, session_bars={session_bars}"
        )
    rng = np.random.default_rng(seed)
    open_time = parse_time_of_day(session_open)
    days = pd.bdate_range(start=start, periods=n_days)
    # The session labelled `day` opens on the previous evening for evening opens.
    day_shift = pd.Timedelta(days=-1 if open_time.hour >= 12 else 0)
    open_offset = pd.Timedelta(hours=open_time.hour, minutes=open_time.minute)

    k = np.arange(session_bars, dtype=np.float64)
    cash_open = 15.5 * 12  # 09:30 is 15.5 h after an 18:00 open
    season = 0.5 + 1.2 * np.exp(-(((k - cash_open) / 10.0) ** 2)) + 0.6 * np.exp(-k / 12.0) + 0.5 * (k / session_bars) ** 4
    season /= season.mean()
    u_volume = 0.4 + (2.0 * k / session_bars - 1.0) ** 2 + 0.8 * np.exp(-(((k - cash_open) / 12.0) ** 2))

    log_regime = 0.0
    price = start_price
    frames = []
    for day in days:
        log_regime = 0.9 * log_regime + 0.25 * rng.standard_normal()
        n = half_day_bars if rng.random() < 1.0 / half_day_every else session_bars
        sigma = bar_volatility * np.exp(log_regime) * season[:n]  # [n]
        shocks = rng.standard_normal(n)
        gap = 2.0 * sigma[0] * rng.standard_normal()  # overnight break
        log_close = np.log(price) + gap + np.cumsum(sigma * shocks)
        close = np.exp(log_close)
        prev = np.concatenate([[price * np.exp(gap)], close[:-1]])
        open_ = prev * np.exp(0.1 * sigma * rng.standard_normal(n))
        wick_hi = np.exp(0.6 * sigma * np.abs(rng.standard_normal(n)))
        wick_lo = np.exp(-0.6 * sigma * np.abs(rng.standard_normal(n)))
        high = np.maximum(open_, close) * wick_hi
        low = np.minimum(open_, close) * wick_lo
        volume = np.round(
            800.0 * u_volume[:n] * np.exp(0.5 * log_regime) * (1.0 + 0.5 * np.abs(shocks))
            * np.exp(0.3 * rng.standard_normal(n))
        )
        stamps = day + day_shift + open_offset + pd.to_timedelta(np.arange(n) * BAR_MINUTES, unit="min")
        keep = rng.random(n) >= missing_rate
        keep[0] = True
        frames.append(pd.DataFrame({
            "timestamp": stamps[keep], "open": open_[keep], "high": high[keep],
            "low": low[keep], "close": close[keep], "volume": volume[keep],
        }))
        price = close[-1]
    return validate_bars(pd.concat(frames, ignore_index=True), source="synthetic_bars")
