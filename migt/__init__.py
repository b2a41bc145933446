"""MIGT-TVDT: hybrid temporal/variable transformer for intraday quantile forecasts.

Public API (see DESIGN.md):
    migt.MIGTConfig, migt.MIGT_TVDT, migt.pinball_loss, migt.data.synthetic_batch
"""

from . import data
from .config import MIGTConfig
from .loss import pinball_loss
from .model import MIGT_TVDT

__all__ = ["MIGTConfig", "MIGT_TVDT", "pinball_loss", "data"]
