"""`python -m bench.roofline`: the bytes, FLOPs and launches it counts per op,
the custom-op registry, a tiny traced training step and the comparison with
the H200 run."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import migt
from bench import h200_measured, roofline, roofline_costs
from bench.op_groups import GROUPS
from bench_tiny import tiny_config_path


def _trace(fn):
    with FakeTensorMode(), roofline._Recorder() as recorder:
        fn()
    return recorder.calls


def test_gemm_flops_and_bytes_of_a_linear_forward_and_backward():
    M, K, N = 6, 10, 4
    calls = []

    def step():
        x = torch.randn(M, K, requires_grad=True)
        layer = torch.nn.Linear(K, N)
        calls.append(layer)
        layer(x).sum().backward()

    gemms = [c for c in _trace(step) if c.group == "GEMM"]
    # forward addmm, backward: dx = dy @ W and dW = dy^T @ x
    assert len(gemms) == 3 and sum(c.flops for c in gemms) == 3 * 2 * M * N * K
    fwd = next(c for c in gemms if c.op == "aten::addmm")
    assert fwd.bytes == 4 * (N + M * K + K * N + M * N) and fwd.launches == 1 and fwd.fp32


def test_views_and_allocations_are_free():
    def views():
        x = torch.empty(4, 6)
        x.view(6, 4).t().unsqueeze(0).expand(3, 4, 6).select(0, 1)

    assert _trace(views) == []


def _define_test_op(name):
    @torch.library.custom_op(name, mutates_args=())
    def op(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @op.register_fake
    def _(x):
        return torch.empty_like(x)

    return op


def test_unregistered_custom_op_gets_the_default_and_is_reported(monkeypatch):
    op = _define_test_op("roofline_test::double_it")
    calls = [c for c in _trace(lambda: op(torch.randn(8, 16))) if c.op != "aten::randn"]
    [call] = calls
    assert (call.op, call.registered, call.bytes, call.flops, call.launches) == (
        "roofline_test::double_it", False, 2 * 8 * 16 * 4, 0.0, 1)
    summary = roofline.summarize(calls, [roofline.GPUS["H200"]])
    assert summary["unregistered"] == ["roofline_test::double_it"]

    monkeypatch.setitem(roofline_costs.COSTS, "roofline_test::double_it",
                        lambda inputs, outputs: roofline_costs.Cost(bytes=100.0, flops=7.0, launches=2))
    [call] = [c for c in _trace(lambda: op(torch.randn(8, 16))) if c.op != "aten::randn"]
    assert (call.registered, call.bytes, call.flops, call.launches) == (True, 100.0, 7.0, 2)


def test_attention_flops_count_valid_steps_only(monkeypatch):
    B, V, T, H, Dh = 2, 3, 5, 2, 4
    mask = torch.ones(B, T, dtype=torch.bool)
    monkeypatch.setattr(roofline_costs, "valid_steps", [5, 2])
    assert roofline_costs._attention_flops((B, V, T, H, Dh), mask, "time") == 4 * Dh * H * V * (25 + 4)
    assert roofline_costs._attention_flops((B, V, T, H, Dh), mask, "variable") == 4 * Dh * H * V * V * 7
    monkeypatch.setattr(roofline_costs, "valid_steps", None)  # unknown: every step valid
    assert roofline_costs._attention_flops((B, V, T, H, Dh), mask, "time") == 4 * Dh * H * V * 50


def test_prediction_is_launches_plus_the_slower_of_memory_and_compute():
    gpu = roofline.Ceilings("toy", copy_gbs=1000.0, bf16_tflops=100.0, fp32_tflops=10.0, source="test")
    memory_bound = roofline.Call("aten::add", "elementwise", "forward", 2e9, 0.0, 1, True, False)
    assert roofline.predict_ms(memory_bound, gpu, launch_us=5.0) == pytest.approx(2.0 + 0.005)
    compute_bound = roofline.Call("aten::mm", "GEMM", "forward", 1e6, 1e12, 2, True, True)
    assert roofline.predict_ms(compute_bound, gpu, launch_us=5.0) == pytest.approx(100.0 + 0.01)


@pytest.mark.parametrize("backend, attention_op", [("sdpa", "aten::_scaled_dot_product_flash_attention_for_cpu"),
                                                   ("triton", "migt::masked_attention_qkvpacked_fwd")])
def test_a_tiny_training_step_is_traced(tmp_path, backend, attention_op):
    config = dataclasses.replace(migt.MIGTConfig.from_yaml(tiny_config_path(tmp_path)), backend=backend)
    calls = roofline.trace_step(config, 3)
    phases = {c.phase for c in calls}
    assert phases == {"forward", "backward", "optimizer"}
    groups = {c.group for c in calls if c.bytes > 0}
    assert {"attention", "GEMM", "norm", "dropout", "elementwise", "optimizer"} <= groups
    assert any(c.op == attention_op and c.registered and c.flops > 0 for c in calls)
    # dropout as CUDA runs it: native_dropout, no CPU bernoulli
    ops = {c.op for c in calls}
    assert "aten::native_dropout" in ops and "aten::bernoulli_" not in ops
    # the steady step: AdamW's state exists, nothing allocates it
    assert not any(c.phase == "optimizer" and c.op in ("aten::zeros_like", "aten::zeros") for c in calls)
    summary = roofline.summarize(calls, list(roofline.GPUS.values()))
    assert summary["total"]["ms"]["H100"] > summary["total"]["ms"]["H200"] > 0
    assert sum(summary["groups"][g]["bytes"] for g in GROUPS) == pytest.approx(summary["total"]["bytes"])


def test_h200_profile_log_is_grouped():
    logged = h200_measured.profile_log_groups()
    assert logged["triton"]["total_ms"] == 112.2 and logged["sdpa"]["total_ms"] == 163.7
    triton = logged["triton"]["groups_ms"]
    assert sum(triton.values()) == pytest.approx(112.2)
    # the shared README: attention ~20 ms, GEMMs ~22 ms, LayerNorm + gated norm ~22 ms
    assert 15 < triton["attention"] < 25 and 15 < triton["GEMM"] < 25 and 15 < triton["norm"] < 25
    rows = roofline.compare({"groups": {g: {"ms": {"H200": 1.0}} for g in GROUPS},
                             "total": {"ms": {"H200": 58.65}}}, 117.3, triton, "H200")
    assert rows[-1][0] == "total" and rows[-1][3] == pytest.approx(-50.0)
    assert rows[-2][0] == "kernel time" and rows[-2][2] == pytest.approx(112.2)
    assert math.isclose(dict((r[0], r[3]) for r in rows)["attention"], 100 * (1 - triton["attention"]) / triton["attention"])


def test_roofline_cli_writes_its_report(tmp_path, capsys):
    assert roofline.main(["--config", str(tiny_config_path(tmp_path)), "--batch", "2", "--backends", "sdpa",
                          "--out", str(tmp_path)]) == 0
    text = (tmp_path / "roofline.md").read_text()
    assert "| group | predicted H200 ms | measured ms | error |" in text and "## sdpa" in text
    assert "Against the measurement on NVIDIA H200, 2026-11-28" in text
    assert (tmp_path / "roofline.json").exists()


def test_a_profile_json_is_the_measurement_when_given(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "batch": 64, "seq_len": 288, "profiles": {
        "sdpa": {"time_kind": "CUDA kernel time", "total_ms": 150.0, "groups_ms": {"GEMM": 20.0}, "skipped": ""},
        "triton": {"time_kind": "CUDA kernel time", "total_ms": 0.0, "groups_ms": {}, "skipped": "no GPU"}}}))
    measured = roofline.measured_reference(path)
    assert set(measured) == {"sdpa"}  # a skipped profile measures nothing
    assert measured["sdpa"]["gpu"] == "H100" and measured["sdpa"]["groups_ms"] == {"GEMM": 20.0}


def test_triton_modules_traces_the_blocks_the_h200_measured(tmp_path):
    """The triton backend with the blocks as plain modules: the Triton
    attention, no fused block ops; the H200's triton step is its measurement."""
    config = dataclasses.replace(migt.MIGTConfig.from_yaml(tiny_config_path(tmp_path)), backend="triton")
    ops = {c.op for c in roofline.trace_step(config, 2, fused_blocks=False)}
    assert "migt::masked_attention_qkvpacked_fwd" in ops and "aten::native_layer_norm" in ops
    fused_ops = ("migt::residual_feed_forward", "migt::layer_norm_linear", "migt::gated_feed_forward")
    assert not any(op.startswith(fused_ops) for op in ops)
    measured = roofline.measured_reference(None)
    assert measured["triton_modules"]["total_ms"] == 117.3 and "triton" not in measured


