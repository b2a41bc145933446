"""kernels.residual_feed_forward a chunk of rows at a time
(kernels/chunking.py): a large batch's (rows, d_ff) tensors never exist
whole. Chunks must give the whole batch's result (the dropout bits count
rows across chunks), sum the parameter gradients over chunks in float32 under
bf16, and keep the backward's working set to one chunk's."""
import pytest
import torch

import kernels
from bench.live_bytes import LiveBytes
from helpers import assert_close
from kernels import chunking, feed_forward
from test_fused_block import NAMES, assert_matches_float64_reference, ffn_params, residual_and_branch, run_ffn

CHUNK_ROWS = chunking.CHUNK_ROW_MULTIPLE  # the smallest chunk


def chunk_rows(monkeypatch, C, itemsize, rows=CHUNK_ROWS):
    monkeypatch.setattr(chunking, "HIDDEN_CHUNK_BYTES", rows * C * itemsize)


def test_row_chunks_cover_every_row_once(monkeypatch):
    # the seed config (d_ff 1024, bf16 GEMMs): one chunk at B=64, so the
    # benchmarked step is unchunked; seven at B=512
    tokens = 24 * 288
    assert chunking.row_chunks(64 * tokens, 1024, 2) == [(0, 64 * tokens)]
    assert len(chunking.row_chunks(512 * tokens, 1024, 2)) == 7
    chunk_rows(monkeypatch, 64, 8)
    assert chunking.row_chunks(300, 64, 8) == [(0, 128), (128, 256), (256, 300)]
    assert chunking.row_chunks(256, 64, 8) == [(0, 128), (128, 256)]
    assert chunking.row_chunks(0, 64, 8) == [(0, 0)]


@pytest.mark.parametrize("p", [0.0, 0.3], ids=["p0", "p0.3"])
@pytest.mark.parametrize("recompute", [False, True], ids=["keep_hidden", "recompute_hidden"])
def test_chunked_feed_forward_matches_float64_reference(p, recompute, monkeypatch, poisoned_allocations):
    # 300 rows in chunks of 128, 128 and 44: with dropout, a chunk that
    # counted its rows from 0 would redraw the first chunk's bits
    torch.manual_seed(0)
    x, branch = residual_and_branch((3, 100, 48), torch.float64)
    chunk_rows(monkeypatch, 64, 8)
    assert len(chunking.row_chunks(300, 64, 8)) == 3
    # with the branch's bias (out_proj's): its gradient summed over the chunks too
    params = dict(ffn_params(48, 64, torch.float64), branch_bias=torch.randn(48, dtype=torch.float64).requires_grad_())
    assert_matches_float64_reference(x, branch, params, p, recompute, names=NAMES + ["branch_bias"])


def test_chunked_bf16_weight_gradients_are_summed_in_float32(monkeypatch):
    # bf16 GEMMs over a float32 stream, the model's case under autocast: the
    # chunks' weight gradients are made and added in float32 and rounded
    # once, as one whole-batch GEMM rounds them, so the two agree to the bit
    # but for summation order (with bf16 partial sums ~40% of the elements
    # differed, and the worst error grew up to 2x)
    torch.manual_seed(0)
    x, branch = residual_and_branch((4, 96, 32), torch.float32, torch.bfloat16)
    params = ffn_params(32, 64, torch.float32)
    params = {k: (v.detach().bfloat16().requires_grad_() if k.startswith("fc") else v) for k, v in params.items()}
    seeds = kernels.dropout_seeds("cpu")
    _, whole = run_ffn("triton", x, branch, params, 0.2, seeds)
    chunk_rows(monkeypatch, 64, 2)
    assert len(chunking.row_chunks(384, 64, 2)) == 3
    _, chunked = run_ffn("triton", x, branch, params, 0.2, seeds)
    wide = {k: v.detach().double().requires_grad_() for k, v in params.items()}
    _, ref = run_ffn("reference", x.detach().double().requires_grad_(),
                     branch.detach().double().requires_grad_(), wide, 0.2, seeds)
    for name, a, w, r in zip(NAMES, chunked, whole, ref):
        assert a.dtype == w.dtype, name
        if name.startswith("fc") and name.endswith("weight"):
            differing = (a != w).double().mean().item()
            assert differing <= 0.01, (name, differing)
        assert_close(a, r, atol=3e-2 * r.abs().max().item(), rtol=3e-2, name=f"d{name}")


