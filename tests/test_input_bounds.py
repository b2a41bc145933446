"""Values on the edge of what is valid are accepted (mutmut found the
checks' bounds untested: a check that refused them would have passed)."""
import torch

from migt import MIGT_TVDT, MIGTConfig, pinball_loss
from migt.data import synthetic_batch

TINY = dict(d_model=8, n_heads=2, d_ff=16, n_temporal_layers=1, n_variable_layers=1, n_variables=3,
            n_horizons=2, n_quantiles=3, quantiles=[0.1, 0.5, 0.9], time_of_day_dim=4,
            day_of_week_dim=2, day_of_month_dim=2, day_of_year_dim=2, backend="reference")


def test_zero_layers_is_a_valid_config():
    config = MIGTConfig(**dict(TINY, n_temporal_layers=0, n_variable_layers=0))
    assert config.n_temporal_layers == 0 and config.n_variable_layers == 0


def test_a_one_step_day_and_the_last_calendar_values_are_accepted():
    torch.manual_seed(0)
    model = MIGT_TVDT(MIGTConfig(**dict(TINY, max_seq_len=1))).eval()
    batch = synthetic_batch(2, model.config, seed=0)
    info = dict(batch["temporal_info"])
    info["day_of_week"] = torch.tensor([6, 0])  # Sunday
    info["day_of_month"] = torch.tensor([31, 1])
    info["day_of_year"] = torch.tensor([366, 1])  # a leap year's last day
    info["bar_in_day"] = torch.full((2, 1), model.config.bars_per_day - 1)
    mask = torch.ones(2, 1, dtype=torch.bool)
    out = model(torch.randn(2, 1, 3), mask, info)["quantiles"]
    assert out.shape == (2, 2, 3) and torch.isfinite(out).all()


def test_loss_is_in_the_dtype_of_the_quantiles():
    quantiles = torch.zeros(2, 1, 3, dtype=torch.float32)
    targets = torch.full((2, 1), 1e-9, dtype=torch.float64)  # float64 targets do not promote the loss
    loss = pinball_loss(quantiles, targets, [0.1, 0.5, 0.9])
    assert loss.dtype == torch.float32
