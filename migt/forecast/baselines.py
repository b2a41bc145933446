"""Reference forecasts scored on the same sessions as the model.

- Unconditional: per horizon, the empirical quantiles of the training split's
  targets, the same forecast for every session.
- Rolling-volatility Gaussian: N(0, sigma^2 h), sigma the sample std of the
  last ``window`` 5-minute log returns up to the forecast origin (the
  session's last bar), h the horizon in bars (random-walk scaling).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import numpy as np
import pandas as pd

# One day of 5-minute bars.
DEFAULT_VOL_WINDOW = 288


def unconditional_quantiles(train_targets: np.ndarray, levels: Sequence[float], n_sessions: int) -> np.ndarray:
    """(n_sessions, H, Q): the levels' empirical quantiles of (N_train, H) targets, per horizon."""
    train_targets = np.asarray(train_targets, dtype=np.float64)
    if train_targets.ndim != 2 or len(train_targets) == 0:
        raise ValueError(f"train_targets must be a non-empty (N, H) array; got shape {train_targets.shape}")
    per_h = np.quantile(train_targets, np.asarray(levels, dtype=np.float64), axis=0).T  # [H, Q]
    return np.broadcast_to(per_h, (n_sessions, *per_h.shape)).copy()


def rolling_volatility(close: np.ndarray, anchor_rows: np.ndarray, window: int = DEFAULT_VOL_WINDOW) -> np.ndarray:
    """(N,) sample std of the last ``window`` bar log returns ending at each anchor row
    (fewer near the start of the data; at least 2)."""
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an int >= 2; got {window!r}")
    returns = pd.Series(np.diff(np.log(np.asarray(close, dtype=np.float64)), prepend=np.nan))
    sigma = returns.rolling(window, min_periods=2).std().to_numpy()
    out = sigma[np.asarray(anchor_rows)]
    if not np.isfinite(out).all():
        raise ValueError("a forecast origin has fewer than 2 bar returns before it; cannot estimate volatility")
    return out


def gaussian_quantiles(sigma: np.ndarray, horizons: Sequence[int], levels: Sequence[float]) -> np.ndarray:
    """(N, H, Q) quantiles of N(0, sigma^2 * h) for bar volatilities sigma (N,)."""
    z = np.array([NormalDist().inv_cdf(float(level)) for level in levels])  # [Q]
    scale = np.asarray(sigma, dtype=np.float64)[:, None] * np.sqrt(np.asarray(horizons, dtype=np.float64))[None, :]
    return scale[:, :, None] * z[None, None, :]
