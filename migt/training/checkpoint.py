"""Checkpoint files: atomic saving, checked loading, RNG state capture/restore.

A checkpoint is a dict saved with torch.save: model, optimizer, scheduler,
step, config (dict), train options (dict), rng (one entry per rank, so a
multi-process run resumes each rank's dropout stream), plus metadata
(feature names, horizons, target scale, and ``data``: how the sessions were
cut and split). Writing goes to a temporary file renamed into place, so an
interrupted save never leaves a truncated file.

Loading goes through ``load``: tensors plus the few numpy types of the RNG
state are allowed (torch's ``weights_only`` unpickler), so a file cannot run
code, and an unreadable file is a ``CheckpointError`` naming it.
``load_model`` / ``load_for_inference`` rebuild the trained model and check
the config against the weights (and against a config the caller expects).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import torch

# Names ``migt.train`` writes in its --out directory; a directory given to the
# loaders resolves to the first that exists.
CHECKPOINT_NAMES = ("checkpoint_best.pt", "checkpoint.pt")
# Keys a checkpoint needs before a model can be rebuilt and used for forecasts.
INFERENCE_KEYS = ("model", "config", "target_scale", "horizons", "feature_names")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, incomplete or inconsistent."""


class LoadedCheckpoint(NamedTuple):
    """A trained model in eval mode and what is needed to read its outputs."""

    model: Any               # MIGT_TVDT, on the requested device
    config: Any              # MIGTConfig
    path: Path               # the file that was read
    target_scale: float      # model outputs are log returns x target_scale
    horizons: list[int]      # bars ahead of each output horizon
    feature_names: list[str]
    step: int | None
    data: dict               # how the training sessions were cut and split ({} if not recorded)


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_atomic(obj: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _numpy_rng_globals() -> list:
    """The numpy objects inside ``np.random.get_state()`` (a uint32 array)."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def resolve_path(path: str | Path) -> Path:
    """A checkpoint file, or a ``migt.train`` output directory (its best checkpoint,
    else its latest). FileNotFoundError naming what was looked for."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"checkpoint directory {str(path)!r} holds none of {list(CHECKPOINT_NAMES)}; "
            "pass a checkpoint file or a migt.train --out directory"
        )
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return path


def load(path: str | Path) -> dict:
    """The checkpoint dict at ``path`` (a file or a run directory), on the CPU."""
    path = resolve_path(path)
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... by damage kind
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be read: it is truncated, corrupted or not a "
            f"migt checkpoint ({type(err).__name__}: {first_line[:300]})"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, expected a dict")
    return state


def config_differences(saved: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """'field: checkpoint X vs now Y' for every config field whose values differ."""
    keys = sorted(set(saved) | set(mine))
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {mine.get(k)!r}" for k in keys if saved.get(k) != mine.get(k)]


def _weight_mismatches(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps ``found`` weights from loading into a model with ``expected`` ones."""
    def listed(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")

    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        problems.append(f"missing weights {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected weights {listed(unexpected)}")
    shapes = [
        f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and isinstance(found[k], torch.Tensor) and found[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"shapes (checkpoint vs config) {listed(shapes)}")
    return problems


def _check_device(map_location) -> torch.device | None:
    if map_location is None:
        return None
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    raise TypeError(
        f"map_location must be None, a device name or a torch.device; got {type(map_location).__name__}"
    )


def load_for_inference(path: str | Path, map_location=None, *, config=None) -> LoadedCheckpoint:
    """Rebuild the trained model of a ``migt.train`` checkpoint, checked.

    path: a checkpoint file or a run directory (``CHECKPOINT_NAMES``).
    map_location: None (the CPU) or the device to put the model on.
    config: a MIGTConfig the caller expects; any field that differs from the
        checkpoint's is an error naming the fields.
    Errors: FileNotFoundError (no file), CheckpointError (unreadable file,
    missing keys, an invalid config, weights that do not fit the config or are
    not finite), ValueError (``config`` differs).
    """
    from ..config import MIGTConfig  # migt.model imports this module lazily
    from ..model import MIGT_TVDT

    device = _check_device(map_location)
    path = resolve_path(path)
    state = load(path)
    missing = [k for k in INFERENCE_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {str(path)!r} lacks key(s) {missing}; a migt.train checkpoint has "
            f"{list(INFERENCE_KEYS)} (found {sorted(state)})"
        )
    try:
        saved_config = MIGTConfig.from_dict(state["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} holds an invalid config: {err}") from err
    if config is not None:
        if not isinstance(config, MIGTConfig):
            raise TypeError(f"config must be a MIGTConfig or None; got {type(config).__name__}")
        differ = config_differences(saved_config.to_dict(), config.to_dict())
        if differ:
            raise ValueError(
                f"checkpoint {str(path)!r} was trained with a different config; fields differ: " + ", ".join(differ)
            )

    model = MIGT_TVDT(saved_config)
    weights = state["model"]
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r}: 'model' holds a {type(weights).__name__}, expected a state dict")
    problems = _weight_mismatches(model.state_dict(), weights)
    if problems:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: the weights do not match the checkpoint's config "
            f"(d_model={saved_config.d_model}, layers {saved_config.n_temporal_layers}+"
            f"{saved_config.n_variable_layers}): " + "; ".join(problems)
        )
    bad = [k for k, v in weights.items()
           if not isinstance(v, torch.Tensor) or (v.is_floating_point() and not bool(torch.isfinite(v).all()))]
    if bad:
        raise CheckpointError(f"checkpoint {str(path)!r}: weights that are not tensors or hold NaN/inf: {bad[:5]}")
    model.load_state_dict(weights)
    model.eval()
    if device is not None:
        model.to(device)
    return LoadedCheckpoint(
        model=model, config=saved_config, path=path, target_scale=float(state["target_scale"]),
        horizons=[int(h) for h in state["horizons"]], feature_names=list(state["feature_names"]),
        step=state.get("step"), data=dict(state.get("data") or {}),
    )


def load_model(path: str | Path, map_location=None, *, config=None):
    """The trained MIGT_TVDT (eval mode) of a checkpoint; see ``load_for_inference``."""
    return load_for_inference(path, map_location, config=config).model
