"""kernels.gated_feed_forward: a variable block's FFN half and the gated
residual norm after it (gate = a Linear of x) as one Triton-backed autograd
node (kernels/ffn_gated_norm.py), under the interpreter. Parity with the
reference (the FFN, the gate Linear and the gated norm in plain PyTorch) on
the output and all twelve gradients, whole and in chunks of rows; the
dtypes the op declares; what it keeps; argument errors."""
import pytest
import torch

import kernels
from helpers import assert_close
from kernels import chunking, feed_forward, ffn_gated_norm
from test_fused_block import assert_matches_float64_reference, ffn_params, residual_and_branch

NAMES = ["x", "branch", "norm_weight", "norm_bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias",
         "gate_weight", "gate_bias", "out_norm_weight", "out_norm_bias"]


def tail_params(D, C, dtype, *, seed=0):
    g = torch.Generator().manual_seed(seed + 100)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).requires_grad_()

    return dict(ffn_params(D, C, dtype, seed=seed),
                gate_weight=rand(D, D, scale=D ** -0.5), gate_bias=rand(D),
                out_norm_weight=rand(D, scale=0.5, shift=1.0), out_norm_bias=rand(D))


def run_tail(backend, x, branch, params, p, seeds, recompute=False):
    out = kernels.gated_feed_forward(x, branch, **params, dropout_p=p, seeds=seeds, recompute_hidden=recompute,
                                     backend=backend)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out.dtype)
    return out, torch.autograd.grad(out, [x, branch, *params.values()], upstream)


def assert_tail_matches_float64_reference(x, branch, params, p, recompute):
    assert_matches_float64_reference(x, branch, params, p, recompute, run=run_tail, names=NAMES)


@pytest.mark.parametrize("shape,D,C", [((2, 3, 7), 48, 80), ((1, 1, 1), 40, 300)], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.3], ids=["p0", "p0.3"])
@pytest.mark.parametrize("recompute", [False, True], ids=["keep_hidden", "recompute_hidden"])
def test_matches_float64_reference(shape, D, C, p, recompute, poisoned_allocations):
    x, branch = residual_and_branch((*shape, D), torch.float64)
    assert_tail_matches_float64_reference(x, branch, tail_params(D, C, torch.float64), p, recompute)


@pytest.mark.parametrize("recompute", [False, True], ids=["keep_hidden", "recompute_hidden"])
def test_in_chunks_matches_float64_reference(recompute, monkeypatch, poisoned_allocations):
    # 300 rows in chunks of 128, 128 and 44, with dropout: the gated norm's
    # part of dx and the gate's are added chunk by chunk, and every chunk's
    # parameter gradients are summed (the branch's bias, out_proj's, too)
    torch.manual_seed(0)
    x, branch = residual_and_branch((3, 100, 48), torch.float64)
    monkeypatch.setattr(chunking, "HIDDEN_CHUNK_BYTES", chunking.CHUNK_ROW_MULTIPLE * 64 * 8)
    assert len(chunking.row_chunks(300, 64, 8)) == 3
    params = dict(tail_params(48, 64, torch.float64),
                  branch_bias=torch.randn(48, dtype=torch.float64).requires_grad_())
    assert_matches_float64_reference(x, branch, params, 0.3, recompute, run=run_tail, names=NAMES + ["branch_bias"])


@pytest.mark.parametrize("recompute", [False, True], ids=["keep_hidden", "recompute_hidden"])
def test_chunks_split_for_int32_offsets_match_float64_reference(recompute, monkeypatch, poisoned_allocations):
    # a very wide D splits the FFN's chunks again so the gated norm's int32
    # offsets hold: here forced with a small limit (300 rows in 128-row pieces)
    torch.manual_seed(0)
    x, branch = residual_and_branch((3, 100, 48), torch.float64)
    monkeypatch.setattr(ffn_gated_norm, "INT32_LIMIT", 48 * 160)
    assert ffn_gated_norm._chunks(300, 48, 64, 8) == [(0, 128), (128, 256), (256, 300)]
    assert_tail_matches_float64_reference(x, branch, tail_params(48, 64, torch.float64), 0.3, recompute)


