"""Error messages name the argument, what was expected and what was given,
also for inputs of the wrong type (mutmut found these messages untested)."""
import pytest
import torch

from migt import MIGTConfig, pinball_loss


@pytest.mark.parametrize(
    "quantiles,match",
    [
        ([[[0.0]]], r"quantiles must be a 3-D tensor \(B, H, Q\); got list"),
        (torch.zeros(2, 3), r"quantiles must be a 3-D tensor \(B, H, Q\); got \(2, 3\)"),
    ],
    ids=["list", "2-D"],
)
def test_pinball_loss_names_the_quantiles_it_got(quantiles, match):
    with pytest.raises(ValueError, match=match):
        pinball_loss(quantiles, torch.zeros(2, 3), [0.5])


def test_pinball_loss_names_the_targets_it_got():
    with pytest.raises(ValueError, match=r"targets must have shape \(B, H\) = \(2, 3\) to match quantiles; got list"):
        pinball_loss(torch.zeros(2, 3, 1), [[0.0] * 3] * 2, [0.5])


def test_config_from_a_non_mapping_names_its_type():
    with pytest.raises(ValueError, match=r"config must be a mapping of field names to values; got list"):
        MIGTConfig.from_dict([("d_model", 64)])


def test_empty_config_file_gives_the_seed_config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set: every field keeps its seed value\n", encoding="utf-8")
    assert MIGTConfig.from_yaml(path) == MIGTConfig()


# ---------------------------------------------------------------- config fields

@pytest.mark.parametrize(
    "field,value,match",
    [
        ("d_model", 100, r"n_heads=8 \(remainder 4\)"),
        ("time_of_day_dim", 31, r"^time_of_day_dim must be even"),
        ("dropout", "0.1", r"^dropout must be a float in \[0, 1\); got '0.1'"),
        ("revin_eps", "1e-5", r"^revin_eps must be a positive finite float; got '1e-5'"),
        ("residual_stream", "bf16", r"^residual_stream must be one of \('float32', 'autocast'\); got 'bf16'"),
        ("activation_checkpointing", "yes", r"^activation_checkpointing must be a bool; got 'yes' \(str\)"),
        ("d_model", 2.5, r"^d_model must be an int >= 1; got 2.5 \(float\)"),
    ],
    ids=["remainder", "tod-odd", "dropout-str", "eps-str", "residual-stream", "bool-str", "int-float"],
)
def test_config_field_errors_name_field_expected_and_actual(field, value, match):
    with pytest.raises(ValueError, match=match):
        MIGTConfig(**{field: value})


def test_quantile_strings_are_refused_not_converted():
    with pytest.raises(ValueError, match=r"quantiles must hold floats; got element '0.1' in \['0.1', '0.5', '0.9'\]"):
        MIGTConfig(n_quantiles=3, quantiles=["0.1", "0.5", "0.9"])


# ---------------------------------------------------------------- model input

def tiny_model_and_batch():
    from migt import MIGT_TVDT
    from migt.data import synthetic_batch

    torch.manual_seed(0)
    config = MIGTConfig(d_model=8, n_heads=2, d_ff=16, n_temporal_layers=1, n_variable_layers=1, max_seq_len=6,
                        n_variables=3, n_horizons=2, n_quantiles=3, quantiles=[0.1, 0.5, 0.9], time_of_day_dim=4,
                        day_of_week_dim=2, day_of_month_dim=2, day_of_year_dim=2, backend="reference")
    model = MIGT_TVDT(config).eval()
    batch = synthetic_batch(2, config, seed=0)
    return model, batch["features"], batch["attention_mask"], dict(batch["temporal_info"])


@pytest.mark.parametrize(
    "change,error,match",
    [
        ("features-list", TypeError, r"^features must be a torch.Tensor \(B, T, V\); got list"),
        ("features-empty-batch", ValueError, r"^features must have B >= 1 and T >= 1; got shape \(0, 6, 3\)"),
        ("mask-list", TypeError, r"^attention_mask must be a torch.Tensor \(B, T\) bool; got list"),
        ("mask-device", ValueError, r"^attention_mask is on meta but features on cpu"),
        ("info-list", TypeError, r"^temporal_info must be a dict of tensors; got list"),
        ("calendar-list", TypeError, r"^temporal_info\['day_of_week'\] must be a torch.Tensor; got list"),
        ("calendar-device", ValueError, r"^temporal_info\['day_of_week'\] is on meta but features on cpu"),
    ],
)
def test_model_input_errors_name_argument_expected_and_actual(change, error, match):
    model, feats, mask, info = tiny_model_and_batch()
    if change == "features-list":
        feats = feats.tolist()
    elif change == "features-empty-batch":
        feats, mask = feats[:0], mask[:0]
        info = {k: v[:0] for k, v in info.items()}
    elif change == "mask-list":
        mask = mask.tolist()
    elif change == "mask-device":
        mask = mask.to("meta")
    elif change == "info-list":
        info = list(info.values())
    elif change == "calendar-list":
        info["day_of_week"] = info["day_of_week"].tolist()
    elif change == "calendar-device":
        info["day_of_week"] = info["day_of_week"].to("meta")
    with pytest.raises(error, match=match):
        model(feats, mask, info)


def test_loss_refuses_a_level_of_one():
    with pytest.raises(ValueError, match=r"levels must lie strictly inside \(0, 1\); got \[0.5, 1.0\]"):
        pinball_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1), [0.5, 1.0])
