"""`python -m bench`: run the suites, append rows, print a table, draw plots.

Exit status 1 when any case ended in an error (OOM and skips are results,
not errors), else 0.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

import torch

from bench import max_batch, plots, results, suite_attention, suite_ceilings, suite_model, suite_norms
from bench.common import DEFAULT_CONFIG, DTYPES, RunSettings
from bench.harness import REPO_ROOT, Budget, Timer, environment, fill_ratios, run_case

SUITES = {
    "model": suite_model,
    "attention": suite_attention,
    "norms": suite_norms,
    "ceilings": suite_ceilings,
}
DEFAULT_SUITES = ("model", "attention", "norms")
ALL_BACKENDS = tuple(dict.fromkeys(
    suite_model.BACKENDS + suite_attention.BACKENDS + suite_norms.BACKENDS))
COMPILED_BACKENDS = ("compile", "compile_triton", "flex")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", nargs="+", choices=tuple(SUITES), default=list(DEFAULT_SUITES))
    p.add_argument("--batch-sizes", nargs="+", type=int,
                   help="default 64 128 (quick: 1 2 on a CPU, 8 16 on a GPU)")
    p.add_argument("--dtype", nargs="+", choices=tuple(DTYPES), dest="dtypes",
                   help="fp32, bf16 (the model: bf16 autocast), fp16; default bf16 on CUDA, fp32 on a CPU")
    p.add_argument("--backends", nargs="+", choices=ALL_BACKENDS,
                   help="default all; each suite runs the ones it has")
    p.add_argument("--ops", nargs="+", help="only these ops (e.g. train_step train_step_pooled); default all")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="default bench/results/")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default cuda when available")
    quick = p.add_mutually_exclusive_group()
    quick.add_argument("--quick", action="store_true", help="small batches, few repeats (automatic on a CPU)")
    quick.add_argument("--no-quick", action="store_true", help="full sizes even on a CPU")
    p.add_argument("--seq-len", type=int, help="T (default 288; the model suite uses 48 in a CPU quick run)")
    p.add_argument("--warmup", type=int, help="warm-up calls (default 3, quick 1)")
    p.add_argument("--repeats", type=int, help="timed calls (default 10, quick 3)")
    p.add_argument("--time-budget", type=float, help="seconds; cases after it are 'skipped: time budget' rows")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="model config (default configs/model_config.yaml)")
    p.add_argument("--threads", type=int, help="CPU threads (default 1 in a CPU quick run, else torch's default)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--max-batch", action="store_true",
                   help="instead of the suites: the largest batch whose training step runs, per backend "
                        "(triton, sdpa; --backends to choose), each try in a fresh process (bench/max_batch.py)")
    p.add_argument("--max-batch-start", type=int, default=None, help="first batch tried (default 8 on CUDA, 1 on a CPU)")
    p.add_argument("--max-batch-limit", type=int,
                   help="largest batch tried (default 4096 on CUDA; 16 on a CPU, where running out of "
                        "memory means the kernel's OOM killer, not an exception)")
    return p.parse_args(argv)


def settings_from(args) -> tuple:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    on_cpu = device.type == "cpu"
    quick = args.quick or (on_cpu and not args.no_quick)
    if on_cpu:
        # A CPU quick run defaults to one thread: on a shared 2-core machine
        # two threads made every small backward stall ~100 ms (torch 2.13),
        # which swamped the numbers.
        torch.set_num_threads(args.threads or (1 if quick else torch.get_num_threads()))
    if quick:
        batch_sizes = (1, 2) if on_cpu else (8, 16)
    else:
        batch_sizes = (64, 128)
    left_out = {}
    if quick and on_cpu and not args.backends:
        for name in COMPILED_BACKENDS:
            left_out[name] = (f"{name} is left out of a CPU --quick run (compiling takes minutes "
                              f"on a few cores); name it in --backends to run it")
    settings = RunSettings(
        device=device,
        batch_sizes=tuple(args.batch_sizes or batch_sizes),
        dtypes=tuple(args.dtypes or (("fp32",) if on_cpu else ("bf16",))),
        backends=tuple(args.backends or ALL_BACKENDS),
        seq_len=args.seq_len or 288,
        model_seq_len=args.seq_len or (48 if quick and on_cpu else 288),
        config_path=args.config,
        left_out=left_out,
    )
    timer = Timer(device, warmup=args.warmup or (1 if quick else 3), repeats=args.repeats or (3 if quick else 10))
    return settings, timer, quick


def _cost_rank(suite: str, backend: str) -> int:
    """Cheap cases first, so a time budget cuts the compiled ones (each first
    call compiles: tens of seconds) rather than the kernels' rows."""
    if backend == "flex":
        return 1
    if backend in ("compile", "compile_triton"):
        return 3 if suite == "model" else 2
    return 0


