"""The sdpa backend splits its SDPA batch rows (B*V along time, B*T along
variables) into chunks; the result, forward and backward, must not change."""
from __future__ import annotations

import pytest
import torch

from helpers import assert_close, fused_qkv, poison_padding, random_mask
from kernels import sdpa

B, V, T, H, DH = 3, 5, 11, 2, 8


def _run(axis, max_rows, calls):
    qkv, q, k, v = fused_qkv(B, V, T, H, DH, torch.float64, seed=3)
    mask = random_mask(B, T, seed=4)  # the last sample has no valid step
    q, k, v = (poison_padding(t, mask, 2) for t in (q, k, v))
    out = sdpa.attention(q, k, v, mask, axis, max_rows=max_rows)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    out.backward(grad)
    return out.detach(), qkv.grad, len(calls)


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Records the batch size of every scaled_dot_product_attention call."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def counted(q, *args, **kwargs):
        calls.append(q.shape[0])
        return real(q, *args, **kwargs)

    monkeypatch.setattr(sdpa.F, "scaled_dot_product_attention", counted)
    return calls


@pytest.mark.parametrize("axis, rows, max_rows", [("time", B * V, 4), ("variable", B * T, 7)],
                         ids=["time-chunks-of-4", "variable-chunks-of-7"])
def test_chunked_equals_one_call(axis, rows, max_rows, sdpa_calls):
    out_one, grad_one, n_one = _run(axis, rows, sdpa_calls)
    assert sdpa_calls == [rows]
    sdpa_calls.clear()
    out_chunks, grad_chunks, n_chunks = _run(axis, max_rows, sdpa_calls)
    # every chunk but the last is full, and together they cover every row once
    assert sdpa_calls == [max_rows] * (rows // max_rows) + ([rows % max_rows] if rows % max_rows else [])
    assert_close(out_chunks, out_one, atol=1e-12, rtol=1e-12, name=f"{axis} out")
    assert_close(grad_chunks, grad_one, atol=1e-12, rtol=1e-12, name=f"{axis} dqkv")
    assert torch.isfinite(grad_chunks).all()


def test_rows_per_call_at_the_seed_shape():
    # along time: 2**30 bytes / (8 heads * 384 padded steps * 32 * 4 bytes) = 2730 rows,
    # below the 6144 that failed on the H200 and the 4608 that ran
    assert sdpa.rows_per_call(8, 288, 32) == 2730
    # along variables: the grid limit, 65535 // 8 heads
    assert sdpa.rows_per_call(8, 24, 32) == 8191
    assert sdpa.rows_per_call(1, 10**7, 128) == 1  # never zero, even past the limit


def test_default_chunking_follows_rows_per_call(monkeypatch, sdpa_calls):
    monkeypatch.setattr(sdpa, "CALL_BYTES_LIMIT", H * 128 * DH * 4 * 6)  # 6 rows per call
    _run("time", None, sdpa_calls)
    assert sdpa_calls == [6, 6, 3]


def test_bad_max_rows_is_named():
    _, q, k, v = fused_qkv(1, 2, 3, 1, 8, torch.float32)
    with pytest.raises(ValueError, match="max_rows must be >= 1, got 0"):
        sdpa.attention(q, k, v, torch.ones(1, 3, dtype=torch.bool), "time", max_rows=0)


@pytest.mark.parametrize("axis", ["time", "variable"])
def test_gpu_parity_checks_the_chunked_calls(axis, sdpa_calls, monkeypatch):
    from bench import gpu_parity

    limit = sdpa.CALL_BYTES_LIMIT
    check = gpu_parity.check_sdpa_chunks("cpu", "fp32", axis, gpu_parity.SMALL)
    assert check.status == "ok" and check.name.startswith(f"sdpa in 4 chunks {axis} fp32"), check
    assert len(sdpa_calls) >= 4 and sdpa.CALL_BYTES_LIMIT == limit
    # a chunking that loses rows is caught
    real = sdpa._sdpa_in_chunks
    monkeypatch.setattr(sdpa, "_sdpa_in_chunks", lambda q, *a: real(q, *a) * 0.9)
    assert gpu_parity.check_sdpa_chunks("cpu", "fp32", axis, gpu_parity.SMALL).status == "MISMATCH"
