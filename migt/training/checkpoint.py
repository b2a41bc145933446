"""RNG state capture/restore and atomic checkpoint files.

A checkpoint is a dict saved with torch.save: model, optimizer, scheduler,
step, config (dict), train options (dict), rng (one entry per rank, so a
multi-process run resumes each rank's dropout stream), plus metadata
(feature names, horizons, target scale). Writing goes to a temporary file
renamed into place, so an interrupted save never leaves a truncated file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


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
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_atomic(obj: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    # Our own files: they hold numpy RNG state and python tuples, not only tensors.
    return torch.load(path, map_location="cpu", weights_only=False)
