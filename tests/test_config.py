"""MIGTConfig: seed defaults, YAML round trip, and one clear error per bad field."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from migt import MIGTConfig

SEED_YAML = Path(__file__).resolve().parents[1] / "configs" / "model_config.yaml"


def test_defaults_match_seed_yaml():
    seed = yaml.safe_load(SEED_YAML.read_text())
    cfg = MIGTConfig.from_yaml(SEED_YAML)
    for key, value in seed.items():
        assert getattr(cfg, key) == value, key
    # Dataclass defaults are the seed values too.
    assert MIGTConfig().to_dict() == cfg.to_dict()
    assert cfg.revin_eps == 1e-5 and cfg.bars_per_day == 288
    assert cfg.head_dim == 32 and cfg.positional_dim == 96


def test_yaml_round_trip(tmp_path):
    cfg = MIGTConfig(d_model=48, n_heads=6, quantiles=[0.2, 0.5, 0.8], n_quantiles=3,
                     variable_attention="pooled", activation_checkpointing=True, backend="reference")
    path = tmp_path / "cfg.yaml"
    cfg.to_yaml(path)
    again = MIGTConfig.from_yaml(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert isinstance(again.to_dict()["quantiles"], list)


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SEED_YAML.read_text() + "\nn_layer: 3\n")
    with pytest.raises(ValueError, match=r"unknown config key.*n_layer"):
        MIGTConfig.from_yaml(path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_model=100, n_heads=8), r"d_model must be divisible by n_heads.*d_model=100.*n_heads=8"),
        (dict(d_model=0), r"d_model must be an int >= 1; got 0"),
        (dict(n_heads=2.0), r"n_heads must be an int"),
        (dict(d_ff=True), r"d_ff must be an int"),
        (dict(n_variables=-3), r"n_variables must be an int >= 1; got -3"),
        (dict(n_temporal_layers=-1), r"n_temporal_layers must be an int >= 0"),
        (dict(max_seq_len=0), r"max_seq_len"),
        (dict(bars_per_day=0), r"bars_per_day"),
        (dict(dropout=1.0), r"dropout must be a float in \[0, 1\); got 1.0"),
        (dict(attn_dropout=-0.1), r"attn_dropout must be a float in \[0, 1\)"),
        (dict(quantiles=[0.1, 0.5, 0.4, 0.6, 0.7, 0.8, 0.9]), r"strictly increasing; got 0.5 then 0.4"),
        (dict(quantiles=[0.5, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]), r"strictly increasing"),
        (dict(quantiles=[0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]), r"strictly inside \(0, 1\); got 0.0"),
        (dict(quantiles=[0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]), r"strictly inside \(0, 1\); got 1.0"),
        (dict(quantiles=[0.1, 0.5, 0.9]), r"n_quantiles=7 entries; got 3"),
        (dict(quantiles="0.5"), r"quantiles must be a sequence"),
        (dict(time_of_day_dim=31), r"time_of_day_dim must be even.*got 31"),
        (dict(variable_attention="both"), r"variable_attention must be one of .*'per_step'.*got 'both'"),
        (dict(backend="cuda"), r"backend must be one of .*got 'cuda'"),
        (dict(activation_checkpointing="yes"), r"activation_checkpointing must be a bool"),
        (dict(revin_eps=0.0), r"revin_eps must be a positive"),
    ],
    ids=lambda x: "-".join(f"{k}" for k in x) if isinstance(x, dict) else None,
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MIGTConfig(**kwargs)


def test_invalid_yaml_value_names_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("d_model: 30\nn_heads: 8\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*d_model must be divisible by n_heads"):
        MIGTConfig.from_yaml(path)
