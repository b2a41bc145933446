"""The config file MIGTConfig.to_yaml writes (train runs save one next to the
checkpoints): fields in the dataclass's order, like configs/model_config.yaml,
so a person reading it finds d_model first, not sorted away."""
import dataclasses

import yaml

from migt import MIGTConfig


def test_to_yaml_keeps_the_field_order(tmp_path):
    path = tmp_path / "config.yaml"
    MIGTConfig().to_yaml(path)
    written = list(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert written == [f.name for f in dataclasses.fields(MIGTConfig) if f.init]
    assert written != sorted(written)  # the check above would not see sort_keys=True otherwise
