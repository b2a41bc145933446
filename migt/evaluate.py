"""Evaluation report of a trained model: ``python -m migt.evaluate``.

    python -m migt.evaluate --checkpoint runs/es --data bars.csv --out runs/es/eval
    python -m migt.evaluate --checkpoint runs/es --data bars.csv --split all --start 2024-01-01 --out eval

Scores the model on the sessions of one split (by default the test split,
cut as in training: same session open, fractions and purge) against two
baselines on the same sessions: the unconditional quantiles of the training
split's targets and a rolling-volatility Gaussian. Writes to --out:
metrics.json (pinball per horizon and level, 50%/90% coverage vs nominal,
calibration, CRPS from the quantiles), forecasts.csv (the scored forecasts)
and three PNG plots: calibration.png, fan_chart.png (the last week),
loss_per_horizon.png. All scores are in the training units (log return x
target_scale), so the model's "loss" equals summary.json's for that split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from .data.dataset import chronological_split
from .forecast.baselines import DEFAULT_VOL_WINDOW, gaussian_quantiles, rolling_volatility, unconditional_quantiles
from .forecast.cli import add_common_arguments, prepare, report_skipped
from .forecast.inference import predict_quantiles
from .forecast.plots import plot_calibration, plot_fan_chart, plot_loss_per_horizon
from .forecast.scores import CRPS_APPROXIMATION, score_quantiles
from .forecast.sessions import Sessions
from .forecast.table import forecast_table, write_table

SPLITS = ("train", "val", "test", "all")
MODEL_NAME = "migt"
FAN_DAYS = 7  # the fan chart shows the sessions of the last week


class EvaluateResult(NamedTuple):
    report: dict
    out_dir: Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m migt.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--out", required=True, help="directory for metrics.json, forecasts.csv and the plots")
    p.add_argument("--split", default="test", choices=SPLITS, help="sessions to score (--start/--end narrow them)")
    p.add_argument("--val-fraction", type=float, default=None, help="as in training (default: the checkpoint's)")
    p.add_argument("--test-fraction", type=float, default=None, help="as in training (default: the checkpoint's)")
    p.add_argument("--vol-window", type=int, default=DEFAULT_VOL_WINDOW,
                   help="bars of the rolling-volatility baseline")
    return p


def split_sessions(sessions: Sessions, val_fraction: float, test_fraction: float) -> dict[str, Sessions]:
    """{train, val, test, all}: ``chronological_split`` of the sessions with known targets."""
    known = sessions.subset(np.flatnonzero(sessions.known))
    position = {int(i): k for k, i in enumerate(known.dataset.indices)}
    parts = chronological_split(known.dataset, val_fraction, test_fraction)
    out = {name: known.subset([position[int(i)] for i in part.indices])
           for name, part in zip(("train", "val", "test"), parts)}
    out["all"] = known
    return out


def realised_paths(sessions: Sessions, n_bars: int, scale: float) -> list[np.ndarray]:
    """Per session, the cumulative log return 0..n_bars bars after its last bar (x scale)."""
    log_close = np.log(sessions.bars["close"].to_numpy(np.float64))
    return [scale * (log_close[a:a + n_bars + 1] - log_close[a]) for a in sessions.anchor_row]


def main(argv: Sequence[str] | None = None) -> EvaluateResult:
    args = build_parser().parse_args(argv)
    prepared = prepare(args)
    loaded = prepared.loaded
    fractions = {name: getattr(args, name) if getattr(args, name) is not None else loaded.data.get(name, 0.15)
                 for name in ("val_fraction", "test_fraction")}
    splits = split_sessions(prepared.sessions, fractions["val_fraction"], fractions["test_fraction"])
    report_skipped(prepared.sessions)
    unknown = len(prepared.sessions) - len(splits["all"])
    if unknown:
        print(f"left out {unknown} latest session(s) whose targets lie past the end of the bars", file=sys.stderr)
    chosen = splits[args.split].in_range(args.start, args.end)
    if len(chosen) == 0:
        raise SystemExit(f"no session to score in split {args.split!r}"
                         + (f" between {args.start} and {args.end}" if args.start or args.end else ""))
    print(f"scoring {len(chosen)} session(s) of split {args.split!r} on {prepared.device}", file=sys.stderr)

    levels, horizons, scale = list(loaded.config.quantiles), list(loaded.horizons), loaded.target_scale
    log_q = predict_quantiles(prepared.model, chosen.dataset, target_scale=scale, batch_size=args.batch_size,
                              device=prepared.device, amp=args.amp, progress=not args.no_progress)
    targets = scale * chosen.targets
    forecasts = {
        MODEL_NAME: scale * log_q,
        "unconditional": unconditional_quantiles(scale * splits["train"].targets, levels, len(chosen)),
        "rolling_vol_gaussian": scale * gaussian_quantiles(
            rolling_volatility(chosen.bars["close"].to_numpy(), chosen.anchor_row, args.vol_window),
            horizons, levels),
    }
    results = {name: score_quantiles(q, targets, levels) for name, q in forecasts.items()}

    days = np.datetime_as_string(chosen.days, unit="D")
    units = f"log return x {scale:g}"
    report = {
        "checkpoint": str(loaded.path), "step": loaded.step, "data": str(args.data), "split": args.split,
        "date_range": [args.start, args.end], "sessions": [days[0], days[-1]], "n_sessions": len(chosen),
        "skipped_too_little_history": prepared.sessions.skipped_history, "left_out_unknown_targets": unknown,
        "units": units, "levels": levels, "horizons_bars": horizons, "split_fractions": fractions,
        "crps_approximation": CRPS_APPROXIMATION,
        "baselines": {
            "unconditional": f"per-horizon empirical quantiles of the {len(splits['train'])} train-split targets",
            "rolling_vol_gaussian": f"N(0, sigma^2 h), sigma = std of the last {args.vol_window} bar log returns",
        },
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    write_table(forecast_table(chosen, log_q, levels), out / "forecasts.csv")
    plot_calibration(results[MODEL_NAME], levels, horizons, units, out / "calibration.png")
    week = np.flatnonzero(chosen.days > chosen.days[-1] - np.timedelta64(FAN_DAYS, "D"))
    plot_fan_chart(days[week], forecasts[MODEL_NAME][week], realised_paths(chosen.subset(week), max(horizons), scale),
                   targets[week], levels, horizons, units, out / "fan_chart.png")
    plot_loss_per_horizon(results, horizons, units, out / "loss_per_horizon.png")

    summary = {name: {"loss": r["loss"], "crps": r["crps"],
                      **{k: r[k]["observed"] for k in ("coverage_50", "coverage_90") if k in r}}
               for name, r in results.items()}
    print(json.dumps({"units": units, "n_sessions": len(chosen), "results": summary}, indent=2))
    print(f"wrote metrics.json, forecasts.csv, calibration.png, fan_chart.png, loss_per_horizon.png to {out}",
          file=sys.stderr)
    return EvaluateResult(report, out)


if __name__ == "__main__":
    main()