def low_precision_case(shape, D, C, dtype):
    """The model's case under autocast: a float32 stream, the branch and the
    GEMMs' weights in `dtype`, the norms' weights in float32."""
    x, branch = residual_and_branch((*shape, D), torch.float32, dtype)
    params = tail_params(D, C, torch.float32)
    gemm = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "gate_weight", "gate_bias")
    return x, branch, {k: (v.detach().to(dtype).requires_grad_() if k in gemm else v) for k, v in params.items()}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 6e-2)], ids=["fp32", "bf16"])
def test_low_precision_gemms_with_float32_stream(dtype, tol, poisoned_allocations):
    x, branch, params = low_precision_case((3, 11), 64, 96, dtype)
    seeds = kernels.dropout_seeds("cpu")
    out, grads = run_tail("triton", x, branch, params, 0.2, seeds)
    wide = {k: v.detach().double().requires_grad_() for k, v in params.items()}
    ref_out, ref_grads = run_tail("reference", x.detach().double().requires_grad_(),
                                  branch.detach().double().requires_grad_(), wide, 0.2, seeds)
    assert out.dtype == torch.float32
    for name, a, b, param in zip(NAMES, grads, ref_grads, [x, branch, *params.values()]):
        assert a.dtype == param.dtype, name
        assert_close(a, b, atol=tol * b.abs().max().item(), rtol=tol, name=f"d{name}")
    assert_close(out, ref_out, atol=tol * ref_out.abs().max().item(), rtol=tol, name="out")


def test_equals_the_separate_triton_ops():
    # the same values as the ops it replaces in the block (FFN op, gate
    # Linear, gated norm op), the gradients summed by autograd
    x, branch, params = low_precision_case((2, 5, 7), 32, 64, torch.float32)
    seeds = kernels.dropout_seeds("cpu")
    out, grads = run_tail("triton", x, branch, params, 0.3, seeds)
    ffn = {k: v for k, v in params.items() if not k.startswith(("gate", "out_norm"))}
    update = kernels.residual_feed_forward(x, branch, **ffn, dropout_p=0.3, seeds=seeds, backend="triton")
    logits = torch.nn.functional.linear(x, params["gate_weight"], params["gate_bias"])
    ref = kernels.gated_residual_norm(x, update, logits, params["out_norm_weight"], params["out_norm_bias"],
                                      backend="triton")
    upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).float()
    ref_grads = torch.autograd.grad(ref, [x, branch, *params.values()], upstream)
    assert_close(out, ref, atol=1e-6, rtol=1e-5, name="out")
    for name, a, b in zip(NAMES, grads, ref_grads):
        assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-4, name=f"d{name}")


def op_args(x, branch, params, seeds, p, keep_hidden):
    t = {k: v.detach() for k, v in params.items()}
    return (x.detach(), branch.detach(), seeds, p, t["norm_weight"], t["norm_bias"], 1e-5,
            t["fc1_weight"], t["fc1_bias"], t["fc2_weight"], t["fc2_bias"],
            t["gate_weight"], t["gate_bias"], t["out_norm_weight"], t["out_norm_bias"], 1e-5, keep_hidden)


