"""What ``migt.predict`` and ``migt.evaluate`` share: arguments, loading the
checkpoint and the bars, cutting the sessions as in training."""

from __future__ import annotations

import argparse
import sys
from typing import NamedTuple

import torch

from ..data.features import WARMUP_BARS
from ..train import load_data, session_open_of  # the same bar loading as training
from ..training.checkpoint import LoadedCheckpoint, load_for_inference
from ..training.distributed import resolve_device
from ..training.trainer import AMP_MODES, compile_model
from .sessions import Sessions, check_feature_names, forecast_sessions

# migt.train's defaults, used when neither the flag nor the checkpoint says otherwise.
_SYNTHETIC_DEFAULTS = {"synthetic_days": 250, "synthetic_seed": 0}


class Prepared(NamedTuple):
    loaded: LoadedCheckpoint
    model: torch.nn.Module      # on ``device``; the torch.compile wrapper with --compile
    sessions: Sessions          # every session with enough history (date range not applied)
    device: torch.device


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file, or a migt.train --out directory (checkpoint_best.pt, else checkpoint.pt)")
    p.add_argument("--data", required=True, help="bar file (.csv / .parquet) or 'synthetic'")
    p.add_argument("--synthetic-days", type=int, default=None,
                   help="with --data synthetic (default: the checkpoint's, else 250)")
    p.add_argument("--synthetic-seed", type=int, default=None, help="with --data synthetic (default: as trained)")
    p.add_argument("--session-open", default=None, help="session open 'HH:MM' (default: the one used in training)")
    p.add_argument("--timezone", default=None, help="convert tz-aware timestamps to this zone (default: as trained)")
    p.add_argument("--start", default=None, help="first session day YYYY-MM-DD (inclusive)")
    p.add_argument("--end", default=None, help="last session day YYYY-MM-DD (inclusive)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--amp", default="auto", choices=AMP_MODES, help="auto = bf16 autocast on CUDA, as in training")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (slow to start)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def _fill_from_checkpoint(args: argparse.Namespace, data_info: dict) -> None:
    """Flags left unset take the values training used (recorded in the checkpoint)."""
    for name in ("session_open", "timezone"):
        if getattr(args, name) is None:
            setattr(args, name, data_info.get(name))
    for name, default in _SYNTHETIC_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, data_info.get(name, default))


def prepare(args: argparse.Namespace) -> Prepared:
    device = resolve_device(args.device)
    loaded = load_for_inference(args.checkpoint, map_location=device)
    check_feature_names(loaded.feature_names)
    _fill_from_checkpoint(args, loaded.data)
    bars = load_data(args)
    session_open = session_open_of(args, bars)
    sessions = forecast_sessions(bars, loaded.config, loaded.horizons, session_open)
    model = compile_model(loaded.model) if args.compile else loaded.model
    return Prepared(loaded, model, sessions, device)


def report_skipped(sessions: Sessions) -> None:
    if sessions.skipped_history:
        print(f"skipped {sessions.skipped_history} session(s) with too little history (the first session "
              f"of the bars and any starting within their first {WARMUP_BARS} bars)", file=sys.stderr)
