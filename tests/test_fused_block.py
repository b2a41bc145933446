"""The fused transformer-block ops (kernels.layer_norm_linear,
kernels.residual_feed_forward) on the Triton backend under the interpreter:
parity with the plain-PyTorch reference on the output and every gradient,
dropout whose masks are redrawn (never stored) and reproducible, and what
the backward keeps."""
import pytest
import torch

import kernels
from kernels import feed_forward, norm_linear, philox
from helpers import assert_close, needs_gpu_bf16
from migt import MIGT_TVDT, MIGTConfig, pinball_loss
from migt.data import synthetic_batch

F64 = dict(atol=1e-10, rtol=1e-9)


def ffn_params(D, C, dtype, *, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    return dict(
        norm_weight=rand(D), norm_bias=rand(D),
        fc1_weight=rand(C, D, scale=D ** -0.5), fc1_bias=rand(C),
        fc2_weight=rand(D, C, scale=C ** -0.5), fc2_bias=rand(D),
    )


def residual_and_branch(shape, dtype, branch_dtype=None, *, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    branch = torch.randn(*shape, generator=g, dtype=torch.float64).to(branch_dtype or dtype).requires_grad_()
    return x, branch


def run_ffn(backend, x, branch, params, p, seeds, recompute=False):
    out = kernels.residual_feed_forward(x, branch, **params, dropout_p=p, seeds=seeds,
                                        recompute_hidden=recompute, backend=backend)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out.dtype)
    inputs = [x, branch, *params.values()]
    return out, torch.autograd.grad(out, inputs, upstream)


NAMES = ["x", "branch", "norm_weight", "norm_bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"]

# (rows as a shape, D, d_ff): D and d_ff off the block sizes; rows not a
# multiple of any tile; one case with a single row
SHAPES = [((2, 3, 7), 48, 80), ((1, 1, 1), 40, 300), ((5, 9), 256, 64)]


@pytest.mark.parametrize("shape,D,C", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("p", [0.0, 0.3], ids=["p0", "p0.3"])
@pytest.mark.parametrize("recompute", [False, True], ids=["keep_hidden", "recompute_hidden"])
def test_feed_forward_matches_float64_reference(shape, D, C, p, recompute, poisoned_allocations):
    x, branch = residual_and_branch((*shape, D), torch.float64)
    assert_matches_float64_reference(x, branch, ffn_params(D, C, torch.float64), p, recompute)


@pytest.mark.parametrize("shape,D,C", SHAPES[::2], ids=lambda v: str(v))
@pytest.mark.parametrize("p", [0.0, 0.3], ids=["p0", "p0.3"])
@pytest.mark.parametrize("recompute", [False, True], ids=["keep_hidden", "recompute_hidden"])
def test_feed_forward_branch_bias_matches_float64_reference(shape, D, C, p, recompute, poisoned_allocations):
    # x_mid = x + dropout(branch + branch_bias): the bias of the Linear that
    # made the branch, its gradient summed in the norm backward pass
    x, branch = residual_and_branch((*shape, D), torch.float64)
    bias = torch.randn(D, generator=torch.Generator().manual_seed(4), dtype=torch.float64).requires_grad_()
    assert_matches_float64_reference(x, branch, dict(ffn_params(D, C, torch.float64), branch_bias=bias), p,
                                     recompute, names=NAMES + ["branch_bias"])


def test_branch_bias_of_any_layout():
    # a strided (non-contiguous) bias gives what its contiguous copy gives
    x, branch = residual_and_branch((2, 5, 16), torch.float64)
    params = ffn_params(16, 24, torch.float64)
    strided = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))[::2]
    seeds = kernels.dropout_seeds("cpu")
    got = kernels.residual_feed_forward(x, branch, **params, dropout_p=0.3, seeds=seeds, branch_bias=strided,
                                        backend="triton")
    want = kernels.residual_feed_forward(x, branch, **params, dropout_p=0.3, seeds=seeds,
                                         branch_bias=strided.contiguous(), backend="triton")
    assert torch.equal(got, want)


def assert_matches_float64_reference(x, branch, params, p, recompute, run=None, names=None):
    """The triton op's output and every gradient against the reference's, in
    float64; run(backend, x, branch, params, p, seeds[, recompute]) gives
    (out, gradients named by `names`), by default the FFN op's."""
    run, names = run or run_ffn, names or NAMES
    seeds = kernels.dropout_seeds("cpu")
    out, grads = run("triton", x, branch, params, p, seeds, recompute)
    ref_out, ref_grads = run("reference", x, branch, params, p, seeds)
    assert_close(out, ref_out, **F64, name="out")
    for name, a, b in zip(names, grads, ref_grads):
        assert_close(a, b, **F64, name=f"d{name}")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float16, 2e-2), (torch.bfloat16, 6e-2)],
                         ids=["fp32", "fp16", "bf16"])
