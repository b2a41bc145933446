"""Data for MIGT-TVDT: synthetic batches, and the real-data path from
5-minute bars to features to day samples."""

from .horizons import HORIZON_BARS, horizon_bars
from .synthetic import synthetic_batch

__all__ = ["synthetic_batch", "HORIZON_BARS", "horizon_bars"]

# Real-data pipeline (bars -> features -> day samples), imported on first use
# so that `import migt` does not pull in pandas.
_LAZY_EXPORTS = {
    "load_bars": "bars", "validate_bars": "bars", "synthetic_bars": "bars",
    "FEATURE_NAMES": "features", "compute_features": "features", "check_feature_count": "features",
    "BarDayDataset": "dataset", "collate_days": "dataset",
    "chronological_split": "dataset",
}
__all__ += list(_LAZY_EXPORTS)


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
