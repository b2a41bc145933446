"""MIGT_TVDT: component shapes, padding invariance, batch independence,
backend parity, save/load, input errors, checkpointing."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import kernels
import migt
from migt import MIGT_TVDT, MIGTConfig, pinball_loss
from migt.blocks import AxisAttentionBlock, GatedVariableBlock
from migt.data import synthetic_batch
from migt.embedding import CompositePositionalEncoding, Time2Vec, TimeOfDayEncoding, VariableEmbedding
from migt.heads import MaskedAttentionPooling, OutputPool, QuantileHeads

# Add "triton" here once the kernels exist (slow under TRITON_INTERPRET=1).
BACKENDS = ["reference", "sdpa"]
MODES = ["per_step", "pooled"]
SEED_YAML = Path(__file__).resolve().parents[1] / "configs" / "model_config.yaml"

B, T, V, D, H = 5, 48, 5, 32, 4


def small_config(**overrides) -> MIGTConfig:
    values = dict(
        d_model=D, n_heads=H, d_ff=64, dropout=0.1, attn_dropout=0.1,
        n_temporal_layers=2, n_variable_layers=1, max_seq_len=T, n_variables=V,
        n_horizons=3, n_quantiles=5, quantiles=[0.1, 0.25, 0.5, 0.75, 0.9],
        time_of_day_dim=8, day_of_week_dim=4, day_of_month_dim=4, day_of_year_dim=6,
        backend="reference",
    )
    values.update(overrides)
    return MIGTConfig(**values)


def make_model(seed: int = 0, **overrides) -> MIGT_TVDT:
    torch.manual_seed(seed)
    return MIGT_TVDT(small_config(**overrides)).eval()


def make_batch(cfg: MIGTConfig, batch: int = B, seed: int = 0, n_empty: int = 0) -> dict:
    return synthetic_batch(batch, cfg, seed=seed, n_empty=n_empty)


def run(model, batch, features=None, bar=None):
    info = dict(batch["temporal_info"])
    if bar is not None:
        info["bar_in_day"] = bar
    feats = batch["features"] if features is None else features
    return model(feats.to(model.revin_weight.dtype), batch["attention_mask"], info)


# ---------------------------------------------------------------- components

def test_variable_embedding_is_a_per_variable_linear():
    emb = VariableEmbedding(V, D)
    y = torch.randn(2, V, 7)
    out = emb(y)
    assert out.shape == (2, V, 7, D)
    for v in range(V):
        expected = y[:, v, :, None] * emb.weight[v] + emb.bias[v]
        torch.testing.assert_close(out[:, v], expected)


def test_positional_encodings():
    cfg = small_config()
    tod = TimeOfDayEncoding(8, 288)
    bars = torch.tensor([[0, 1, 287, 288, 576]])
    enc = tod(bars, torch.float32)
    assert enc.shape == (1, 5, 8)
    torch.testing.assert_close(enc[0, 0], enc[0, 3])  # periodic over the day
    torch.testing.assert_close(enc[0, 0], enc[0, 4])
    torch.testing.assert_close(enc[0, 0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert not torch.allclose(enc[0, 1], enc[0, 2])
    t2v = Time2Vec(6)
    assert t2v(torch.rand(3)).shape == (3, 6)
    pos = CompositePositionalEncoding(cfg)
    out = pos(torch.arange(T).expand(2, T), torch.tensor([0, 6]), torch.tensor([1, 31]), torch.tensor([1, 366]))
    assert out.shape == (2, T, D)
    # the split projection equals the plain Linear on the concatenation
    tod_feat = pos.time_of_day(torch.arange(T).expand(2, T), torch.float32)
    day = torch.cat([
        pos.day_of_week(torch.tensor([0, 6])),
        pos.day_of_month(torch.tensor([0.0, 30.0]) / 31),
        pos.day_of_year(torch.tensor([0.0, 365.0]) / 366),
    ], -1)
    full = torch.cat([tod_feat, day[:, None, :].expand(2, T, -1)], -1)
    torch.testing.assert_close(out, pos.proj(full), atol=1e-5, rtol=1e-5)


def _block_with_unbind(block, x, mask):
    B, V_, T, D_ = x.shape
    qkv = block.qkv(block.norm_attn(x)).view(B, V_, T, 3, block.n_heads, block.head_dim)
    attn = kernels.masked_attention(*qkv.unbind(3), mask, block.axis, backend=block.backend)
    y = x + block.dropout(block.out_proj(block.attn_dropout(attn).view(B, V_, T, D_)))
    return y + block.ff(block.norm_ff(y))


@pytest.mark.parametrize("axis", ["time", "variable"])
def test_block_shapes_and_qkv_views(axis, monkeypatch):
    cfg = small_config()
    block = AxisAttentionBlock(cfg, axis).eval()
    x = torch.randn(2, V, 7, D)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    seen = {}
    real = kernels.masked_attention_qkvpacked

    def spy(qkv, mask, axis="time", **kw):
        seen.update(qkv=qkv, axis=axis)
        return real(qkv, mask, axis, **kw)

    monkeypatch.setattr(kernels, "masked_attention_qkvpacked", spy)
    out = block(x, mask)
    assert out.shape == x.shape
    qkv = seen["qkv"]
    assert seen["axis"] == axis
    assert qkv.shape == (2, V, 7, 3, H, D // H) and qkv.stride(-1) == 1
    assert qkv._base is not None, "qkv must be a view of the fused QKV projection, not a copy"
    # the packed call computes exactly what separate q, k, v views would
    torch.testing.assert_close(out, _block_with_unbind(block, x, mask), rtol=0, atol=0)
    gated = GatedVariableBlock(cfg).eval()
    assert gated(x, mask).shape == x.shape


def test_attention_pooling():
    pool = MaskedAttentionPooling(D)
    x = torch.randn(3, V, 6, D)
    mask = torch.tensor([[True] * 6, [True, False, True, False, False, True], [False] * 6])
    w = pool.weights(x, mask)
    assert w.shape == (3, V, 6)
    assert (w[1][:, ~mask[1]] == 0).all(), "padded steps get exactly zero weight"
    torch.testing.assert_close(w[:2].sum(-1), torch.ones(2, V))
    assert (w[2] == 0).all()
    scores = (pool.key_proj(x[1][:, mask[1]]) @ pool.query) / math.sqrt(D)
    torch.testing.assert_close(w[1][:, mask[1]], scores.softmax(-1))
    x = torch.where(mask[:, None, :, None], x, float("nan"))
    out = pool(x, mask)
    assert out.shape == (3, V, D)
    assert torch.isfinite(out).all() and (out[2] == 0).all()


def test_output_pool_and_heads():
    hidden = OutputPool(V, D, 0.0)(torch.randn(4, V, D))
    assert hidden.shape == (4, D)
    heads = QuantileHeads(D, 3, 5)
    q = heads(hidden * 100)
    assert q.shape == (4, 3, 5)
    assert (q.diff(dim=-1) >= 0).all()
    raw = heads.proj(hidden * 100).view(4, 3, 5)
    torch.testing.assert_close(q[..., 0], raw[..., 0])  # first quantile is the base


@pytest.mark.parametrize("mode", MODES)
def test_model_output_shapes(mode):
    model = make_model(variable_attention=mode)
    batch = make_batch(model.config)
    out = run(model, batch)
    assert out["quantiles"].shape == (B, 3, 5)
    assert out["norm_stats"]["mean"].shape == (B, V) and out["norm_stats"]["std"].shape == (B, V)
    assert torch.isfinite(out["quantiles"]).all()
    # the RevIN mean is the masked mean of the features
    mask = batch["attention_mask"]
    mean = torch.where(mask[:, :, None], batch["features"], 0.0).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(out["norm_stats"]["mean"].float(), mean, rtol=1e-5, atol=1e-5)


def test_seed_config_builds_and_runs():
    model = MIGT_TVDT.from_config(SEED_YAML).eval()
    assert model.config == MIGTConfig.from_yaml(SEED_YAML)
    batch = synthetic_batch(1, model.config, seq_len=12)
    with torch.no_grad():
        out = run(model, batch)
    assert out["quantiles"].shape == (1, 5, 7)


# ---------------------------------------------------------------- invariants

def _poisoned(batch, value, seed):
    g = torch.Generator().manual_seed(seed)
    mask = batch["attention_mask"]
    feats = batch["features"]
    junk = torch.full_like(feats, value) if value is not None else torch.randn(feats.shape, generator=g) * 1e6
    feats = torch.where(mask[:, :, None], feats, junk)
    bar = batch["temporal_info"]["bar_in_day"]
    bar = torch.where(mask, bar, torch.randint(-10_000, 10_000, bar.shape, generator=g))
    return feats, bar


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_invariance(backend, mode):
    model = make_model(backend=backend, variable_attention=mode)
    batch = make_batch(model.config, batch=6, n_empty=1)
    base = run(model, batch, features=torch.nan_to_num(batch["features"], nan=0.0))
    loss = pinball_loss(base["quantiles"], batch["targets"][:, :3], model.config.quantiles)
    base_grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    for i, value in enumerate([float("nan"), float("inf"), float("-inf"), None]):
        feats, bar = _poisoned(batch, value, seed=i)
        out = run(model, batch, features=feats, bar=bar)
        torch.testing.assert_close(out["quantiles"], base["quantiles"], rtol=0, atol=0, msg=f"fill {value}")
        torch.testing.assert_close(out["norm_stats"]["std"], base["norm_stats"]["std"], rtol=0, atol=0)
        loss = pinball_loss(out["quantiles"], batch["targets"][:, :3], model.config.quantiles)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        for (name, _), g0, g1 in zip(model.named_parameters(), base_grads, grads):
            if g0 is None:
                assert g1 is None
                continue
            torch.testing.assert_close(g1, g0, rtol=0, atol=0, msg=f"grad of {name}, fill {value}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_independence(backend):
    model = make_model(backend=backend)
    batch = make_batch(model.config, batch=4, n_empty=1)
    full = run(model, batch)["quantiles"]
    for i in range(4):
        one = {
            "features": batch["features"][i:i + 1],
            "attention_mask": batch["attention_mask"][i:i + 1],
            "temporal_info": {k: v[i:i + 1] for k, v in batch["temporal_info"].items()},
        }
        torch.testing.assert_close(run(model, one)["quantiles"][0], full[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1.0, 1e2, 1e4])
def test_non_crossing_at_every_scale(scale):
    model = make_model()
    batch = make_batch(model.config, batch=4)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(batch["features"].shape, generator=g) * scale
    q = run(model, batch, features=feats)["quantiles"]
    assert torch.isfinite(q).all()
    assert (q.diff(dim=-1) >= 0).all()


@pytest.mark.parametrize("mode", MODES)
def test_all_padding_sample_is_finite(mode):
    model = make_model(variable_attention=mode).train()
    batch = make_batch(model.config, batch=3, n_empty=1)
    out = run(model, batch)
    assert torch.isfinite(out["quantiles"]).all()
    loss = pinball_loss(out["quantiles"], batch["targets"][:, :3], model.config.quantiles)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # also alone: a batch that is nothing but padding
    model.zero_grad()
    alone = {k: (v[2:] if torch.is_tensor(v) else v) for k, v in batch.items()}
    alone["temporal_info"] = {k: v[2:] for k, v in batch["temporal_info"].items()}
    out = run(model, alone)
    out["quantiles"].sum().backward()
    assert torch.isfinite(out["quantiles"]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("mode", MODES)
def test_sdpa_matches_reference_float64(mode):
    outs, grads = [], []
    for backend in ("reference", "sdpa"):
        model = make_model(backend=backend, variable_attention=mode).double()
        batch = make_batch(model.config, batch=4, n_empty=1)
        out = run(model, batch)
        loss = pinball_loss(out["quantiles"], batch["targets"][:, :3].double(), model.config.quantiles)
        loss.backward()
        outs.append(out["quantiles"].detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-12)
    for name, g_ref in grads[0].items():
        torch.testing.assert_close(grads[1][name], g_ref, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("mode", MODES)
def test_activation_checkpointing_same_gradients(mode):
    results = []
    for ckpt in (False, True):
        model = make_model(activation_checkpointing=ckpt, variable_attention=mode).train()
        batch = make_batch(model.config, batch=3)
        torch.manual_seed(123)  # same dropout masks; checkpoint replays the RNG state
        out = run(model, batch)
        pinball_loss(out["quantiles"], batch["targets"][:, :3], model.config.quantiles).backward()
        results.append((out["quantiles"].detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0])
    for name, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], g, rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------- persistence

def test_state_dict_round_trip(tmp_path):
    model = make_model(seed=0)
    batch = make_batch(model.config)
    expected = run(model, batch)["quantiles"]
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    other = make_model(seed=1)
    assert not torch.equal(run(other, batch)["quantiles"], expected)
    other.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(run(other, batch)["quantiles"], expected, rtol=0, atol=0)


def test_from_config_round_trip(tmp_path):
    cfg = small_config(variable_attention="pooled")
    path = tmp_path / "cfg.yaml"
    cfg.to_yaml(path)
    model = MIGT_TVDT.from_config(path)
    assert model.config == cfg == MIGTConfig.from_yaml(path)
    assert isinstance(model, migt.MIGT_TVDT)


# ---------------------------------------------------------------- bad input

def _inputs(cfg, batch=2):
    b = make_batch(cfg, batch=batch)
    return b["features"], b["attention_mask"], dict(b["temporal_info"])


def test_wrong_variable_count_names_both_numbers():
    torch.manual_seed(0)
    model = MIGT_TVDT(small_config(n_variables=24)).eval()
    feats, mask, info = _inputs(small_config(n_variables=25))
    with pytest.raises(ValueError, match=r"features has 25 variables \(last dim\).*n_variables=24"):
        model(feats, mask, info)


BAD_INPUTS = [
    ("features_2d", r"features must be 3-D \(B, T, V\); got 2-D"),
    ("features_int", r"features must be a floating-point tensor; got dtype torch.int64"),
    ("too_long", r"T=49 steps.*max_seq_len=48"),
    ("mask_float", r"attention_mask must have dtype torch.bool; got torch.float32"),
    ("mask_shape", r"attention_mask must have shape \(B, T\) = \(2, 48\).*got \(2, 47\)"),
    ("missing_key", r"temporal_info is missing key\(s\) \['day_of_year'\]"),
    ("float_calendar", r"temporal_info\['day_of_week'\] must have an integer dtype; got torch.float32"),
    ("calendar_shape", r"temporal_info\['day_of_month'\] must have shape \(2,\); got \(2, 1\)"),
    ("bar_shape", r"temporal_info\['bar_in_day'\] must have shape \(2, 48\)"),
    ("dow_range", r"day_of_week'\] must lie in \[0, 6\]; got 7"),
    ("dom_range", r"day_of_month'\] must lie in \[1, 31\]; got 0"),
    ("doy_range", r"day_of_year'\] must lie in \[1, 366\]; got 367"),
    ("bar_range", r"bar_in_day'\] must lie in \[0, 287\].*got 288"),
]


# ids: the case names (the regexes would make ids that no node id can select)
@pytest.mark.parametrize("case, match", BAD_INPUTS, ids=[case for case, _ in BAD_INPUTS])
def test_bad_input_errors(case, match):
    model = make_model()
    feats, mask, info = _inputs(model.config)
    if case == "features_2d":
        feats = feats[0]
    elif case == "features_int":
        feats = torch.zeros(feats.shape, dtype=torch.int64)
    elif case == "too_long":
        feats = torch.cat([feats, feats[:, :1]], 1)
        mask = torch.cat([mask, mask[:, :1]], 1)
    elif case == "mask_float":
        mask = mask.float()
    elif case == "mask_shape":
        mask = mask[:, :-1]
    elif case == "missing_key":
        del info["day_of_year"]
    elif case == "float_calendar":
        info["day_of_week"] = info["day_of_week"].float()
    elif case == "calendar_shape":
        info["day_of_month"] = info["day_of_month"][:, None]
    elif case == "bar_shape":
        info["bar_in_day"] = info["bar_in_day"][:, :5]
    elif case == "dow_range":
        info["day_of_week"] = torch.tensor([0, 7])
    elif case == "dom_range":
        info["day_of_month"] = torch.tensor([0, 5])
    elif case == "doy_range":
        info["day_of_year"] = torch.tensor([367, 5])
    elif case == "bar_range":
        mask = torch.ones_like(mask)
        info["bar_in_day"] = info["bar_in_day"].clone()
        info["bar_in_day"][1, 3] = 288
    with pytest.raises(ValueError, match=match):
        model(feats, mask, info)


def test_out_of_range_bar_at_padding_is_accepted():
    model = make_model()
    feats, mask, info = _inputs(model.config)
    mask = mask.clone()
    mask[0, -1] = False
    info["bar_in_day"] = info["bar_in_day"].clone()
    info["bar_in_day"][0, -1] = 99_999
    assert torch.isfinite(model(feats, mask, info)["quantiles"]).all()
