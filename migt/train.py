"""Train MIGT-TVDT from 5-minute bars: ``python -m migt.train --data bars.csv``.

    python -m migt.train --config configs/model_config.yaml --data bars.csv --out runs/es
    python -m migt.train --data synthetic --d-model 32 --max-steps 200 --out runs/tiny
    torchrun --nproc_per_node 8 -m migt.train --data bars.parquet --out runs/es   # DDP

Steps: bars (CSV/Parquet, or the seeded synthetic generator) -> 24 features ->
one sample per session -> chronological train/validation/test split with a
purge gap -> Trainer (pinball loss, AdamW, warm-up + cosine, clipping, bf16
autocast on CUDA, checkpoints in --out, exact --resume) -> test metrics,
printed as JSON and written to <out>/summary.json. See docs/training.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import yaml

from .config import MIGTConfig
from .data.bars import infer_session_open, load_bars, parse_time_of_day, synthetic_bars
from .data.dataset import BarDayDataset, chronological_split
from .data.features import N_FEATURES
from .training import Trainer, TrainOptions, barrier, init_distributed, shutdown_distributed

# Shorthand flags -> config fields, for tiny runs without a YAML file.
_CONFIG_FLAGS = {
    "d_model": int, "n_heads": int, "d_ff": int, "n_temporal_layers": int,
    "n_variable_layers": int, "dropout": float, "backend": str,
}


# TrainOptions' booleans, given as on/off switches rather than typed values.
_SWITCHES = ("progress", "compile")


class RunResult(NamedTuple):
    trainer: Trainer
    summary: dict


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m migt.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, help="bar file (.csv / .parquet) or 'synthetic'")
    data.add_argument("--synthetic-days", type=int, default=250, help="sessions of synthetic bars")
    data.add_argument("--synthetic-seed", type=int, default=0)
    data.add_argument("--session-open", default=None, help="session open 'HH:MM' (default: inferred)")
    data.add_argument("--timezone", default=None, help="convert tz-aware timestamps to this zone")
    data.add_argument("--val-fraction", type=float, default=0.15)
    data.add_argument("--test-fraction", type=float, default=0.15)

    model = p.add_argument_group("model")
    model.add_argument("--config", default=None,
                       help="model config YAML (default: the seed values of configs/model_config.yaml)")
    model.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                       help="set a config field (value parsed as YAML); repeatable")
    for field, kind in _CONFIG_FLAGS.items():
        model.add_argument("--" + field.replace("_", "-"), type=kind, default=None, help=f"config.{field}")

    opt = p.add_argument_group("training")
    defaults = TrainOptions()
    for f in dataclasses.fields(TrainOptions):
        if f.name in _SWITCHES:
            continue
        opt.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                         default=getattr(defaults, f.name))
    opt.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    opt.add_argument("--compile", action="store_true",
                     help="torch.compile the model (slow to start, fastest on CUDA)")
    opt.add_argument("--device", default="auto", help="auto | cpu | cuda")
    opt.add_argument("--out", default="runs/migt", help="directory for checkpoints and logs")
    opt.add_argument("--resume", default=None, help="checkpoint to resume from, or 'auto' (<out>/checkpoint.pt if present)")
    return p


def build_config(args: argparse.Namespace) -> MIGTConfig:
    base = MIGTConfig() if args.config is None else MIGTConfig.from_yaml(args.config)
    values = base.to_dict()
    for field in _CONFIG_FLAGS:
        if getattr(args, field) is not None:
            values[field] = getattr(args, field)
    for item in args.override:
        if "=" not in item:
            raise ValueError(f"--override expects KEY=VALUE; got {item!r}")
        key, raw = item.split("=", 1)
        values[key.strip()] = yaml.safe_load(raw)
    return MIGTConfig.from_dict(values)


def load_data(args: argparse.Namespace):
    if args.data == "synthetic":
        return synthetic_bars(args.synthetic_days, seed=args.synthetic_seed)
    return load_bars(args.data, timezone=args.timezone)


def session_open_of(args: argparse.Namespace, bars) -> str:
    """--session-open, or the one inferred from the bars, as "HH:MM"."""
    value = args.session_open if args.session_open is not None else infer_session_open(bars["timestamp"])
    return parse_time_of_day(value).strftime("%H:%M")


def main(argv: Sequence[str] | None = None) -> RunResult:
    args = build_parser().parse_args(argv)
    ctx = init_distributed(args.device)
    trainer = None
    try:
        config = build_config(args)
        if config.n_variables != N_FEATURES:
            raise ValueError(
                f"config n_variables={config.n_variables} but the feature pipeline produces {N_FEATURES}; "
                f"set n_variables: {N_FEATURES}"
            )
        bars = load_data(args)
        session_open = session_open_of(args, bars)
        dataset = BarDayDataset.from_bars(bars, config, session_open=session_open)
        train_set, val_set, test_set = chronological_split(dataset, args.val_fraction, args.test_fraction)
        options = TrainOptions(**{
            f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions) if f.name not in _SWITCHES
        }, progress=not args.no_progress, compile=args.compile)
        out = Path(args.out)
        # What predict/evaluate need to cut the same sessions and the same split.
        data_info = {"source": str(args.data), "session_open": session_open, "timezone": args.timezone,
                     "val_fraction": args.val_fraction, "test_fraction": args.test_fraction}
        if args.data == "synthetic":
            data_info.update(synthetic_days=args.synthetic_days, synthetic_seed=args.synthetic_seed)
        trainer = Trainer(config, train_set, val_set, options, ctx=ctx, out_dir=out, data_info=data_info)
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            config.to_yaml(out / "config.yaml")
            (out / "train_options.json").write_text(json.dumps(dataclasses.asdict(options), indent=2))
            print(f"sessions: train {len(train_set)}, val {len(val_set)}, test {len(test_set)}; "
                  f"{ctx.world_size} process(es) on {ctx.device}", file=sys.stderr)

        resume = args.resume
        if resume == "auto":
            resume = out / "checkpoint.pt" if (out / "checkpoint.pt").exists() else None
        if resume is not None:
            trainer.load_checkpoint(resume)

        trainer.fit()
        summary = {"step": trainer.step, "units": f"log return x {options.target_scale:g}"}
        for name, split in (("val", val_set), ("test", test_set)):
            if len(split):
                summary[name] = trainer.evaluate(split)
        if ctx.is_main:
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            print(json.dumps(summary, indent=2))
        # every rank leaves its last collective before any tears the group
        # down: gloo aborts a process whose peer vanished mid-connection
        barrier(ctx)
        return RunResult(trainer, summary)
    finally:
        if trainer is not None:
            trainer.release_distributed()
        shutdown_distributed()


if __name__ == "__main__":
    main()
