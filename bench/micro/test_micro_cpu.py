"""pytest-benchmark micro-benchmarks of the CPU paths (not part of `pytest tests`):

    .venv/bin/python -m pytest bench/micro --benchmark-only

Reference vs sdpa attention along both axes (forward and forward+backward),
RevIN and the gated residual norm, at one model-like sample (B=2, V=24,
T=288, H=8, Dh=32, D=256) in float32.
"""
from __future__ import annotations

import pytest
import torch

import kernels
from bench.common import day_masks

B, V, T, H, DH, D = 2, 24, 288, 8, 32, 256


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # stable numbers on a shared machine (see bench/cli.py)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def mask():
    return day_masks(B, T, V, "cpu")


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
@pytest.mark.parametrize("axis", ["time", "variable"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_attention(benchmark, mask, backend, axis, backward):
    benchmark.group = f"attention {axis} {'fwd+bwd' if backward else 'fwd'}"
    qkv = torch.randn(B, V, T, 3, H, DH, requires_grad=backward)
    q, k, v = qkv.unbind(3)  # strided views, as in the model
    grad = torch.randn(B, V, T, H, DH)

    def run():
        out = kernels.masked_attention(q, k, v, mask, axis, backend=backend)
        if backward:
            out.backward(grad)
            qkv.grad = None
        return out

    out = benchmark(run)
    assert out.shape == (B, V, T, H, DH) and torch.isfinite(out).all()


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
def test_revin_normalize(benchmark, mask, backward):
    benchmark.group = "revin_normalize"
    x = torch.randn(B, T, V)
    weight = torch.ones(V, requires_grad=backward)
    bias = torch.zeros(V, requires_grad=backward)
    grad = torch.randn(B, V, T)

    def run():
        y, mean, std = kernels.revin_normalize(x, mask, weight, bias, backend="reference")
        if backward:
            y.backward(grad)
            weight.grad = bias.grad = None
        return y

    assert torch.isfinite(benchmark(run)).all()


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd_bwd"])
def test_gated_residual_norm(benchmark, backward):
    benchmark.group = "gated_residual_norm"
    tensors = [torch.randn(B, V, T, D, requires_grad=backward) for _ in range(3)]
    weight = torch.ones(D, requires_grad=backward)
    bias = torch.zeros(D, requires_grad=backward)
    grad = torch.randn(B, V, T, D)

    def run():
        out = kernels.gated_residual_norm(*tensors, weight, bias, backend="reference")
        if backward:
            out.backward(grad)
            for t in (*tensors, weight, bias):
                t.grad = None
        return out

    assert torch.isfinite(benchmark(run)).all()
