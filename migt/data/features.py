"""The 24 model features computed from 5-minute OHLCV bars (pandas).

``FEATURE_NAMES`` is the single source of truth for the feature count: the
model's ``n_variables`` must equal ``len(FEATURE_NAMES)`` (see
``check_feature_count``). The list is the original pipeline's less
``macd_signal``.

No look-ahead: the value at bar t uses bars up to t only (rolling windows,
EWMs with ``adjust=False``, expanding-within-session VWAP, same-slot averages
over *previous* sessions). "Previous bar" means the previous row present in
the data, across session breaks; a missing bar is skipped, not filled.
Price levels are turned into ratios (log or relative) so that each feature's
scale does not drift with the price, which keeps RevIN's per-day statistics
meaningful.

Notation: o, h, l, c, v the bar's open, high, low, close, volume; c_prev the
previous bar's close (the bar's own open on the first bar of the data);
O_day the open of the session's first bar; r = log(c / c_prev);
EMA_n: EWM with alpha = 2 / (n + 1), adjust=False; Wilder_n: EWM with alpha = 1/n;
SMA_n / STD_n: rolling mean / sample std over n bars (min_periods 1 / 2).

| # | name                 | formula                                                        |
|---|----------------------|----------------------------------------------------------------|
| 0 | open                 | log(o / c_prev)                                                |
| 1 | high                 | log(h / c_prev)                                                |
| 2 | low                  | log(l / c_prev)                                                |
| 3 | close                | log(c / O_day)  (return since the session open)                |
| 4 | log_volume           | log(1 + v)                                                     |
| 5 | returns              | r = log(c / c_prev)                                            |
| 6 | rsi                  | RSI_14 / 100 with Wilder_14 of gains and losses (0.5 if flat)  |
| 7 | macd                 | (EMA_12(c) - EMA_26(c)) / c                                    |
| 8 | volatility           | STD_20(r)  (0 until 2 bars)                                    |
| 9 | atr                  | Wilder_14(true range) / c, TR = max(h, c_prev) - min(l, c_prev)|
|10 | bb_upper             | (SMA_20(c) + 2 STD_20(c)) / c - 1                              |
|11 | bb_middle            | SMA_20(c) / c - 1                                              |
|12 | bb_lower             | (SMA_20(c) - 2 STD_20(c)) / c - 1                              |
|13 | ema_short            | EMA_12(c) / c - 1                                              |
|14 | ema_long             | EMA_26(c) / c - 1                                              |
|15 | volume_ma_ratio      | v / SMA_20(v)  (1 if the mean is 0)                            |
|16 | relative_volume      | v / mean of v at the same slot over the previous 20 sessions  |
|   |                      | (1 when there is no previous session or that mean is 0)        |
|17 | dollar_volume        | log(1 + c * v)                                                 |
|18 | vwap                 | log(VWAP / O_day), VWAP = cumsum(tp * v) / cumsum(v) within    |
|   |                      | the session, tp = (h + l + c) / 3 (tp itself while cumsum v=0) |
|19 | vwap_distance        | log(c / VWAP)                                                  |
|20 | order_flow_imbalance | sum_12(tick * v) / sum_12(v)  in [-1, 1] (0 if no volume)      |
|21 | trade_intensity      | log((EMA_6(v) + 1) / (EMA_48(v) + 1))  (activity now vs lately)|
|22 | tick_rule            | sign(c - c_prev); an unchanged close repeats the last sign     |
|23 | spread_proxy         | Roll: 2 sqrt(max(0, -cov_20(r_t, r_{t-1})))                    |
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from .bars import session_slots

FEATURE_NAMES = (
    "open", "high", "low", "close",
    "log_volume", "returns", "rsi", "macd", "volatility", "atr",
    "bb_upper", "bb_middle", "bb_lower", "ema_short", "ema_long",
    "volume_ma_ratio", "relative_volume", "dollar_volume", "vwap", "vwap_distance",
    "order_flow_imbalance", "trade_intensity", "tick_rule", "spread_proxy",
)
N_FEATURES = len(FEATURE_NAMES)

# Longest look-back of any window above (EMA_48 / Roll cov need this many bars
# to be warmed up); the dataset drops sessions that start before it.
WARMUP_BARS = 48

_RSI_N, _ATR_N, _BB_N, _VOL_N = 14, 14, 20, 20
_EMA_SHORT, _EMA_LONG = 12, 26
_FLOW_N, _INTENSITY_FAST, _INTENSITY_SLOW = 12, 6, 48
_ROLL_N, _REL_VOLUME_SESSIONS = 20, 20


def check_feature_count(config) -> None:
    """Raise ValueError unless ``config.n_variables == len(FEATURE_NAMES)``."""
    if config.n_variables != N_FEATURES:
        raise ValueError(
            f"the feature pipeline produces {N_FEATURES} features (len(FEATURE_NAMES)) but the "
            f"config has n_variables={config.n_variables}; set n_variables: {N_FEATURES}"
        )


def compute_features(bars: pd.DataFrame, session_open: str | dt.time) -> pd.DataFrame:
    """Features (len(bars), 24) float64 with columns FEATURE_NAMES, index of bars.

    bars: a validated bar frame (``bars.validate_bars``), sorted by time.
    session_open: session start time of day (see ``bars.session_slots``).
    Every value is finite.
    """
    o, h, l, c, v = (bars[k].astype("float64") for k in ("open", "high", "low", "close", "volume"))
    day, slot = session_slots(bars["timestamp"], session_open)
    session = pd.Series(day, index=bars.index)

    c_prev = c.shift(1).fillna(o)
    r = np.log(c / c_prev)
    day_open = o.groupby(session).transform("first")

    out = {}
    out["open"] = np.log(o / c_prev)
    out["high"] = np.log(h / c_prev)
    out["low"] = np.log(l / c_prev)
    out["close"] = np.log(c / day_open)
    out["log_volume"] = np.log1p(v)
    out["returns"] = r

    delta = c - c_prev
    gain = _wilder(delta.clip(lower=0.0), _RSI_N)
    loss = _wilder((-delta).clip(lower=0.0), _RSI_N)
    total = gain + loss
    out["rsi"] = (gain / total.where(total > 0, 1.0)).where(total > 0, 0.5)

    ema_short, ema_long = _ema(c, _EMA_SHORT), _ema(c, _EMA_LONG)
    out["macd"] = (ema_short - ema_long) / c
    out["volatility"] = r.rolling(_VOL_N, min_periods=2).std().fillna(0.0)

    true_range = np.maximum(h, c_prev) - np.minimum(l, c_prev)
    out["atr"] = _wilder(true_range, _ATR_N) / c

    mid = c.rolling(_BB_N, min_periods=1).mean()
    spread = c.rolling(_BB_N, min_periods=2).std().fillna(0.0)
    out["bb_upper"] = (mid + 2.0 * spread) / c - 1.0
    out["bb_middle"] = mid / c - 1.0
    out["bb_lower"] = (mid - 2.0 * spread) / c - 1.0
    out["ema_short"] = ema_short / c - 1.0
    out["ema_long"] = ema_long / c - 1.0

    v_mean = v.rolling(_VOL_N, min_periods=1).mean()
    out["volume_ma_ratio"] = (v / v_mean.where(v_mean > 0, 1.0)).where(v_mean > 0, 1.0)
    # Same slot, previous sessions only: shift(1) inside each slot's history.
    slot_mean = v.groupby(slot).transform(
        lambda s: s.shift(1).rolling(_REL_VOLUME_SESSIONS, min_periods=1).mean()
    )
    has_mean = slot_mean.notna() & (slot_mean > 0)
    out["relative_volume"] = (v / slot_mean.where(has_mean, 1.0)).where(has_mean, 1.0)
    out["dollar_volume"] = np.log1p(c * v)

    typical = (h + l + c) / 3.0
    cum_pv = (typical * v).groupby(session).cumsum()
    cum_v = v.groupby(session).cumsum()
    vwap = (cum_pv / cum_v.where(cum_v > 0, 1.0)).where(cum_v > 0, typical)
    out["vwap"] = np.log(vwap / day_open)
    out["vwap_distance"] = np.log(c / vwap)

    tick = _tick_rule(delta)
    flow = (tick * v).rolling(_FLOW_N, min_periods=1).sum()
    flow_volume = v.rolling(_FLOW_N, min_periods=1).sum()
    out["order_flow_imbalance"] = (flow / flow_volume.where(flow_volume > 0, 1.0)).where(flow_volume > 0, 0.0)
    out["trade_intensity"] = np.log((_ema(v, _INTENSITY_FAST) + 1.0) / (_ema(v, _INTENSITY_SLOW) + 1.0))
    out["tick_rule"] = tick

    roll_cov = r.rolling(_ROLL_N, min_periods=3).cov(r.shift(1)).fillna(0.0)
    out["spread_proxy"] = 2.0 * np.sqrt(np.maximum(-roll_cov, 0.0))

    frame = pd.DataFrame({name: out[name] for name in FEATURE_NAMES}, index=bars.index).astype("float64")
    values = frame.to_numpy()
    if not np.isfinite(values).all():
        row, col = (int(i[0]) for i in np.nonzero(~np.isfinite(values)))
        raise ValueError(
            f"feature {FEATURE_NAMES[col]!r} is not finite at row {row} "
            f"(timestamp {bars['timestamp'].iloc[row]}): {values[row, col]}"
        )
    return frame


def _ema(x: pd.Series, span: int) -> pd.Series:
    return x.ewm(span=span, adjust=False).mean()


def _wilder(x: pd.Series, n: int) -> pd.Series:
    return x.ewm(alpha=1.0 / n, adjust=False).mean()


def _tick_rule(delta: pd.Series) -> pd.Series:
    """+1 up-tick, -1 down-tick; an unchanged close carries the last sign (0 before any)."""
    sign = np.sign(delta).replace(0.0, np.nan).ffill().fillna(0.0)
    return sign
