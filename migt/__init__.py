"""MIGT-TVDT: hybrid temporal/variable transformer for intraday quantile forecasts.

Public API (see DESIGN.md):
    migt.MIGTConfig, migt.MIGT_TVDT, migt.pinball_loss, migt.data.synthetic_batch
    migt.validate_inputs, migt.input_values_checked: check a batch on the host,
    then run the forward without the device read of its value checks
"""

from . import data
from .config import MIGTConfig
from .loss import pinball_loss
from .model import MIGT_TVDT
from .validation import input_values_checked, validate_inputs

__all__ = ["MIGTConfig", "MIGT_TVDT", "pinball_loss", "data", "input_values_checked", "validate_inputs"]
