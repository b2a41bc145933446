"""migt.data.synthetic_batch: shapes, mask variety, determinism, calendar, scales."""
from __future__ import annotations

import datetime as dt

import pytest
import torch

from migt import MIGTConfig
from migt.data import synthetic_batch
from migt.data.horizons import horizon_bars
from migt.data.synthetic import MASK_FULL, MASK_GAPPED, MASK_SHORT

CFG = MIGTConfig(d_model=32, n_heads=4, d_ff=64, max_seq_len=288, n_variables=8, n_horizons=5)


def _is_prefix(row: torch.Tensor) -> bool:
    n = int(row.sum())
    return bool(row[:n].all()) and not bool(row[n:].any())


def test_shapes_and_dtypes():
    b = synthetic_batch(7, CFG, seed=3)
    assert b["features"].shape == (7, 288, 8) and b["features"].dtype == torch.float32
    assert b["attention_mask"].shape == (7, 288) and b["attention_mask"].dtype == torch.bool
    assert b["targets"].shape == (7, 5) and b["targets"].dtype == torch.float32
    ti = b["temporal_info"]
    assert ti["bar_in_day"].shape == (7, 288)
    for key in ("day_of_week", "day_of_month", "day_of_year"):
        assert ti[key].shape == (7,) and ti[key].dtype == torch.int64
    assert torch.equal(ti["bar_in_day"][2], torch.arange(288))
    assert len(b["dates"]) == 7
    # seq_len shorter than max_seq_len
    assert synthetic_batch(2, CFG, seq_len=40)["features"].shape == (2, 40, 8)


def test_mask_variety():
    b = synthetic_batch(9, CFG, seed=0)
    mask, kind = b["attention_mask"], b["mask_kind"]
    assert set(kind.tolist()) == {MASK_FULL, MASK_SHORT, MASK_GAPPED}
    for row, k in zip(mask, kind.tolist()):
        assert row.any(), "no all-padding sample unless requested"
        if k == MASK_FULL:
            assert row.all()
        elif k == MASK_SHORT:
            assert _is_prefix(row) and 0 < row.sum() < 288
        else:
            assert not _is_prefix(row) and row[0] and row[-1]
    # all three kinds for any batch of >= 3, whatever the seed
    for seed in range(5):
        assert len(set(synthetic_batch(3, CFG, seed=seed)["mask_kind"].tolist())) == 3


def test_empty_samples_only_on_request():
    b = synthetic_batch(4, CFG, seed=1, n_empty=2)
    assert b["attention_mask"][:2].any(1).all()
    assert not b["attention_mask"][2:].any()


def test_padding_fill():
    b = synthetic_batch(6, CFG, seed=2)
    mask = b["attention_mask"][:, :, None].expand_as(b["features"])
    assert torch.isnan(b["features"][~mask]).all()
    assert torch.isfinite(b["features"][mask]).all()
    z = synthetic_batch(6, CFG, seed=2, nan_padding=False)
    assert (z["features"][~mask] == 0).all()
    assert torch.equal(z["features"][mask], b["features"][mask])


def test_deterministic_per_seed():
    a, b, c = (synthetic_batch(5, CFG, seed=s) for s in (11, 11, 12))
    assert torch.equal(a["features"].nan_to_num(), b["features"].nan_to_num())
    assert torch.equal(a["attention_mask"], b["attention_mask"])
    assert torch.equal(a["targets"], b["targets"])
    assert a["dates"] == b["dates"]
    assert not torch.equal(a["targets"], c["targets"])


def test_calendar_consistency():
    b = synthetic_batch(64, CFG, seed=4)
    ti = b["temporal_info"]
    for i, day in enumerate(b["dates"]):
        assert isinstance(day, dt.date)
        assert day.weekday() < 5, "business days only"
        assert ti["day_of_week"][i] == day.weekday()
        assert ti["day_of_month"][i] == day.day
        assert ti["day_of_year"][i] == day.timetuple().tm_yday
    assert ti["day_of_week"].min() >= 0 and ti["day_of_week"].max() <= 4
    assert 1 <= ti["day_of_month"].min() and ti["day_of_month"].max() <= 31
    assert 1 <= ti["day_of_year"].min() and ti["day_of_year"].max() <= 366


def test_realistic_scales_and_learnable_targets():
    b = synthetic_batch(512, CFG, seed=5)
    x, mask = b["features"], b["attention_mask"]
    med = [x[..., v][mask].abs().median().item() for v in range(4)]
    assert 1e-4 < med[0] < 1e-2  # log returns
    assert 1e2 < med[1] < 1e4  # price
    assert 1e4 < med[2] < 1e6  # volume
    assert 1e-4 < med[3] < 1e-2  # rolling |return|
    assert horizon_bars(5) == [3, 6, 12, 24, 48] and horizon_bars(7)[-1] == 192
    # Mean valid return predicts the long-horizon target.
    drift = torch.where(mask, x[..., 0], 0.0).sum(1) / mask.sum(1)
    y = b["targets"][:, -1]
    corr = torch.corrcoef(torch.stack([drift, y]))[0, 1].item()
    assert corr > 0.2, corr
    # Realised volatility predicts the spread of the target.
    vol = torch.where(mask, x[..., 3], 0.0).sum(1) / mask.sum(1)
    corr_vol = torch.corrcoef(torch.stack([vol, (y - y.mean()).abs()]))[0, 1].item()
    assert corr_vol > 0.1, corr_vol


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        synthetic_batch(0, CFG)
    with pytest.raises(ValueError, match="seq_len"):
        synthetic_batch(2, CFG, seq_len=289)
    with pytest.raises(ValueError, match="n_empty"):
        synthetic_batch(2, CFG, n_empty=3)
