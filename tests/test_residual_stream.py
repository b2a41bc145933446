"""MIGTConfig.residual_stream: the dtype of the residual stream under autocast,
the same on every backend."""
import pytest
import torch

from migt import MIGT_TVDT, MIGTConfig
from migt.data import synthetic_batch
from helpers import AUTOCAST_16

SMALL = dict(d_model=32, n_heads=2, d_ff=48, n_temporal_layers=1, n_variable_layers=1, max_seq_len=12,
             n_variables=3, time_of_day_dim=8, day_of_week_dim=4, day_of_month_dim=4, day_of_year_dim=6)


def block_input_dtypes(stream, backend, autocast):
    torch.manual_seed(0)
    model = MIGT_TVDT(MIGTConfig(**SMALL, residual_stream=stream, backend=backend)).train()
    batch = synthetic_batch(2, model.config, seed=0)
    seen = []
    for block in [*model.temporal_blocks, *model.variable_blocks]:
        block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    with torch.autocast("cpu", dtype=AUTOCAST_16, enabled=autocast):
        out = model(batch["features"], batch["attention_mask"], batch["temporal_info"])["quantiles"]
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    return seen


@pytest.mark.parametrize("backend", ["sdpa", "reference", "triton"])
def test_the_stream_is_in_autocast_dtype_only_when_asked(backend):
    assert set(block_input_dtypes("autocast", backend, True)) == {AUTOCAST_16}
    assert set(block_input_dtypes("float32", backend, True)) == {torch.float32}
    assert set(block_input_dtypes("autocast", backend, False)) == {torch.float32}


def test_unknown_stream_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"residual_stream must be one of \('float32', 'autocast'\); got 'fp16'"):
        MIGTConfig(residual_stream="fp16")
