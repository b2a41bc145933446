"""Nothing of a benchmark case outlives it (the H200 run's train_step cases
each left their activations allocated, inflating every later row).

Checked on the CPU with weak references: after run_case, the model, its
parameters and the activations of its forward passes must be dead, whether
the case ended ok or in an exception that something kept a reference to."""
from __future__ import annotations

import gc
import weakref

import torch

import migt
from bench import memory_model, suite_model
from bench.common import RunSettings
from bench.harness import LEAK_TOLERANCE_MIB, Case, Timed, Timer, Work, _check_nothing_left, run_case
from bench_tiny import tiny_config_path


def test_measuring_saved_bytes_keeps_no_graph_alive():
    # sigmoid saves its own output: the node-output-node cycle of an identity pack hook
    w = torch.randn(16, 16, requires_grad=True)
    alive = []

    def forward():
        y = torch.sigmoid(torch.randn(4, 16) @ w)
        alive.append(weakref.ref(y))
        return y.sum()

    saved = memory_model.measure_saved_bytes(forward, exclude=[w])
    assert saved >= 4 * 16 * 4  # at least the sigmoid output was counted
    gc.collect()
    assert alive[0]() is None, "the forward's output (and so its graph) outlived measure_saved_bytes"


def _track_models(monkeypatch):
    """Weak references to every MIGT_TVDT built, its parameters and each forward's quantiles."""
    refs = []
    build = migt.MIGT_TVDT.__init__

    def init(self, *args, **kwargs):
        build(self, *args, **kwargs)
        refs.append(("model", weakref.ref(self)))
        refs.extend(("parameter", weakref.ref(p)) for p in self.parameters())
        self.register_forward_hook(
            lambda module, inputs, out: refs.append(("activation", weakref.ref(out["quantiles"]))))

    monkeypatch.setattr(migt.MIGT_TVDT, "__init__", init)
    return refs


def test_model_cases_leave_nothing_alive(monkeypatch, tmp_path):
    refs = _track_models(monkeypatch)
    settings = RunSettings(device=torch.device("cpu"), batch_sizes=(2,), dtypes=("fp32",),
                           backends=("sdpa",), seq_len=8, model_seq_len=8,
                           config_path=tiny_config_path(tmp_path))
    cases = suite_model.cases(settings)
    # every op that runs on sdpa (the fused blocks' recompute option runs on triton backends only)
    assert {c.op for c in cases} == {op for op in suite_model.OPS
                                     if "sdpa" in suite_model.OP_BACKENDS.get(op, ("sdpa",))}
    for case in cases:
        row = run_case(case, Timer("cpu", warmup=1, repeats=1))
        assert row["status"] == "ok", row["status"]
        # train_step also ran the saved-bytes measurement that leaked on the H200
        assert case.op not in ("train_step", "train_step_pooled") or row["extra"]["mem_saved_mib"] >= 0
        still = [kind for kind, ref in refs if ref() is not None]
        assert not still, f"{case.op}: still alive after the case: {sorted(set(still))}"
        assert any(kind == "activation" for kind, _ in refs)


def test_a_kept_exception_does_not_keep_the_case_alive():
    """An OOM raised mid-step holds the step's frames in its traceback; code
    that keeps the exception (a logger, a list of failures) must not keep
    the activations."""
    kept, alive = [], []

    def setup():
        activation = torch.randn(64, 64)
        alive.append(weakref.ref(activation))

        def fn():
            local = activation * 2  # a frame local, as in a forward
            alive.append(weakref.ref(local))
            try:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            except torch.OutOfMemoryError as err:
                kept.append(err)
                raise
        return Timed(fn, Work(1, "samples/s"))

    case = Case(suite="unit", op="op", backend="sdpa", dtype="fp32", batch=1, shape="tiny", setup=setup)
    row = run_case(case, Timer("cpu", warmup=1, repeats=1))
    assert row["status"] == "OOM"
    assert kept and len(alive) == 2
    assert [r() for r in alive] == [None, None], "a kept exception kept the case's tensors alive"


def test_memory_left_allocated_makes_an_error_row():
    row = {"status": "ok", "extra": {}}
    _check_nothing_left(row, 1000.0, 1000.0 + LEAK_TOLERANCE_MIB / 2)
    assert row["status"] == "ok" and row["extra"]["start_allocated_mib"] == 1000.0
    _check_nothing_left(row, 1000.0, 1000.0 + 4 * LEAK_TOLERANCE_MIB)
    assert row["status"].startswith("error: leak: 1024 MiB still allocated"), row["status"]
    cpu_row = {"status": "ok", "extra": {}}
    _check_nothing_left(cpu_row, None, None)  # no device counter on the CPU
    assert cpu_row == {"status": "ok", "extra": {}}