def test_feed_forward_low_precision_gemms_with_float32_residual(dtype, tol, poisoned_allocations):
    # the model's case under autocast: a float32 residual stream, the branch
    # and GEMMs in half precision, norm weights in float32
    x, branch = residual_and_branch((3, 11, 64), torch.float32, dtype)
    params = ffn_params(64, 96, torch.float32)
    params = {k: (v.detach().to(dtype).requires_grad_() if k.startswith("fc") else v) for k, v in params.items()}
    # out_proj's float32 bias added to the half-precision branch, as the model runs it
    params["branch_bias"] = torch.randn(64, generator=torch.Generator().manual_seed(8)).requires_grad_()
    seeds = kernels.dropout_seeds("cpu")
    out, grads = run_ffn("triton", x, branch, params, 0.2, seeds)
    ref_out, ref_grads = run_ffn("reference", x, branch, params, 0.2, seeds)
    assert out.dtype == torch.float32
    scale = lambda t: t.detach().double().abs().max().item()  # noqa: E731
    assert_close(out, ref_out, atol=tol * scale(ref_out), rtol=tol, name="out")
    for name, a, b in zip(NAMES + ["branch_bias"], grads, ref_grads):
        assert a.dtype == b.dtype, name
        assert_close(a, b, atol=tol * scale(b), rtol=tol, name=f"d{name}")


