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
