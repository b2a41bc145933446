"""Loading a trained model from a migt.train checkpoint, and every way it can be refused."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from trained_run import TINY, trained_run

from migt import MIGT_TVDT, MIGTConfig
from migt.training.checkpoint import CheckpointError, load, load_for_inference, load_model, save_atomic


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


def test_from_checkpoint_rebuilds_the_trained_model(run):
    model = MIGT_TVDT.from_checkpoint(run.out / "checkpoint.pt")
    trained = run.trainer.model
    assert not model.training and model.config == trained.config
    for name, p in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], p), name
    # Same forecasts as the trained model on real samples.
    batch = torch.utils.data.default_collate([run.trainer.train_set[i] for i in range(3)])
    trained.eval()
    with torch.no_grad():
        expected = trained(batch["features"], batch["attention_mask"], batch["temporal_info"])["quantiles"]
        got = model(batch["features"], batch["attention_mask"], batch["temporal_info"])["quantiles"]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_run_directory_resolves_to_its_best_checkpoint(run):
    loaded = load_for_inference(run.out)
    assert loaded.path.name == "checkpoint_best.pt"
    assert loaded.horizons == [3, 6, 12, 24, 48] and loaded.target_scale == 100.0
    assert loaded.data["session_open"] == "18:00" and loaded.data["test_fraction"] == 0.2


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        MIGT_TVDT.from_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="holds none of"):
        load_model(tmp_path)  # a directory without checkpoints


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_file_is_a_clear_error_naming_it(run, tmp_path, damage):
    data = (run.out / "checkpoint.pt").read_bytes()
    bad = tmp_path / f"{damage}.pt"
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 100,
                     "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=rf"checkpoint .*{damage}\.pt.* could not be read"):
        load_model(bad)


def _altered(run, tmp_path, change) -> str:
    state = load(run.out / "checkpoint.pt")
    change(state)
    path = tmp_path / "altered.pt"
    save_atomic(state, path)
    return str(path)


def test_missing_keys_are_named(run, tmp_path):
    path = _altered(run, tmp_path, lambda s: s.pop("config"))
    with pytest.raises(CheckpointError, match=r"lacks key\(s\) \['config'\]"):
        load_model(path)


def test_weights_from_another_config_are_refused(run, tmp_path):
    path = _altered(run, tmp_path, lambda s: s["config"].update(d_model=32, n_heads=4))
    with pytest.raises(CheckpointError, match=r"do not match the checkpoint.s config \(d_model=32.*shapes \(checkpoint vs config\)"):
        load_model(path)
    path = _altered(run, tmp_path, lambda s: s["config"].update(n_temporal_layers=2))
    with pytest.raises(CheckpointError, match=r"missing weights temporal_blocks\.1\."):
        load_model(path)
    path = _altered(run, tmp_path, lambda s: s["config"].update(d_model="wide"))
    with pytest.raises(CheckpointError, match="invalid config: d_model must be an int"):
        load_model(path)


def test_a_caller_config_that_differs_is_named(run):
    other = MIGTConfig(**{**TINY, "dropout": 0.2, "d_ff": 64})
    with pytest.raises(ValueError, match=r"fields differ: d_ff: checkpoint 32 vs now 64, dropout: checkpoint 0.1 vs now 0.2"):
        load_model(run.out, config=other)
    assert load_model(run.out, config=MIGTConfig(**TINY)).config == MIGTConfig(**TINY)


def test_non_finite_weights_are_refused(run, tmp_path):
    path = _altered(run, tmp_path, lambda s: s["model"]["heads.proj.weight"].fill_(float("nan")))
    with pytest.raises(CheckpointError, match=r"NaN/inf: \['heads.proj.weight'\]"):
        load_model(path)


def test_map_location_moves_the_model_and_checks_its_type(run):
    assert next(load_model(run.out, map_location="cpu").parameters()).device.type == "cpu"
    with pytest.raises(TypeError, match="map_location must be"):
        load_model(run.out, map_location=3)


def test_from_checkpoint_passes_the_callers_config_through(run):
    # the classmethod takes config= like load_model: a differing field is named
    other = dataclasses.replace(MIGT_TVDT.from_checkpoint(run.out).config, dropout=0.3)
    with pytest.raises(ValueError, match="dropout"):
        MIGT_TVDT.from_checkpoint(run.out, config=other)
