"""Feature engineering: count, formulas, finiteness and no look-ahead."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from migt.config import MIGTConfig
from migt.data.bars import session_slots, synthetic_bars
from migt.data.features import FEATURE_NAMES, check_feature_count, compute_features

SESSION_OPEN = "18:00"


@pytest.fixture(scope="module")
def bars():
    return synthetic_bars(8, seed=3, missing_rate=0.02)


@pytest.fixture(scope="module")
def features(bars):
    return compute_features(bars, SESSION_OPEN)


def test_feature_names_define_the_config_count():
    assert len(FEATURE_NAMES) == 24 and len(set(FEATURE_NAMES)) == 24
    assert "macd_signal" not in FEATURE_NAMES
    check_feature_count(MIGTConfig())  # the seed config says 24
    with pytest.raises(ValueError, match=r"produces 24 features.*n_variables=25"):
        check_feature_count(MIGTConfig(n_variables=25))


def test_shape_columns_and_finite(bars, features):
    assert list(features.columns) == list(FEATURE_NAMES)
    assert features.shape == (len(bars), 24)
    assert np.isfinite(features.to_numpy()).all()


def test_formulas_spot_checks(bars, features):
    c, o = bars["close"].to_numpy(), bars["open"].to_numpy()
    np.testing.assert_allclose(features["returns"].to_numpy()[1:], np.log(c[1:] / c[:-1]), rtol=1e-12)
    day, slot = session_slots(bars["timestamp"], SESSION_OPEN)
    first_of_day = np.r_[True, day[1:] != day[:-1]]
    day_open = pd.Series(o).groupby(day).transform("first").to_numpy()
    np.testing.assert_allclose(features["close"].to_numpy(), np.log(c / day_open), rtol=1e-12, atol=1e-15)
    # VWAP restarts every session: at a session's first bar it is that bar's typical price.
    tp = ((bars["high"] + bars["low"] + bars["close"]) / 3).to_numpy()
    np.testing.assert_allclose(
        features["vwap_distance"].to_numpy()[first_of_day], np.log(c / tp)[first_of_day], rtol=1e-12
    )
    assert set(np.unique(features["tick_rule"])) <= {-1.0, 0.0, 1.0}
    assert features["order_flow_imbalance"].abs().max() <= 1.0 + 1e-12
    assert ((features["rsi"] >= 0) & (features["rsi"] <= 1)).all()
    # Relative volume needs a previous session at the same slot: 1 on the first session.
    assert (features["relative_volume"].to_numpy()[day == day[0]] == 1.0).all()
    assert (features["spread_proxy"] >= 0).all()


def test_changing_future_bars_leaves_past_features_unchanged(bars, features):
    cut = len(bars) // 2 + 37  # mid-session
    rng = np.random.default_rng(0)
    future = bars.copy()
    scale = np.exp(0.01 * rng.standard_normal(len(bars) - cut))
    for col in ("open", "high", "low", "close"):
        future.loc[cut:, col] = future.loc[cut:, col].to_numpy() * scale
    future.loc[cut:, "volume"] = future.loc[cut:, "volume"].to_numpy() * rng.uniform(0.1, 10, len(bars) - cut)
    changed = compute_features(future, SESSION_OPEN)
    truncated = compute_features(bars.iloc[:cut].reset_index(drop=True), SESSION_OPEN)

    past = features.iloc[:cut].to_numpy()
    diff = np.abs(changed.iloc[:cut].to_numpy() - past).max(axis=0)
    assert diff.max() <= 1e-12, {n: d for n, d in zip(FEATURE_NAMES, diff) if d > 1e-12}
    np.testing.assert_allclose(truncated.to_numpy(), past, rtol=1e-12, atol=1e-15)
    # The perturbation did reach the future rows (so this test can fail).
    assert np.abs(changed.iloc[cut:].to_numpy() - features.iloc[cut:].to_numpy()).max() > 1e-4
