"""`python -m bench --max-batch`: the doubling-then-bisection search, and one
real run on the CPU (tiny config, each try in its own process)."""
from __future__ import annotations

import json

import pytest

from bench import cli, max_batch
from bench_tiny import tiny_config_path


def _fits_below(first_bad, status="OOM"):
    return lambda batch: max_batch.Try(batch, "ok" if batch < first_bad else status)


def test_search_doubles_then_bisects_to_an_eighth():
    good, bad, tries = max_batch.search(_fits_below(301), start=8, limit=4096)
    assert [t.batch for t in tries] == [8, 16, 32, 64, 128, 256, 512, 384, 320, 288]
    assert (good, bad) == (288, 320)  # gap 32 <= 288 // 8


def test_search_treats_a_kernel_error_like_oom():
    # sdpa on the H200: B=192 ran, B=256 failed inside cuDNN with memory to spare
    good, bad, tries = max_batch.search(_fits_below(256, "error: RuntimeError: cuDNN"), start=64, limit=4096)
    assert (good, bad) == (240, 256)
    assert tries[2].status.startswith("error")


def test_search_stops_at_the_limit_and_when_nothing_runs():
    good, bad, tries = max_batch.search(_fits_below(10**6), start=3, limit=20)
    assert (good, bad) == (20, None) and [t.batch for t in tries] == [3, 6, 12, 20]
    good, bad, tries = max_batch.search(_fits_below(1), start=4, limit=20)
    assert (good, bad, len(tries)) == (None, 4, 1)
    with pytest.raises(ValueError, match="start=0, limit=8"):
        max_batch.search(_fits_below(1), start=0, limit=8)


def test_max_batch_on_the_cpu_with_a_tiny_config(tmp_path, capsys):
    code = cli.main(["--max-batch", "--device", "cpu", "--config", str(tiny_config_path(tmp_path)),
                     "--seq-len", "8", "--backends", "sdpa", "--max-batch-limit", "2", "--out", str(tmp_path)])
    assert code == 0
    [row] = [json.loads(line) for line in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert (row["suite"], row["backend"], row["batch"], row["status"]) == ("max_batch", "sdpa", 2, "ok")
    assert [t["batch"] for t in row["extra"]["tries"]] == [1, 2] and row["extra"]["limit_reached"]
    assert row["median_ms"] > 0
    assert "largest batch that ran 2 (limit 2 reached)" in capsys.readouterr().out


def test_max_batch_searches_each_training_step_op_where_its_backend_runs_it(monkeypatch):
    searched = []
    monkeypatch.setattr(max_batch, "_search_row",
                        lambda settings, backend, dtype, start, limit, timeout_s, log, op: searched.append(
                            (backend, op)) or {})
    settings = type("Settings", (), {"backends": ("triton", "sdpa"), "dtypes": ("bf16",)})()
    max_batch.run(settings, start=8, limit=16, ops=["train_step", "train_step_recompute_ffn"])
    # recompute_ffn_hidden is the fused blocks' option: sdpa does not run it
    assert searched == [("triton", "train_step"), ("triton", "train_step_recompute_ffn"), ("sdpa", "train_step")]
    max_batch.run(settings, start=8, limit=16)
    assert searched[3:] == [("triton", "train_step"), ("sdpa", "train_step")]
    with pytest.raises(SystemExit, match="inference"):
        max_batch.run(settings, start=8, limit=16, ops=["inference"])
