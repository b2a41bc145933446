"""From a trained checkpoint to forecasts and their evaluation.

- ``sessions``: bars -> one sample per session, including the latest ones
  whose targets are not known yet.
- ``inference``: batched quantile forecasts of a model.
- ``table``: forecasts as rows (session x horizon) in log returns and prices; CSV/Parquet.
- ``scores``: pinball, interval coverage, calibration, CRPS from quantiles.
- ``baselines``: unconditional historical quantiles, rolling-volatility Gaussian.
- ``plots``: calibration, fan chart, loss per horizon (matplotlib, Agg).

The command lines are ``python -m migt.predict`` and ``python -m migt.evaluate``.
"""
