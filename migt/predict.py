"""Quantile forecasts of a trained model: ``python -m migt.predict``.

    python -m migt.predict --checkpoint runs/es --data bars.csv --out forecasts.csv
    python -m migt.predict --checkpoint runs/es/checkpoint.pt --data bars.parquet \\
        --start 2024-03-01 --end 2024-03-31 --out march.parquet --device cuda

One row per session and horizon: the forecast origin (the session's last bar)
and its close, the horizon in bars, the 7 quantiles of the log return from
that close (``logret_q05`` ... ``logret_q95``) and the same as price levels
(``price_q05`` ...), and the realised return and price where the bars already
hold them (NaN for the latest sessions). Sessions with too little indicator
history are skipped, with a printed count. See docs/training.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import pandas as pd

from .forecast.cli import add_common_arguments, prepare, report_skipped
from .forecast.inference import predict_quantiles
from .forecast.table import check_out_path, forecast_table, write_table


class PredictResult(NamedTuple):
    table: pd.DataFrame
    path: Path
    skipped_history: int


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m migt.predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_arguments(p)
    p.add_argument("--out", required=True, help="output table: .csv, or .parquet (needs pyarrow or fastparquet)")
    return p


def main(argv: Sequence[str] | None = None) -> PredictResult:
    args = build_parser().parse_args(argv)
    check_out_path(args.out)  # before any work: loading and forecasting can take minutes
    prepared = prepare(args)
    sessions = prepared.sessions.in_range(args.start, args.end)
    report_skipped(sessions)
    if len(sessions) == 0:
        raise SystemExit("no session to forecast (check --start/--end and the bars' dates)")
    print(f"forecasting {len(sessions)} session(s) on {prepared.device}", file=sys.stderr)
    log_q = predict_quantiles(
        prepared.model, sessions.dataset, target_scale=prepared.loaded.target_scale,
        batch_size=args.batch_size, device=prepared.device, amp=args.amp, progress=not args.no_progress,
    )
    table = forecast_table(sessions, log_q, prepared.loaded.config.quantiles)
    path = write_table(table, args.out)
    print(f"wrote {len(table)} rows ({len(sessions)} sessions x {len(sessions.horizons)} horizons) to {path}",
          file=sys.stderr)
    return PredictResult(table, path, sessions.skipped_history)


if __name__ == "__main__":
    main()