@contextlib.contextmanager
def _stop_on_sigterm():
    """`timeout` sends SIGTERM: stop like Ctrl-C, so the rows done are kept."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_cases(suites, settings, timer, budget, env, quick, ops=None) -> list:
    """Rows of every case of the suites (of `ops` only, when given), cheap
    cases first; ratios filled per suite."""
    from tqdm import tqdm

    cases = [case for name in suites for case in SUITES[name].cases(settings)]
    unknown = sorted(set(ops or ()) - {c.op for c in cases})
    if unknown:
        raise SystemExit(f"--ops: {unknown} are not ops of the suites {list(suites)}; "
                         f"they have {sorted({c.op for c in cases})}")
    cases = [case for case in cases if not ops or case.op in ops]
    cases.sort(key=lambda c: _cost_rank(c.suite, c.backend))  # stable: suite order kept within a rank
    rows = []
    bar = tqdm(cases, desc="bench", unit="case", mininterval=1.0, file=sys.stderr)
    try:
        for case in bar:
            bar.set_postfix_str(f"{case.suite} {case.op} {case.backend} {case.dtype} B={case.batch}", refresh=False)
            rows.append({**env, "quick": quick, **run_case(case, timer, budget)})
    except KeyboardInterrupt:
        print(f"\ninterrupted: keeping the {len(rows)} rows done", file=sys.stderr)
    finally:
        bar.close()
    rows.sort(key=lambda r: list(suites).index(r["suite"]))
    fill_ratios(rows)
    suite_norms.fill_copy_fraction(rows)
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    settings, timer, quick = settings_from(args)
    env = environment(settings.device)
    budget = Budget(args.time_budget)
    command = "python -m bench" + ("" if not argv else " " + " ".join(argv))
    print(f"{command}\ndevice {env['device']}, torch {env['torch']}, triton {env['triton']}, "
          f"git {env['git_commit']}, batch sizes {settings.batch_sizes}, dtypes {settings.dtypes}"
          + (", quick" if quick else ""), flush=True)

    if args.max_batch:
        return _max_batch(args, settings, env, command)
    with _stop_on_sigterm():
        all_rows = run_cases(args.suites, settings, timer, budget, env, quick, args.ops)
    results.append_rows(all_rows, args.out, env["device_slug"])
    report = suite_model.memory_report(all_rows)
    for name in args.suites if not args.no_plots else ():
        path = plots.plot_suite(all_rows, name, args.out / f"{env['device_slug']}-{name}.png",
                                title=f"{name} suite, {env['device']}")
        if path:
            print(f"plot: {path}")

    latest = results.write_latest(all_rows, args.out, env["device_slug"], command, report)
    print()
    print(results.table(all_rows))
    for line in report:
        print(line)
    print(f"\nrows appended to {args.out / (env['device_slug'] + '.jsonl')}; this run's table in {latest}")
    errors = [r for r in all_rows if r["status"].startswith("error")]
    for r in errors:
        print(f"ERROR {r['suite']} {r['op']} {r['backend']} {r['dtype']} B={r['batch']}: {r['status']}", file=sys.stderr)
    return 1 if errors else 0


def _max_batch(args, settings, env, command) -> int:
    """`--max-batch`: rows appended like the suites', table in <slug>-max-batch.md."""
    cuda = settings.device.type == "cuda"
    start = args.max_batch_start or (8 if cuda else 1)
    limit = args.max_batch_limit or (4096 if cuda else 16)
    with _stop_on_sigterm():
        rows = [{**env, "quick": False, **row}
                for row in max_batch.run(settings, start=start, limit=limit, ops=args.ops)]
    results.append_rows(rows, args.out, env["device_slug"])
    text = results.table(rows)
    for r in rows:
        e = r["extra"]
        text += (f"\n{r['backend']} {r['op']} {r['dtype']}: largest batch that ran {r['batch'] or 'none'}"
                 + (f" (limit {e['limit']} reached)" if e["limit_reached"] else
                    f"; B={e['first_failing']}: {e['first_failing_status']}"))
    path = args.out / f"{env['device_slug']}-max-batch.md"
    path.write_text(f"Made by `{command}` on {env['device']} at {env['timestamp']}, git {env['git_commit']}.\n\n"
                    + results.table(rows, markdown=True) + "\n\n```\n" + text + "\n```\n", encoding="utf-8")
    print(text)
    print(f"\nrows appended to {args.out / (env['device_slug'] + '.jsonl')}; table in {path}")
    return 1 if any(r["status"].startswith("error") for r in rows) else 0
