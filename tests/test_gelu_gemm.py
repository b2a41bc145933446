"""kernels/gelu_gemm.py under the interpreter: the FFN's GELU + dropout in a
Triton GEMM's epilogue (``gelu_in_gemm``). Its kernels alone against the
product in float64 and against the separate GELU passes they replace (the
same g values and dropout bits for the same hidden); the FFN ops with
it against the float64 reference, whole, in chunks and with selective
recompute; the model with it against the model without.

The kernels take 16-bit GEMMs only: the tests run float16 and bfloat16 (the
interpreter's bf16 dots and casts as a GPU's, tests/interpreter_bf16.py);
bench.gpu_parity checks bf16 compiled on a GPU."""
import pytest
import torch

import kernels
from helpers import AUTOCAST_16, assert_close, needs_gpu_bf16
from kernels import chunking, feed_forward, gelu_gemm
from kernels.feed_forward import HIDDEN_SITE
from test_fused_block import NAMES, ffn_params, residual_and_branch
from test_ffn_gated_norm import NAMES as GATED_NAMES, tail_params

# (M, K, C): M off the 128-row tile (one row too); K two 64-wide steps (no
# K mask), three with a partial last one, and one short step; C off the
# column tiles and over several
GEMM_SHAPES = [(200, 128, 192), (130, 136, 300), (1, 16, 8)]
DTYPES = [pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16", marks=needs_gpu_bf16)]
# tolerance of the float64 comparisons, relative to the largest |value|: a
# few roundings of the dtype (bf16 keeps 3 fewer mantissa bits than fp16)
TOLS = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
ROW0 = 37  # a chunk's first row: the dropout bits count from it


def gemm_inputs(M, K, C, dtype=torch.float16, seed=0):
    """h (M, K), W1 (C, K), b1 (C,), df (M, K), W2 (K, C)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return rand(M, K), rand(C, K, scale=K ** -0.5), rand(C), rand(M, K), rand(K, C, scale=C ** -0.5)


def forward(M, K, C, p, dtype):
    """The inputs, seeds, the hidden (NaN where the kernel would not write) and g of fc1_gelu."""
    inputs = gemm_inputs(M, K, C, dtype)
    seeds = kernels.dropout_seeds("cpu")
    hidden = torch.full((M, C), float("nan"), dtype=dtype)
    g = gelu_gemm.fc1_gelu(*inputs[:3], seeds, p, HIDDEN_SITE, row0=ROW0, hidden=hidden)
    return inputs, seeds, hidden, g


def close_to(actual, expected, name, tol):
    scale = expected.abs().max().item() or 1.0
    assert_close(actual, expected, atol=tol * scale, rtol=tol, name=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,C", GEMM_SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.3], ids=["p0", "p0.3"])
def test_forward_is_the_gemm_then_the_gelu_pass(M, K, C, p, dtype, poisoned_allocations):
    (h, w1, b1, _, _), seeds, hidden, g = forward(M, K, C, p, dtype)
    close_to(hidden.double(), h.double() @ w1.double().t() + b1.double(), "hidden", TOLS[dtype])
    # g from the hidden rounded to its dtype, by the pass's helpers: the
    # pass's g (torch.equal), dropout bits included
    assert torch.equal(g, feed_forward.gelu_dropout_fwd(hidden, seeds, p, row0=ROW0))
    # without the hidden kept, the same g
    assert torch.equal(gelu_gemm.fc1_gelu(h, w1, b1, seeds, p, HIDDEN_SITE, row0=ROW0), g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,C", GEMM_SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.3], ids=["p0", "p0.3"])
def test_backward_is_the_gelu_backward_of_the_product(M, K, C, p, dtype, poisoned_allocations):
    (h, w1, b1, df, w2), seeds, hidden, g = forward(M, K, C, p, dtype)
    dhidden, db, g_again = gelu_gemm.dhidden_gelu(df, w2, hidden, seeds, p, HIDDEN_SITE, row0=ROW0)
    # the pass's backward in float64 on the exact product (the kernel keeps
    # it in float32; cuBLAS would round it to the hidden's dtype first)
    want_dhidden, want_db, _ = feed_forward.gelu_dropout_bwd(df.double() @ w2.double(), hidden.double(), seeds, p,
                                                             row0=ROW0)
    assert dhidden.dtype == dtype and db.dtype == torch.float32
    close_to(dhidden.double(), want_dhidden, "dhidden", TOLS[dtype])
    close_to(db.double(), want_db, "db1", TOLS[dtype])
    assert torch.equal(g_again, g)  # for fc2's weight gradient: the forward's g
    # selective recompute: the hidden's tiles made again in the kernel, the
    # forward's bits, so everything as from the stored hidden
    recomputed = gelu_gemm.dhidden_gelu(df, w2, None, seeds, p, HIDDEN_SITE, row0=ROW0, recompute=(h, w1, b1))
    for name, got, want in zip(("dhidden", "db1", "g"), recomputed, (dhidden, db, g_again)):
        assert torch.equal(got, want), name


def test_empty_rows_give_empty_results():
    _, w1, b1, _, w2 = gemm_inputs(1, 16, 24, torch.float16)
    h = torch.empty((0, 16), dtype=torch.float16)
    assert gelu_gemm.fc1_gelu(h, w1, b1, kernels.dropout_seeds("cpu"), 0.3, HIDDEN_SITE).shape == (0, 24)
    dhidden, db, g = gelu_gemm.dhidden_gelu(h, w2, torch.empty((0, 24), dtype=torch.float16),
                                            kernels.dropout_seeds("cpu"), 0.3, HIDDEN_SITE)
    assert dhidden.shape == g.shape == (0, 24) and torch.equal(db, torch.zeros(24))


def test_other_dtypes_are_refused_by_name():
    h, w1, b1, _, _ = gemm_inputs(4, 16, 24, torch.float16)
    with pytest.raises(TypeError, match=r"float16 or bfloat16.*weight torch.float32"):
        gelu_gemm.fc1_gelu(h, w1.float(), b1, kernels.dropout_seeds("cpu"), 0.3, HIDDEN_SITE)


def test_recompute_inputs_that_do_not_match_are_refused_by_name():
    h, w1, b1, df, w2 = gemm_inputs(4, 16, 24)
    with pytest.raises(ValueError, match=r"recompute needs h \(4, 16\).*got h \(4, 8\)"):
        gelu_gemm.dhidden_gelu(df, w2, None, kernels.dropout_seeds("cpu"), 0.3, HIDDEN_SITE,
                               recompute=(h[:, :8], w1, b1))


# ------------------------------------------------------------ the FFN ops


def low_precision(params, dtype):
    """The FFN's GEMM parameters in dtype (as under autocast), the rest as given."""
    return {k: (v.detach().to(dtype).requires_grad_() if k.startswith(("fc", "gate")) else v)
            for k, v in params.items()}


def run(op, backend, x, branch, params, seeds, gelu_in_gemm=False, recompute=False):
    out = op(x, branch, **params, dropout_p=0.3, seeds=seeds, recompute_hidden=recompute, backend=backend,
             **({"gelu_in_gemm": gelu_in_gemm} if backend == "triton" else {}))
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out.dtype)
    return [out, *torch.autograd.grad(out, [x, branch, *params.values()], upstream)]