@pytest.mark.parametrize("recompute", [False, True], ids=["keep_hidden", "recompute_hidden"])
def test_chunks_bound_the_working_set(recompute, monkeypatch):
    # the forward's g and the backward's (rows, C) tensors (dhidden, g again,
    # and the recomputed hidden) are one chunk's, not the whole batch's
    torch.manual_seed(0)
    N, D, C = 1024, 32, 256
    x, branch = residual_and_branch((N, D), torch.float32)
    params = ffn_params(D, C, torch.float32)
    seeds = kernels.dropout_seeds("cpu")

    def peaks():
        with LiveBytes() as forward:
            out = kernels.residual_feed_forward(x, branch, **params, dropout_p=0.1, seeds=seeds,
                                                recompute_hidden=recompute, backend="triton")
        with LiveBytes() as backward:
            torch.autograd.grad(out, [x, branch, *params.values()], torch.ones_like(out))
        return forward.peak, backward.peak

    whole = peaks()
    chunk_rows(monkeypatch, C, 4)
    chunked = peaks()
    saved_rows = (N - CHUNK_ROWS) * C * 4  # one (rows, C) float32 tensor made a chunk at a time
    assert whole[0] - chunked[0] >= (2 if recompute else 1) * saved_rows, (whole, chunked)
    assert whole[1] - chunked[1] >= (3 if recompute else 2) * saved_rows, (whole, chunked)


@pytest.mark.parametrize("gated", [False, True], ids=["temporal", "variable"])
def test_gpu_parity_checks_the_fused_blocks_in_chunks(gated):
    # what the GPU run checks at full shapes, here at the small ones: the
    # chunk budget is lowered for the check only
    from bench import gpu_parity

    budget = chunking.HIDDEN_CHUNK_BYTES
    check = gpu_parity.check_ffn_chunks("cpu", "fp32", dict(gpu_parity.SMALL), gated=gated)
    assert check.status == "ok" and "FFN in 3 chunks" in check.name, check
    assert ("variable" in check.name) == gated
    assert chunking.HIDDEN_CHUNK_BYTES == budget


def test_chunked_ops_pass_opcheck(monkeypatch):
    # in several chunks the weight GEMMs run in float32: the backward must
    # still return the dtypes its fake declares (the weights'), or a compiled
    # graph reads float32 gradients as bf16 ones
    torch.manual_seed(0)
    x, branch = residual_and_branch((2, 160, 16), torch.float32, torch.bfloat16)
    params = ffn_params(16, 32, torch.float32)
    params = {k: (v.detach().bfloat16().requires_grad_() if k.startswith("fc") else v) for k, v in params.items()}
    chunk_rows(monkeypatch, 32, 2)
    assert len(chunking.row_chunks(320, 32, 2)) == 3
    seeds = torch.tensor([5, 6, 7])
    # with a float32 branch bias (out_proj's): its gradient summed over the chunks too
    branch_bias = torch.randn(16, requires_grad=True)
    args = (x, branch, seeds, 0.3, params["norm_weight"], params["norm_bias"], 1e-5,
            params["fc1_weight"], params["fc1_bias"], params["fc2_weight"], params["fc2_bias"], True, branch_bias, False)
    torch.library.opcheck(feed_forward._feed_forward_op, args)
    out, mean, rstd, hidden = feed_forward._feed_forward_op(*args)
    saved = [t.detach() for t in (x, branch, mean, rstd, hidden, params["norm_weight"], params["norm_bias"])]
    torch.library.opcheck(feed_forward._feed_forward_backward_op,
                          (torch.randn_like(out.detach()), *saved[:5], seeds, 0.3, *saved[5:], 1e-5,
                           params["fc1_weight"].detach(), params["fc1_bias"].detach(), params["fc2_weight"].detach(),
                           branch_bias.detach(), False))