@pytest.mark.parametrize("shape,D,D_out", [((2, 3, 7), 48, 144), ((1,), 256, 40)], ids=str)
def test_layer_norm_linear_matches_float64_reference(shape, D, D_out, poisoned_allocations):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, D, generator=g, dtype=torch.float64, requires_grad=True)
    nw, nb, b = (torch.randn(n, generator=g, dtype=torch.float64, requires_grad=True) for n in (D, D, D_out))
    w = torch.randn(D_out, D, generator=g, dtype=torch.float64, requires_grad=True)
    results = []
    for backend in ("triton", "reference"):
        y = kernels.layer_norm_linear(x, nw, nb, w, b, backend=backend)
        upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        results.append((y, torch.autograd.grad(y, [x, nw, nb, w, b], upstream)))
    (y, grads), (ref_y, ref_grads) = results
    assert_close(y, ref_y, **F64, name="y")
    for name, a, r in zip(["x", "norm_weight", "norm_bias", "weight", "bias"], grads, ref_grads):
        assert_close(a, r, **F64, name=f"d{name}")
    # without a bias (the attention kernels add the QKV bias): the same GEMM minus it
    y0 = kernels.layer_norm_linear(x, nw, nb, w, None, backend="triton")
    ref0 = kernels.layer_norm_linear(x, nw, nb, w, None, backend="reference")
    assert_close(y0, ref_y.detach() - b.detach(), **F64, name="y without bias")
    upstream = torch.randn(y0.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    grads0 = torch.autograd.grad(y0, [x, nw, nb, w], upstream)
    ref_grads0 = torch.autograd.grad(ref0, [x, nw, nb, w], upstream)
    for name, a, r in zip(["x", "norm_weight", "norm_bias", "weight"], grads0, ref_grads0):
        assert_close(a, r, **F64, name=f"d{name} without bias")


def test_layer_norm_linear_under_autocast_runs_the_gemm_in_bfloat16():
    x = torch.randn(2, 5, 32)
    nw, nb, w, b = torch.ones(32), torch.zeros(32), torch.randn(64, 32), torch.randn(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.layer_norm_linear(x, nw, nb, w, b, backend="triton")
        ref = kernels.layer_norm_linear(x, nw, nb, w, b, backend="reference")
    assert y.dtype == ref.dtype == torch.bfloat16
    # bf16 outputs of size ~10 are rounded to 1/16: compare against the largest
    assert_close(y, ref, atol=1e-2 * ref.abs().max().item(), rtol=1e-2, name="y")


# ------------------------------------------------------------------ dropout


@pytest.mark.parametrize("N,D", [(37, 48), (5, 257), (3, 1)], ids=str)
def test_kernel_masks_are_the_philox_reference_masks(N, D):
    # out = (0 + dropout(1)) + dropout(2): each term reads its site's mask
    # times 1/(1-p); D off a multiple of 8 puts a partial Philox group at
    # every row's end
    p = 0.25
    seeds = kernels.dropout_seeds("cpu")
    out = feed_forward.residual_out(torch.zeros(N, D), torch.ones(N, D), torch.full((N, D), 2.0), seeds, p)
    keep_branch = philox.keep_mask(seeds[feed_forward.BRANCH_SITE], (N, D), p)
    keep_out = philox.keep_mask(seeds[feed_forward.OUTPUT_SITE], (N, D), p)
    expected = (keep_branch.double() + 2.0 * keep_out.double()) / (1.0 - p)
    assert torch.equal(out.double(), expected.float().double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gelu_backward_rewrites_the_forward_g_exactly(dtype):
    # the backward's g (for the second GEMM's weight gradient) must be the
    # forward's values bit for bit: same expression, mask, site and scale
    # enough elements (spread to |x| ~ 6) that the 16-bit Phi and erf round
    # apart somewhere even in bf16: a forward that took the other form fails
    N, C, p = 61, 520, 0.3
    hidden = (2.0 * torch.randn(N, C, generator=torch.Generator().manual_seed(4))).to(dtype)
    seeds = kernels.dropout_seeds("cpu")
    g = feed_forward.gelu_dropout_fwd(hidden, seeds, p)
    _, _, g_again = feed_forward.gelu_dropout_bwd(torch.ones_like(hidden), hidden, seeds, p)
    assert torch.equal(g, g_again)


@pytest.mark.parametrize("stream,gemm", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float64),
                                         (torch.float16, torch.float32)], ids=str)
def test_every_pass_rebuilds_the_same_x_mid(stream, gemm):
    # x_mid = x + dropout(branch), rounded to the stream's dtype, is stored
    # nowhere: the norm forward, the output add and the norm backward each
    # rebuild it and must agree bit for bit (a 1-ulp drift would pass the
    # tolerance-based parity tests)
    N, D, p = 29, 40, 0.3
    g = torch.Generator().manual_seed(6)
    x = torch.randn(N, D, generator=g).to(stream)
    branch = torch.randn(N, D, generator=g).to(gemm)
    w, b = torch.randn(D, generator=g), torch.randn(D, generator=g)
    seeds = kernels.dropout_seeds("cpu")
    x_mid, _, mean, rstd = norm_linear.residual_norm_fwd(x, branch, seeds, feed_forward.BRANCH_SITE, p, w, b, 1e-5,
                                                         gemm, store_x=True)
    # the output add with the stored x_mid as its base (a zero branch adds nothing)
    f = torch.randn(N, D, generator=g).to(gemm)
    out = feed_forward.residual_out(x, branch, f, seeds, p)
    assert torch.equal(out, feed_forward.residual_out(x_mid, torch.zeros_like(branch), f, seeds, p))
    dh = torch.randn(N, D, generator=g)
    rebuilt = norm_linear.residual_norm_bwd(dh, None, x, mean, rstd, w, branch=branch, seeds=seeds,
                                            site=feed_forward.BRANCH_SITE, p=p)
    stored = norm_linear.residual_norm_bwd(dh, None, x_mid, mean, rstd, w)
    assert torch.equal(rebuilt[0], stored[0])


def test_norm_pass_writes_x_itself_for_the_gate(poisoned_allocations):
    # the variable blocks' gate reads x (not x_mid) in its dtype, written by
    # the FFN's first norm pass: exactly x in a wider dtype, and within one
    # bf16 ulp of torch's cast (a GPU rounds to nearest as torch does; the
    # interpreter truncates)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(37, 48, generator=g) * 3
    branch = torch.randn(37, 48, generator=g).to(torch.bfloat16)
    w, b = torch.ones(48), torch.zeros(48)
    seeds = torch.tensor([5, 6, 7])
    wide, low = torch.empty(37, 48, dtype=torch.float64), torch.empty(37, 48, dtype=torch.bfloat16)
    for x_low in (wide, low):
        norm_linear.residual_norm_fwd(x, branch, seeds, 0, 0.2, w, b, 1e-5, torch.bfloat16, x_low=x_low)
    assert torch.equal(wide, x.double())
    ulp = torch.finfo(torch.bfloat16).eps * x.abs()
    assert ((low.float() - x.to(torch.bfloat16).float()).abs() <= ulp).all()


def test_hidden_masks_are_the_philox_reference_masks():
    # the GELU kernel tiles columns in blocks of 256: rows past one block and
    # a width off the block exercise the group numbering across tiles
    N, C, p = 19, 300, 0.5
    seeds = kernels.dropout_seeds("cpu")
    hidden = torch.full((N, C), 3.0, dtype=torch.float64)  # gelu(3) * 2 where kept
    g = feed_forward.gelu_dropout_fwd(hidden, seeds, p)
    keep = philox.keep_mask(seeds[feed_forward.HIDDEN_SITE], (N, C), p)
    expected = torch.where(keep, 2.0 * torch.nn.functional.gelu(hidden), 0.0)
    assert_close(g, expected, atol=1e-12, rtol=1e-12, name="g")
    assert torch.equal(g == 0, ~keep)


@pytest.mark.parametrize("p,dtype", [pytest.param(0.3, torch.bfloat16, marks=needs_gpu_bf16),
                                     pytest.param(0.0, torch.bfloat16, marks=needs_gpu_bf16),
                                     (0.0, torch.float32), (0.3, torch.float64)], ids=str)
def test_dropout_grad_sums_its_own_df_for_the_bias(p, dtype, poisoned_allocations):
    # df = dropout's gradient of dout in the GEMM's dtype, and the second
    # bias's gradient: the column sums of that rounded df, from one pass.
    # 20 blocks of 16 rows over the CPU's 4 persistent programs, a partial last one
    N, D = 317, 200
    stream = torch.float64 if dtype == torch.float64 else torch.float32
    dout = torch.randn(N, D, generator=torch.Generator().manual_seed(8), dtype=stream)
    seeds = kernels.dropout_seeds("cpu")
    df, db = feed_forward.dropout_grad(dout, seeds, p, dtype, stream)
    keep = philox.keep_mask(seeds[feed_forward.OUTPUT_SITE], (N, D), p)
    expected = torch.where(keep, dout / (1.0 - p), 0.0).to(dtype)
    assert df.dtype == dtype and db.dtype == stream and db.shape == (D,)
    # bf16 too: the kernel's casts round to nearest even, as torch's (and, under
    # the interpreter, through tests/interpreter_bf16.py)
    assert_close(df, expected, atol=0, rtol=1e-6, name="df")
    assert_close(db, df.to(stream).sum(0), atol=1e-12 if stream == torch.float64 else 1e-4, rtol=1e-6, name="db")
    if p == 0.0 and dtype == stream:
        assert df.data_ptr() == dout.data_ptr()  # nothing to write: only the sums


def test_draws_are_the_documented_halves_of_philox_words():
    # element (row, col) of a row of n_cols takes half col % 2 of word
    # (col % 8) // 2 of Philox counter row * ceil(n_cols / 8) + col // 8
    # (kernels/philox.py); 13 columns leave a partial group at each row's end
    rows, n_cols, p, seed = 3, 13, 0.3, 123456789
    words = philox.philox4x32(seed, torch.arange(rows * 2))
    expected = torch.empty(rows, n_cols, dtype=torch.bool)
    for row in range(rows):
        for col in range(n_cols):
            word = words[(col % 8) // 2][row * 2 + col // 8]
            expected[row, col] = (word >> (16 * (col % 2))) & 0xFFFF >= round(p * 2**16)
    assert torch.equal(philox.keep_mask(torch.tensor(seed), (rows, n_cols), p), expected)


def test_threshold_resolution_and_refusals():
    assert philox.threshold(0.0) == 0 and philox.threshold(0.1) == 6554 and philox.threshold(0.5) == 2**15
    assert philox.threshold(2**-16) == 1
    for p, what in ((1e-6, "nothing"), (1 - 1e-6, "everything")):
        with pytest.raises(ValueError, match=f"p={p} .* would drop {what}"):
            philox.threshold(p)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        philox.threshold(1.0)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_rate_and_scaling(p):
    # n = 2**20 draws: the kept fraction is binomial, its sd sqrt(p(1-p)/n) < 5e-4
    n = 2**20
    keep = philox.keep_mask(kernels.dropout_seeds("cpu")[0], (n,), p)
    rate = keep.double().mean().item()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(rate - (1 - p)) < 5 * sd, rate
    # inverted dropout keeps the expectation: mean of dropout(1) is 1
    scaled = torch.where(keep, 1.0 / (1.0 - p), 0.0)
    assert abs(scaled.mean().item() - 1.0) < 5 * sd / (1 - p)
    # neighbours are independent (no stripes from the counter layout)
    both = (keep[:-1] & keep[1:]).double().mean().item()
    assert abs(both - (1 - p) ** 2) < 10 * sd
    # each of a Philox call's eight draws keeps at the rate (a half of a word
    # reused, or a draw narrower than 16 bits, would shift one of them)
    per_draw = keep.view(-1, 8).double().mean(0)
    assert ((per_draw - (1 - p)).abs() < 5 * sd * 8**0.5).all(), per_draw


def test_sites_and_seeds_draw_different_masks():
    seeds = kernels.dropout_seeds("cpu")
    masks = [philox.keep_mask(seeds[i], (4096,), 0.5) for i in range(3)]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    assert not torch.equal(masks[0], philox.keep_mask(seeds[0] + 1, (4096,), 0.5))


def test_triton_dropout_draws_every_site(poisoned_allocations):
    # the same seeds give the same output; a new seed at any one site changes
    # the output and every gradient that site's mask reaches
    x, branch = residual_and_branch((4, 6, 32), torch.float64)
    params = ffn_params(32, 40, torch.float64)
    base = torch.tensor([1, 2, 3])

    def run(seeds):
        out = kernels.residual_feed_forward(x, branch, **params, dropout_p=0.4, seeds=seeds, backend="triton")
        return out, torch.autograd.grad(out.sum(), [branch, params["fc1_bias"], params["fc2_weight"]])

    out, grads = run(base)
    again, grads_again = run(base.clone())
    assert torch.equal(out, again) and all(torch.equal(a, b) for a, b in zip(grads, grads_again))
    for site, reaches in ((0, "dbranch"), (1, "dfc1_bias"), (2, "dfc2_weight")):
        seeds = base.clone()
        seeds[site] += 1
        other, other_grads = run(seeds)
        assert not torch.equal(out, other), f"site {site} draws no mask"
        changed = dict(zip(("dbranch", "dfc1_bias", "dfc2_weight"),
                           (not torch.equal(a, b) for a, b in zip(grads, other_grads))))
        assert changed[reaches], f"site {site}: the backward does not redraw its mask"


def test_empty_input_forward_and_backward():
    for recompute in (False, True):
        x, branch = residual_and_branch((0, 16), torch.float32)
        params = ffn_params(16, 24, torch.float32)
        out = kernels.residual_feed_forward(x, branch, **params, dropout_p=0.1, recompute_hidden=recompute,
                                            backend="triton")
        grads = torch.autograd.grad(out.sum(), [x, branch, *params.values()])
        assert out.shape == (0, 16)
        assert all(g.shape == t.shape and not g.any() for g, t in zip(grads, [x, branch, *params.values()]))


def test_strided_seeds_reach_the_kernels_contiguous(monkeypatch):
    # the kernels read seed i at seeds_ptr + i: a strided view would give them
    # other seeds than the reference's seeds[i] (the interpreter copies
    # arguments, so only the arguments can be checked here)
    x, branch = residual_and_branch((3, 5, 16), torch.float64)
    params = ffn_params(16, 24, torch.float64)
    seen, real_op = [], feed_forward._feed_forward_op
    monkeypatch.setattr(feed_forward, "_feed_forward_op", lambda *a: seen.append(a[2]) or real_op(*a))
    seeds = torch.arange(10, 16)[::2]
    out = kernels.residual_feed_forward(x, branch, **params, dropout_p=0.5, seeds=seeds, backend="triton")
    assert seen[0].is_contiguous() and torch.equal(seen[0], seeds)
    ref = kernels.residual_feed_forward(x, branch, **params, dropout_p=0.5, seeds=seeds, backend="reference")
    assert_close(out, ref, **F64, name="out")


def test_half_precision_stream_normalises_the_rounded_residual():
    # with a bf16 residual stream x_mid is rounded to bf16, and the norm it
    # feeds, the output add and the backward (which all rebuild it from x
    # and the branch) must use that rounded value, not the unrounded sum
    x, branch = residual_and_branch((37, 64), torch.bfloat16)
    w, b = torch.ones(64), torch.zeros(64)
    seeds = kernels.dropout_seeds("cpu")
    x_mid, h, _, _ = norm_linear.residual_norm_fwd(x, branch, seeds, 0, 0.2, w, b, 1e-5, torch.float32, store_x=True)
    assert x_mid.dtype == torch.bfloat16
    expected = torch.nn.functional.layer_norm(x_mid.float(), (64,), eps=1e-5)
    assert_close(h, expected, atol=1e-5, rtol=1e-5, name="h")
    # and the whole op agrees with the reference, which rounds it too
    x, branch = residual_and_branch((4, 7, 64), torch.bfloat16)
    params = ffn_params(64, 96, torch.float32)
    out, grads = run_ffn("triton", x, branch, params, 0.2, seeds)
    ref_out, ref_grads = run_ffn("reference", x, branch, params, 0.2, seeds)
    assert out.dtype == torch.bfloat16
    assert_close(out, ref_out, atol=1e-2 * ref_out.abs().max().item(), rtol=0, name="out")
    # gradients of bf16 tensors are bf16: they agree to a rounding (2**-8) of the largest
    for name, a, b in zip(NAMES, grads, ref_grads):
        assert_close(a, b, atol=8e-3 * b.abs().max().item(), rtol=8e-3, name=f"d{name}")


# ------------------------------------------------------------------ the model

TINY = dict(
    d_model=32, n_heads=2, d_ff=48, dropout=0.2, attn_dropout=0.0,
    n_temporal_layers=1, n_variable_layers=1, max_seq_len=12, n_variables=3,
    n_horizons=3, n_quantiles=3, quantiles=[0.1, 0.5, 0.9],
    time_of_day_dim=8, day_of_week_dim=4, day_of_month_dim=4, day_of_year_dim=6,
)


def tiny_model(backend="triton", **changes):
    torch.manual_seed(0)
    model = MIGT_TVDT(MIGTConfig(**{**TINY, **changes}, backend=backend))
    batch = synthetic_batch(2, model.config, seed=2, n_empty=1)
    return model, batch


def train_grads(model, batch, seed=11):
    torch.manual_seed(seed)
    out = model(batch["features"], batch["attention_mask"], batch["temporal_info"])["quantiles"]
    loss = pinball_loss(out, batch["targets"][:, :3], model.config.quantiles)
    return out, torch.autograd.grad(loss, list(model.parameters()))


def test_manual_seed_reproduces_a_training_step_and_another_seed_does_not():
    model, batch = tiny_model()
    model.train()
    out_a, grads_a = train_grads(model, batch, seed=11)
    out_b, grads_b = train_grads(model, batch, seed=11)
    out_c, _ = train_grads(model, batch, seed=12)
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert not torch.equal(out_a, out_c)


@pytest.mark.parametrize("recompute_hidden", [False, True], ids=["keep_hidden", "recompute_hidden"])
def test_checkpointed_and_plain_training_steps_are_equal(recompute_hidden):
    # checkpointing's recompute redraws the dropout seeds from the restored
    # RNG state: the same masks, so the same gradients, bit for bit
    plain, batch = tiny_model(recompute_ffn_hidden=recompute_hidden)
    ckpt, _ = tiny_model(recompute_ffn_hidden=recompute_hidden, activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    plain.train(), ckpt.train()
    out_p, grads_p = train_grads(plain, batch)
    out_c, grads_c = train_grads(ckpt, batch)
    assert torch.equal(out_p, out_c)
    for (name, _), a, b in zip(plain.named_parameters(), grads_p, grads_c):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("mode", ["per_step", "pooled"])
def test_model_agrees_across_backends_in_train_mode_without_dropout(mode):
    results = []
    for backend in ("triton", "sdpa", "reference"):
        model, batch = tiny_model(backend, dropout=0.0, variable_attention=mode)
        results.append(train_grads(model.train(), batch))
    (out_t, g_t), *others = results
    for out, grads in others:
        assert_close(out_t, out, atol=1e-5, rtol=1e-4, name="quantiles")
        for (name, _), a, b in zip(model.named_parameters(), g_t, grads):
            assert_close(a, b, atol=1e-5, rtol=1e-3, name=f"grad of {name}")


def saved_tensors(model, batch):
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train_grads(model, batch)
    params = {p.data_ptr() for p in model.parameters()}
    return [t for t in saved if t.data_ptr() not in params]


@pytest.mark.parametrize("recompute_hidden", [False, True], ids=["keep_hidden", "recompute_hidden"])
def test_fused_blocks_keep_no_dropout_mask_and_one_hidden_at_most(recompute_hidden):
    model, batch = tiny_model(recompute_ffn_hidden=recompute_hidden)
    saved = saved_tensors(model.train(), batch)
    n_blocks = model.config.n_temporal_layers + model.config.n_variable_layers
    hidden = [t for t in saved if t.dim() and t.shape[-1] == model.config.d_ff]
    assert len(hidden) == (0 if recompute_hidden else n_blocks)
    # The plain modules keep a mask per dropout of a (..., D) or (..., d_ff)
    # activation (on the CPU the scaled noise, 0 or 1/(1-p), on CUDA bools);
    # the fused model keeps only the output pool's, on (B, D).
    scale = 1.0 / (1.0 - model.config.dropout)

    def dropout_masks(tensors):
        widths = (model.config.d_model, model.config.d_ff)
        return [tuple(t.shape) for t in tensors
                if t.dim() and t.numel() and t.shape[-1] in widths
                and (t.dtype == torch.bool or (t.is_floating_point() and bool(((t == 0) | (t == scale)).all())))]

    sdpa_model, _ = tiny_model("sdpa")
    sdpa_masks = dropout_masks(saved_tensors(sdpa_model.train(), batch))
    assert len(sdpa_masks) == 3 * n_blocks + 2, sdpa_masks  # + the embedding's and the output pool's
    assert dropout_masks(saved) == [(2, model.config.d_model)]


# ------------------------------------------------------------------ contract


def test_custom_ops_pass_opcheck():
    x, branch = residual_and_branch((2, 5, 16), torch.float32)
    params = ffn_params(16, 24, torch.float32)
    seeds = torch.tensor([5, 6, 7])
    branch_bias = torch.randn(16, requires_grad=True)
    args = (x, branch, seeds, 0.3, params["norm_weight"], params["norm_bias"], 1e-5,
            params["fc1_weight"], params["fc1_bias"], params["fc2_weight"], params["fc2_bias"], True)
    for bias in (None, branch_bias):
        torch.library.opcheck(feed_forward._feed_forward_op, args + (bias, False))
    # float64 residual with float32 weights, hidden not kept: the fakes must
    # give each output's (and each gradient's) real dtype
    x64, branch32 = residual_and_branch((2, 5, 16), torch.float64, torch.float32)
    torch.library.opcheck(feed_forward._feed_forward_op, (x64, branch32, *args[2:-1], False, branch_bias, False))
    # the backward op on its own (opcheck of the forward does not run its fake)
    out, mean, rstd, hidden = feed_forward._feed_forward_op(x64, branch32, *args[2:-1], False, None, False)
    w1, b1, w2 = params["fc1_weight"], params["fc1_bias"], params["fc2_weight"]
    saved = [t.detach() for t in (x64, branch32, mean, rstd, hidden, params["norm_weight"], params["norm_bias"])]
    for bias in (None, branch_bias.detach()):
        torch.library.opcheck(feed_forward._feed_forward_backward_op,
                              (torch.randn_like(out.detach()), *saved[:5], seeds, 0.3, *saved[5:], 1e-5,
                               w1.detach(), b1.detach(), w2.detach(), bias, False))
    w, b = torch.randn(48, 16, requires_grad=True), torch.randn(48, requires_grad=True)
    for pass_residual, bias in ((False, b), (True, b), (True, None)):  # None: the attention kernels add it
        torch.library.opcheck(norm_linear._layer_norm_linear_op,
                              (x, params["norm_weight"], params["norm_bias"], 1e-5, w, bias, pass_residual))
    _, residual, mean, rstd = norm_linear._layer_norm_linear_op(x, params["norm_weight"], params["norm_bias"], 1e-5,
                                                                w, b, True)
    nw, nb = params["norm_weight"].detach(), params["norm_bias"].detach()
    for dresidual, has_bias in ((None, True), (torch.randn(x.shape), True), (None, False)):
        torch.library.opcheck(norm_linear._layer_norm_linear_backward_op,
                              (torch.randn(2, 5, 48), dresidual, residual.detach(), mean.detach(), rstd.detach(),
                               nw, nb, 1e-5, w.detach(), has_bias))


def test_bad_inputs_name_the_argument():
    x, branch = residual_and_branch((2, 5, 16), torch.float32)
    params = ffn_params(16, 24, torch.float32)
    with pytest.raises(ValueError, match=r"branch must have the shape of x \(2, 5, 16\), got \(2, 5, 15\)"):
        kernels.residual_feed_forward(x, branch[..., :15], **params)
    bad = dict(params, fc2_weight=params["fc2_weight"][:, :23])
    with pytest.raises(ValueError, match=r"fc2_weight must have shape \(D, d_ff\) = \(16, 24\), got \(16, 23\)"):
        kernels.residual_feed_forward(x, branch, **bad)
    with pytest.raises(ValueError, match=r"dropout_p must be a float in \[0, 1\), got 1.0"):
        kernels.residual_feed_forward(x, branch, **params, dropout_p=1.0)
    with pytest.raises(ValueError, match=r"seeds must be an int64 tensor of shape \(3,\)"):
        kernels.residual_feed_forward(x, branch, **params, dropout_p=0.1, seeds=torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"all tensors must be on one device, got .*seeds on meta"):
        kernels.residual_feed_forward(x, branch, **params, dropout_p=0.1,
                                      seeds=torch.empty(3, dtype=torch.int64, device="meta"))
    with pytest.raises(ValueError, match=r"weight must have shape \(D_out, D\) = \(8, 16\), got \(8, 15\)"):
        kernels.layer_norm_linear(x, params["norm_weight"], params["norm_bias"], torch.randn(8, 15), torch.randn(8))


def test_unsupported_width_raises_reason_and_auto_falls_back():
    assert kernels._triton_reason("residual_feed_forward", torch.zeros(2, 8193)).startswith("D=8193 is over")
    with pytest.raises(ValueError, match="backend='triton' cannot run this case: D=8193"):
        kernels.fused_block_backend("triton", torch.zeros(2, 8193))
    # on the CPU "auto" never picks triton: the model keeps its plain modules there
    assert kernels.fused_block_backend("auto", torch.zeros(2, 8)) == "sdpa"


def test_block_state_dict_moves_between_backends():
    model, batch = tiny_model("triton")
    other, _ = tiny_model("sdpa", dropout=0.0)
    other.load_state_dict(model.state_dict())
    model.eval(), other.eval()
    args = (batch["features"], batch["attention_mask"], batch["temporal_info"])
    assert_close(model(*args)["quantiles"], other(*args)["quantiles"], atol=1e-5, rtol=1e-4, name="quantiles")


@pytest.mark.parametrize("shape", [(3, 5, 24), (1, 1, 7)], ids=str)
def test_layer_norm_linear_hands_on_the_residual(shape, poisoned_allocations):
    # return_residual=True: (y, a copy of x); the copy's gradient is added
    # to x's in the norm backward, as autograd adds it for x itself
    D = shape[-1]
    g = torch.Generator().manual_seed(8)
    base = [torch.randn(*s, generator=g, dtype=torch.float64) for s in (shape, (D,), (D,), (2 * D, D), (2 * D,))]
    up_y = torch.randn(*shape[:-1], 2 * D, generator=g, dtype=torch.float64)
    up_r = torch.randn(shape, generator=g, dtype=torch.float64)
    results = {}
    for backend in ("triton", "reference"):
        x, nw, nb, w, b = (t.clone().requires_grad_() for t in base)
        y, residual = kernels.layer_norm_linear(x, nw, nb, w, b, return_residual=True, backend=backend)
        assert torch.equal(residual, x)
        grads = torch.autograd.grad((y * up_y).sum() + (residual.sin() * up_r).sum(), (x, nw, nb, w, b))
        results[backend] = (y, grads, residual is x)
    (y_t, g_t, same_t), (y_r, g_r, same_r) = results["triton"], results["reference"]
    assert not same_t and same_r  # the kernel hands on a copy; the reference, x itself
    # only the copy used: its gradient passes straight to x, the rest get none
    x, nw, nb, w, b = (t.clone().requires_grad_() for t in base)
    _, residual = kernels.layer_norm_linear(x, nw, nb, w, b, return_residual=True, backend="triton")
    grads = torch.autograd.grad((residual * up_r).sum(), (x, nw, nb, w, b), allow_unused=True)
    assert torch.equal(grads[0], up_r) and all(g is None for g in grads[1:])
    assert_close(y_t, y_r, **F64, name="y")
    for name, a, b in zip(("x", "norm_weight", "norm_bias", "weight", "bias"), g_t, g_r):
        assert_close(a, b, **F64, name=f"d{name}")


def test_block_input_gradients_join_inside_the_norm_backward():
    # layer_norm_linear hands x on (return_residual): the gradient of the
    # residual use of x is added in its norm backward, not by autograd in a
    # separate (B, V, T, D) float32 pass; in a variable block the block
    # input's three later uses (FFN residual, gate, gated norm) are one node
    # (kernels.gated_feed_forward) that sums their gradients in its own
    # passes. So no float32 stream-sized add runs in the backward at all.
    from torch.utils._python_dispatch import TorchDispatchMode

    class StreamAdds(TorchDispatchMode):
        def __init__(self, shape):
            super().__init__()
            self.shape, self.count, self.seen = shape, 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if isinstance(args[0], torch.Tensor) and tuple(args[0].shape) == self.shape:
                self.seen += 1  # the mode sees the stream's ops: a count of 0 means something
                if func.__name__.split(".")[0] in ("add", "add_") and args[0].dtype == torch.float32:
                    self.count += 1
            return func(*args, **(kwargs or {}))

    model, batch = tiny_model(dropout=0.1)
    # under autocast, as users train (the pooling's own sum is then in fp16)
    with torch.autocast("cpu", dtype=torch.float16):
        out = model.train()(batch["features"], batch["attention_mask"], batch["temporal_info"])["quantiles"]
    cfg = model.config
    adds = StreamAdds((2, cfg.n_variables, batch["features"].shape[1], cfg.d_model))
    with adds:
        out.sum().backward()
    assert cfg.n_temporal_layers >= 1 and cfg.n_variable_layers >= 1
    assert adds.seen > 0 and adds.count == 0


def test_backward_writes_no_zero_gradients_for_the_saved_only_outputs():
    # the statistics and the hidden are outputs only so that autograd
    # keeps them; zero-filling their (N, D) and (N, d_ff) gradients would
    # cost a full write each in every backward
    from torch.utils._python_dispatch import TorchDispatchMode

    class ZeroFills(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.__name__.split(".")[0] in ("zeros", "zeros_like", "zero_", "fill_", "new_zeros"):
                self.elements += out.numel()
            return out

    x, branch = residual_and_branch((4, 8, 32), torch.float32)
    params = ffn_params(32, 64, torch.float32)
    out = kernels.residual_feed_forward(x, branch, **params, dropout_p=0.1, backend="triton")
    y = kernels.layer_norm_linear(out, params["norm_weight"], params["norm_bias"], params["fc1_weight"],
                                  params["fc1_bias"], backend="triton")
    with ZeroFills() as fills:
        y.sum().backward()
    assert fills.elements < 64, fills.elements  # at most a few scalars and (D,) sums
