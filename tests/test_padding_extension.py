"""A day alone and the same day followed by padded slots give the same forecast
and the same gradients, on every backend and in both variable modes.

Why this test exists: the NaN-at-padding tests cannot see padded *keys* being
attended, because RevIN writes 0 at padded steps and the model replaces their
bar_in_day by 0 before attention, so what sits at a padded step is the same
whatever was stored there. Here the number of padded slots changes, so a
temporal mask that lets padded keys in (the "all-true mask" mutant of
model.py's temporal loop) changes every forecast.
"""
import pytest
import torch

from helpers import random_mask
from migt import MIGT_TVDT, MIGTConfig, pinball_loss
from migt.data import synthetic_batch

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

B, V = 4, 5  # masks: a full day, a short session, gaps inside, late start + early close
QUANTILES = [0.1, 0.25, 0.5, 0.75, 0.9]

# backend -> (d_model, n_heads, layers, steps of the day, steps after extension,
# dtype, atol/rtol). The triton case is small (the interpreter is slow) and
# in float32 (the kernels take no float64); its day spans one 64-step time
# block and its extension reaches into a second, all padding.
CASES = {
    "reference": (32, 4, 2, 23, 40, torch.float64, 1e-10),
    "sdpa": (32, 4, 2, 23, 40, torch.float64, 1e-10),
    "triton": (32, 2, 1, 45, 70, torch.float32, 2e-5),
}


def build(backend, mode, max_seq_len):
    d_model, n_heads, layers, _, _, dtype, _ = CASES[backend]
    config = MIGTConfig(
        d_model=d_model, n_heads=n_heads, d_ff=2 * d_model, dropout=0.0, attn_dropout=0.0,
        n_temporal_layers=layers, n_variable_layers=layers, max_seq_len=max_seq_len, n_variables=V,
        n_horizons=3, n_quantiles=len(QUANTILES), quantiles=QUANTILES,
        time_of_day_dim=8, day_of_week_dim=4, day_of_month_dim=4, day_of_year_dim=6,
        backend=backend, variable_attention=mode,
    )
    torch.manual_seed(0)
    return MIGT_TVDT(config).to(dtype).eval()


def extend(batch, mask, extra, fill, seed):
    """The day's inputs followed by `extra` padded slots holding `fill`
    ("random": large random values, or NaN) and arbitrary bar_in_day values."""
    g = torch.Generator().manual_seed(seed)
    feats = batch["features"]
    pad = torch.randn(B, extra, V, generator=g, dtype=feats.dtype) * 1e3
    if fill == "nan":
        pad = torch.full_like(pad, float("nan"))
    bar = batch["temporal_info"]["bar_in_day"]
    info = dict(batch["temporal_info"], bar_in_day=torch.cat([bar, torch.randint(-500, 500, (B, extra), generator=g)], 1))
    long_mask = torch.cat([mask, torch.zeros(B, extra, dtype=torch.bool)], 1)
    return torch.cat([feats, pad], 1), long_mask, info


def forecast_and_grads(model, features, mask, info, targets):
    """Quantiles, d loss / d features and d loss / d every parameter."""
    features = features.to(model.revin_weight.dtype).requires_grad_()
    quantiles = model(features, mask, info)["quantiles"]
    loss = pinball_loss(quantiles, targets, QUANTILES)
    grads = torch.autograd.grad(loss, [features, *model.parameters()])
    return quantiles.detach(), grads[0], grads[1:]


# The triton case runs with the NaN fill only, to keep the interpreter's time down.
BACKEND_FILLS = [
    pytest.param("reference", "random", id="reference-random"),
    pytest.param("reference", "nan", id="reference-nan"),
    pytest.param("sdpa", "random", id="sdpa-random"),
    pytest.param("sdpa", "nan", id="sdpa-nan"),
    pytest.param("triton", "nan", id="triton-nan",
                 marks=pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")),
]


@pytest.mark.parametrize("mode", ["per_step", "pooled"])
@pytest.mark.parametrize("backend,fill", BACKEND_FILLS)
def test_padded_slots_after_the_day_change_nothing(backend, fill, mode):
    _, _, _, steps, long_steps, _, tol = CASES[backend]
    model = build(backend, mode, long_steps)
    batch = synthetic_batch(B, model.config, seed=3, seq_len=steps, nan_padding=False)
    mask = random_mask(B, steps, seed=5, all_padding_sample=False)
    assert mask[0].all() and not mask[1:].all(dim=1).any(), "a full day and three kinds of padded day"
    batch["features"] = torch.where(mask[:, :, None], batch["features"], 0.0)
    targets = batch["targets"][:, :3]

    q_day, dx_day, g_day = forecast_and_grads(model, batch["features"], mask, batch["temporal_info"], targets)
    feats, long_mask, info = extend(batch, mask, long_steps - steps, fill, seed=7)
    q_ext, dx_ext, g_ext = forecast_and_grads(model, feats, long_mask, info, targets)

    assert torch.isfinite(q_day).all()
    torch.testing.assert_close(q_ext, q_day, atol=tol, rtol=tol, msg=lambda m: f"forecast: {m}")
    torch.testing.assert_close(dx_ext[:, :steps], dx_day, atol=tol, rtol=tol, msg=lambda m: f"d features: {m}")
    assert (dx_ext[:, steps:] == 0).all(), "padded slots get zero gradient"
    for (name, _), a, b in zip(model.named_parameters(), g_ext, g_day):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"grad of {name}: {m}")
