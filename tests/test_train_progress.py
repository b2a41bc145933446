"""migt.train --compile and the throughput shown while training."""
from __future__ import annotations

import json

from compile_spy import compile_spy  # noqa: F401  (a fixture)
from trained_run import TINY_FLAGS

from migt.train import main
from migt.training.checkpoint import load


def test_compile_flag_and_throughput_in_the_progress_bar(tmp_path, compile_spy, capsys, monkeypatch):
    # a wide bar: tqdm sizes it to the terminal, else to COLUMNS (a pytest-xdist
    # worker has neither and cut the postfix at 80 columns)
    monkeypatch.setenv("COLUMNS", "250")
    out = tmp_path / "run"
    flags = [f for f in TINY_FLAGS if f != "--no-progress"]
    trainer, _ = main(["--data", "synthetic", "--synthetic-days", "12", *flags, "--max-steps", "2",
                       "--batch-size", "2", "--eval-every", "2", "--log-every", "1", "--compile",
                       "--val-fraction", "0.2", "--test-fraction", "0.0", "--out", str(out)])
    # The model was compiled once, and the training steps ran through the compiled graph.
    assert compile_spy["modules"] == [trainer.model] and compile_spy["graphs"] >= 1
    assert trainer.forward_model is not trainer.model and trainer.options.compile
    # Checkpoints hold the plain module's weights (no torch.compile key prefix).
    assert not [k for k in load(out / "checkpoint.pt")["model"] if k.startswith("_orig_mod")]
    assert "samples/s=" in capsys.readouterr().err
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_logs = [r for r in logs if r["split"] == "train"]
    assert len(train_logs) == 2 and all(r["samples_per_s"] > 0 for r in train_logs)
    assert all("peak_mem_gib" not in r for r in train_logs)  # CUDA only