@pytest.mark.parametrize("recompute_hidden", [False, True], ids=["keep_hidden", "recompute_hidden"])
def test_fused_block_ops_are_costed_kernel_by_kernel(tmp_path, recompute_hidden):
    """The fused block ops are registered; each returns its GEMMs and passes as
    parts, so GEMM time lands in the GEMM group at the GEMM peak, and the
    selective recompute adds one forward-sized GEMM per block to the backward."""
    config = dataclasses.replace(migt.MIGTConfig.from_yaml(tiny_config_path(tmp_path)), backend="triton",
                                 recompute_ffn_hidden=recompute_hidden)
    calls = roofline.trace_step(config, 2)
    fused = [c for c in calls if c.op.startswith(("migt::residual_feed_forward", "migt::layer_norm_linear",
                                                  "migt::gated_feed_forward"))]
    assert fused and all(c.registered for c in fused)
    gemms = [c for c in fused if c.group == "GEMM"]
    assert gemms and all(c.flops > 0 and not c.fp32 for c in gemms)
    assert all(c.flops == 0 for c in fused if c.group != "GEMM")
    recomputes = [c for c in gemms if "recompute" in c.op]
    n_blocks = config.n_temporal_layers + config.n_variable_layers
    assert len(recomputes) == (n_blocks if recompute_hidden else 0)
