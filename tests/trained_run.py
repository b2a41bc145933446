"""One tiny trained run (migt.train on synthetic bars), shared by the forecast tests.

Training takes seconds even for the tiny model, so the run is made once per
pytest process, whichever test file asks first.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from test_train import TINY, TINY_FLAGS

from migt.train import main

SYNTHETIC_DAYS = 16
_cache: dict = {}


class TrainedRun(NamedTuple):
    out: Path         # the --out directory
    summary: dict     # migt.train's summary (val/test metrics)
    trainer: object   # the Trainer, whose model is the trained one


def trained_run(tmp_path_factory) -> TrainedRun:
    if "run" not in _cache:
        out = tmp_path_factory.mktemp("trained") / "run"
        trainer, summary = main([
            "--data", "synthetic", "--synthetic-days", str(SYNTHETIC_DAYS), *TINY_FLAGS, "--max-steps", "4",
            "--batch-size", "2", "--eval-every", "2", "--warmup-steps", "1", "--lr", "3e-3",
            "--val-fraction", "0.2", "--test-fraction", "0.2", "--out", str(out),
        ])
        _cache["run"] = TrainedRun(out, summary, trainer)
    return _cache["run"]


__all__ = ["TINY", "TINY_FLAGS", "SYNTHETIC_DAYS", "TrainedRun", "trained_run"]