OPS = {"residual": (kernels.residual_feed_forward, ffn_params, NAMES),
       "gated": (kernels.gated_feed_forward, tail_params, GATED_NAMES)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op_name", list(OPS), ids=list(OPS))
@pytest.mark.parametrize("recompute", [False, True], ids=["keep_hidden", "recompute_hidden"])
def test_ops_match_float64_reference(op_name, recompute, dtype, monkeypatch, poisoned_allocations):
    # 300 rows in chunks of 128, 128 and 44 (a float32 stream, the GEMMs in
    # 16 bits, out_proj's float32 bias): the output and every gradient
    # within what the path without the kernel reaches, against float64
    op, make_params, names = OPS[op_name]
    x, branch = residual_and_branch((3, 100, 48), torch.float32, dtype)
    params = dict(low_precision(make_params(48, 64, torch.float32), dtype),
                  branch_bias=torch.randn(48, generator=torch.Generator().manual_seed(8)).requires_grad_())
    monkeypatch.setattr(chunking, "HIDDEN_CHUNK_BYTES", chunking.CHUNK_ROW_MULTIPLE * 64 * dtype.itemsize)
    assert len(chunking.row_chunks(300, 64, dtype.itemsize)) == 3
    seeds = kernels.dropout_seeds("cpu")
    calls = []
    for name in ("fc1_gelu", "dhidden_gelu"):
        real = getattr(gelu_gemm, name)
        monkeypatch.setattr(gelu_gemm, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    fused = run(op, "triton", x, branch, params, seeds, gelu_in_gemm=True, recompute=recompute)
    # three chunks each way (the recompute's hidden inside the backward's kernel)
    assert calls.count("fc1_gelu") == 3 and calls.count("dhidden_gelu") == 3
    plain = run(op, "triton", x, branch, params, seeds, recompute=recompute)
    f64 = {k: v.detach().double().requires_grad_() for k, v in params.items()}
    x64, branch64 = (t.detach().double().requires_grad_() for t in (x, branch))
    exact = run(op, "reference", x64, branch64, f64, seeds)
    for name, got, old, want in zip(["out"] + names + ["branch_bias"], fused, plain, exact):
        assert got.dtype == old.dtype, name
        err = (got.double() - want).abs().max().item()
        old_err = (old.double() - want).abs().max().item()
        scale = want.abs().max().item()
        # within twice the cuBLAS path's error, and near float64 in absolute terms
        assert err <= 2 * old_err + TOLS[dtype] * scale, f"d{name}: {err:.3g} (without the kernel {old_err:.3g})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_wider_gemms_take_the_cublas_path(dtype, monkeypatch):
    x, branch = residual_and_branch((2, 5, 16), dtype)
    params = ffn_params(16, 24, dtype)
    seeds = kernels.dropout_seeds("cpu")
    monkeypatch.setattr(gelu_gemm, "fc1_gelu", None)  # would raise if called
    monkeypatch.setattr(gelu_gemm, "dhidden_gelu", None)
    fused = run(kernels.residual_feed_forward, "triton", x, branch, params, seeds, gelu_in_gemm=True)
    plain = run(kernels.residual_feed_forward, "triton", x, branch, params, seeds)
    assert all(torch.equal(a, b) for a, b in zip(fused, plain))


def test_model_with_gelu_in_gemm_matches_without():
    # train mode with dropout under bf16 autocast, as users train (float16
    # where the interpreter's bf16 is not a GPU's): the same seeds from
    # torch's generator, so the same masks; the quantiles and every
    # parameter's gradient within the GEMMs' rounding
    from migt import MIGT_TVDT, MIGTConfig, pinball_loss
    from migt.data import synthetic_batch
    from test_model_triton import CONFIG

    def step(gelu_in_gemm):
        torch.manual_seed(0)
        config = MIGTConfig(**{**CONFIG, "dropout": 0.2}, backend="triton",
                            ffn_gelu_in_gemm=gelu_in_gemm)
        model = MIGT_TVDT(config).train()
        batch = synthetic_batch(4, config, seed=1, n_empty=1)
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=AUTOCAST_16):
            out = model(batch["features"], batch["attention_mask"], batch["temporal_info"])
            loss = pinball_loss(out["quantiles"], batch["targets"][:, :3], config.quantiles)
        return out["quantiles"], dict(zip([n for n, _ in model.named_parameters()],
                                          torch.autograd.grad(loss, list(model.parameters()))))

    q_plain, g_plain = step(False)
    q_fused, g_fused = step(True)
    assert_close(q_fused, q_plain, atol=2e-3, rtol=2e-3, name="quantiles")
    for name, grad in g_plain.items():
        scale = grad.abs().max().item() or 1.0
        assert_close(g_fused[name], grad, atol=1e-2 * scale, rtol=1e-2, name=f"d{name}")


def test_gpu_parity_checks_the_epilogues_and_the_blocks_with_them():
    # what the GPU run checks at full shapes, here in float16 at the small
    # ones (bf16: tests/test_bench_harness.py runs every check)
    from bench import gpu_parity

    shapes = dict(gpu_parity.SMALL)
    check = gpu_parity.check_gelu_gemm("cpu", "fp16", shapes)
    assert check.status == "ok" and "epilogues" in check.name, check
    for gated in (False, True):
        check = gpu_parity.check_fused_block("cpu", "fp16", shapes, gated=gated, gelu_in_gemm=True)
        assert check.status == "ok" and "GELU in GEMM" in check.name, check