@pytest.mark.parametrize("chunks,keep_hidden", [(1, True), (3, True), (3, False)], ids=str)
def test_ops_pass_opcheck(chunks, keep_hidden, monkeypatch):
    # the backward returns the dtypes its fake declares (bf16 weight
    # gradients from float32 chunk sums included), or a compiled graph reads garbage
    torch.manual_seed(0)
    x, branch, params = low_precision_case((2, 160), 16, 32, torch.bfloat16)
    if chunks > 1:
        monkeypatch.setattr(chunking, "HIDDEN_CHUNK_BYTES", chunking.CHUNK_ROW_MULTIPLE * 32 * 2)
    assert len(chunking.row_chunks(320, 32, 2)) == chunks
    seeds = torch.tensor([5, 6, 7])
    # with the branch's bias (out_proj's), kept as a float32 parameter
    args = op_args(x, branch, params, seeds, 0.3, keep_hidden) + (torch.randn(16, requires_grad=True), False)
    torch.library.opcheck(ffn_gated_norm._gated_feed_forward_op, args)
    out, update, mean, rstd, hidden, out_mean, out_rstd = ffn_gated_norm._gated_feed_forward_op(*args)
    (x0, b0, _, p, nw, nb, eps, w1, b1, w2, _, gw, gb, onw, onb, _, _, bb, _) = args
    for bias in (None, bb.detach()):
        torch.library.opcheck(ffn_gated_norm._gated_feed_forward_backward_op,
                              (torch.randn_like(out), x0, b0, mean.detach(), rstd.detach(),
                               hidden.detach(), seeds, p, nw, nb, eps, w1, b1, w2,
                               update.detach(), gw, gb, onw, onb, out_mean.detach(), out_rstd.detach(), bias, False))


def test_without_grad_keeps_no_hidden(monkeypatch):
    x, branch, params = low_precision_case((4, 9), 32, 64, torch.float32)
    seeds = kernels.dropout_seeds("cpu")
    kept = []
    forward = feed_forward.feed_forward_fwd
    monkeypatch.setattr(feed_forward, "feed_forward_fwd",
                        lambda *args, **kwargs: kept.append(args[-1]) or forward(*args, **kwargs))
    with torch.no_grad():
        out = kernels.gated_feed_forward(x, branch, **params, dropout_p=0.1, seeds=seeds, backend="triton")
        ref = kernels.gated_feed_forward(x, branch, **params, dropout_p=0.1, seeds=seeds, backend="reference")
    assert kept == [False]  # inference makes the hidden a chunk at a time and keeps none
    assert_close(out, ref, atol=1e-5, rtol=1e-5, name="out")


def test_chunked_bf16_gate_weight_gradient_is_summed_in_float32(monkeypatch):
    # as the FFN's weights (tests/test_ffn_row_chunks.py): the chunks' gate
    # weight gradients are made and added in float32 and rounded once, so
    # they match the whole-batch GEMM's but for summation order
    torch.manual_seed(0)
    x, branch, params = low_precision_case((4, 96), 32, 64, torch.bfloat16)
    seeds = kernels.dropout_seeds("cpu")
    _, whole = run_tail("triton", x, branch, params, 0.2, seeds)
    monkeypatch.setattr(chunking, "HIDDEN_CHUNK_BYTES", chunking.CHUNK_ROW_MULTIPLE * 64 * 2)
    assert len(chunking.row_chunks(384, 64, 2)) == 3
    _, chunked = run_tail("triton", x, branch, params, 0.2, seeds)
    for name, a, w in zip(NAMES, chunked, whole):
        assert a.dtype == w.dtype, name
        if name.endswith("weight") and not name.endswith("norm_weight"):
            differing = (a != w).double().mean().item()
            assert differing <= 0.01, (name, differing)


@pytest.mark.parametrize("name,shape,expected", [
    ("gate_weight", (32, 16), "(D, D) = (32, 32)"),
    ("gate_bias", (31,), "(D,) = (32,)"),
    ("out_norm_weight", (32, 1), "(D,)"),
    ("out_norm_bias", (16,), "(D,) = (32,)"),
])
def test_bad_gate_and_norm_arguments_are_named(name, shape, expected):
    x, branch, params = low_precision_case((2, 3), 32, 64, torch.float32)
    params[name] = torch.zeros(shape)
    with pytest.raises(ValueError, match=name) as err:
        kernels.gated_feed_forward(x, branch, **params, backend="reference")
    assert expected in str(err.value)
