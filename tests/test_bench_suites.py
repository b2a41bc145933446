"""The suites' case lists and the pieces of their cases that a CPU can check:
the configurations users run (compiled triton and sdpa, pooled variable
mode) and FlexAttention along variables split within CUDA's grid limit."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

import kernels
import migt
from bench import memory_model, suite_attention, suite_model
from bench.common import RunSettings


def test_model_suite_has_the_configurations_users_run():
    settings = RunSettings(device=torch.device("cpu"), batch_sizes=(64,), dtypes=("bf16",),
                           backends=suite_model.BACKENDS, seq_len=288, model_seq_len=288)
    rows = {(c.op, c.backend) for c in suite_model.cases(settings)}
    for backend in ("triton", "sdpa", "compile", "compile_triton"):
        assert ("train_step", backend) in rows and ("train_step_pooled", backend) in rows
    assert suite_model.COMPILED == {"compile": "sdpa", "compile_triton": "triton"}
    # compiled cases come last, so a time budget cuts them first
    backends = [c.backend for c in suite_model.cases(settings)]
    assert backends.index("compile") > backends.index("reference")


def test_memory_model_counts_compiled_backends_as_what_they_compile():
    config = migt.MIGTConfig()
    n = memory_model.count_parameters(config)
    for compiled, eager in suite_model.COMPILED.items():
        assert (memory_model.estimate(config, 8, backend=compiled, n_params=n).saved_total
                == memory_model.estimate(config, 8, backend=eager, n_params=n).saved_total)


def test_flex_along_variables_in_chunks_matches_the_reference(monkeypatch):
    """Eager flex_attention (torch.compile replaced by the identity) with a
    grid limit that makes 7 rows per launch: 3 launches for 2 x 9 rows."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(suite_attention, "GRID_YZ_LIMIT", 2 * 7)
    B, V, T, H, Dh = 2, 5, 9, 2, 16
    qkv = torch.randn(B, V, T, 3, H, Dh, generator=torch.Generator().manual_seed(0))
    q, k, v = qkv.unbind(3)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False
    calls = []
    flex = suite_attention.flex_attention_module()
    real = flex.flex_attention
    monkeypatch.setattr(flex, "flex_attention", lambda q, *a, **kw: calls.append(q.shape[0]) or real(q, *a, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is slow
        out = suite_attention._flex_fn(q, k, v, mask, "variable", torch.device("cpu"))()
    assert calls == [7, 7, 4]
    expected = kernels.masked_attention(q, k, v, mask, "variable", backend="reference")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_ops_filter_runs_only_those_ops_and_names_unknown_ones(tmp_path):
    from bench import cli
    from bench_tiny import tiny_config_path

    common = ["--suites", "model", "--backends", "sdpa", "--batch-sizes", "1", "--seq-len", "8", "--warmup", "1",
              "--repeats", "1", "--config", str(tiny_config_path(tmp_path)), "--out", str(tmp_path), "--no-plots"]
    assert cli.main([*common, "--ops", "train_step_pooled"]) == 0
    rows = [json.loads(line) for line in next(tmp_path.glob("*.jsonl")).read_text().splitlines()]
    assert [(r["op"], r["status"]) for r in rows] == [("train_step_pooled", "ok")]
    with pytest.raises(SystemExit, match=r"--ops: \['train_stpe'\] are not ops of the suites \['model'\]"):
        cli.main([*common, "--ops", "train_stpe"])


def test_flex_along_variables_refused_by_cuda_is_a_skipped_row(monkeypatch):
    """What the H200 run showed as an error row: now, if chunking is not
    enough, the row says why it was skipped."""
    from bench.harness import Case, Timer, run_case

    def refused(*args, **kwargs):
        raise RuntimeError("CUDA driver error: invalid argument")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: refused)
    B, V, T, H, Dh = 1, 3, 4, 2, 16
    q = k = v = torch.randn(B, V, T, H, Dh)
    mask = torch.ones(B, T, dtype=torch.bool)
    case = Case(suite="attention", op="variable_fwd", backend="flex", dtype="fp32", batch=B, shape="tiny",
                setup=lambda: suite_attention.Timed(
                    suite_attention._flex_fn(q, k, v, mask, "variable", torch.device("cpu"))))
    row = run_case(case, Timer("cpu", warmup=1, repeats=1))
    assert row["status"].startswith("skipped: FlexAttention along variables: CUDA refused the launch"), row["status"]
