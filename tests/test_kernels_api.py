"""The public kernel functions with the reference and sdpa backends:
semantics, agreement, padding safety, bad input, backend choice."""
import math

import pytest
import torch

import kernels
from kernels import _dispatch
from helpers import assert_close, fused_qkv, poison_padding, random_mask

AXES = ["time", "variable"]


def naive_attention(q, k, v, mask, axis):
    """Loop-per-row attention on valid rows only: checks the reference itself."""
    B, V, T, H, Dh = q.shape
    out = torch.zeros_like(q, dtype=torch.float64)
    for b in range(B):
        valid = mask[b].nonzero().flatten()
        for h in range(H):
            if axis == "time":
                for var in range(V):
                    if len(valid) == 0:
                        continue
                    qs, ks, vs = (t[b, var, valid, h].double() for t in (q, k, v))
                    p = torch.softmax(qs @ ks.T / math.sqrt(Dh), -1)
                    out[b, var, valid, h] = p @ vs
            else:
                for t in valid:
                    qs, ks, vs = (x[b, :, t, h].double() for x in (q, k, v))
                    p = torch.softmax(qs @ ks.T / math.sqrt(Dh), -1)
                    out[b, :, t, h] = p @ vs
    return out


@pytest.mark.parametrize("axis", AXES)
def test_reference_attention_matches_naive_loop(axis):
    _, q, k, v = fused_qkv(3, 4, 11, 2, 8, torch.float64, requires_grad=False)
    mask = random_mask(3, 11, seed=1)
    got = kernels.masked_attention(q, k, v, mask, axis, backend="reference")
    assert_close(got, naive_attention(q, k, v, mask, axis), atol=1e-12, rtol=1e-12, name="reference")


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("shape", [(4, 5, 37, 2, 16), (4, 24, 70, 3, 32)], ids=["V5-T37-Dh16", "V24-T70-Dh32"])
def test_sdpa_matches_reference_float64_strided(axis, shape):
    qkv, q, k, v = fused_qkv(*shape, torch.float64)
    assert q.stride(-1) == 1 and not q.is_contiguous()
    mask = random_mask(shape[0], shape[2], seed=2)
    grad_out = torch.randn(shape, dtype=torch.float64)
    outs, grads = [], []
    for backend in ("reference", "sdpa"):
        out = kernels.masked_attention(q, k, v, mask, axis, backend=backend)
        (grad,) = torch.autograd.grad(out, qkv, grad_out)
        outs.append(out)
        grads.append(grad)
    assert_close(outs[1], outs[0], atol=1e-12, rtol=1e-10, name="out")
    for i, name in enumerate(("dq", "dk", "dv")):
        assert_close(grads[1][:, :, :, i], grads[0][:, :, :, i], atol=1e-12, rtol=1e-10, name=name)


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)],
                         ids=["fp32", "fp16", "bf16"])
def test_low_precision_close_to_float64(axis, backend, dtype, atol):
    _, q, k, v = fused_qkv(3, 5, 37, 2, 16, dtype, requires_grad=False)
    mask = random_mask(3, 37, seed=3)
    want = kernels.masked_attention(q.double(), k.double(), v.double(), mask, axis, backend="reference")
    got = kernels.masked_attention(q, k, v, mask, axis, backend=backend)
    assert got.dtype == dtype and got.is_contiguous()
    assert_close(got, want, atol=atol, rtol=atol, name=f"{backend} {dtype}")


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), 1e30])
def test_attention_padding_has_no_effect(axis, backend, poison):
    qkv, q, k, v = fused_qkv(4, 5, 23, 2, 8, torch.float64)
    mask = random_mask(4, 23, seed=4)
    out = kernels.masked_attention(q, k, v, mask, axis, backend=backend)
    (grad,) = torch.autograd.grad(out.sum(), qkv)
    bad_qkv = poison_padding(qkv.detach(), mask, 2, poison).requires_grad_()
    bq, bk, bv = bad_qkv.unbind(3)
    bad_out = kernels.masked_attention(bq, bk, bv, mask, axis, backend=backend)
    (bad_grad,) = torch.autograd.grad(bad_out.sum(), bad_qkv)
    assert torch.equal(bad_out, out)
    assert torch.equal(bad_grad, grad)
    # padded rows are exactly zero, and so are gradients at padded steps
    assert (out.permute(0, 2, 1, 3, 4)[~mask] == 0).all()
    assert (grad.permute(0, 2, 1, 3, 4, 5)[~mask] == 0).all()


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_all_padding_sample_gives_zeros(axis, backend):
    qkv, q, k, v = fused_qkv(2, 3, 9, 2, 8, torch.float32)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    out = kernels.masked_attention(q, k, v, mask, axis, backend=backend)
    (grad,) = torch.autograd.grad(out.square().sum() + out.sum(), qkv)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(grad, torch.zeros_like(grad))


def test_attention_custom_scale():
    _, q, k, v = fused_qkv(2, 3, 9, 2, 8, torch.float64, requires_grad=False)
    mask = random_mask(2, 9, seed=5)
    a = kernels.masked_attention(q, k, v, mask, "time", scale=0.5, backend="reference")
    b = kernels.masked_attention(q * (0.5 * math.sqrt(8)), k, v, mask, "time", backend="sdpa")
    assert_close(a, b, atol=1e-12, rtol=1e-10, name="scaled")



@pytest.mark.parametrize("scale", [-0.25, 0.0, float("nan")])
def test_attention_scale_the_kernels_cannot_take(scale):
    # the Triton kernels take each row's max before scaling, which needs a
    # positive scale: an explicit triton call is refused, naming it; the
    # reference takes any scale (a negative one favours the smallest scores)
    _, q, k, v = fused_qkv(2, 3, 16, 2, 16, torch.float32, requires_grad=False)
    mask = random_mask(2, 16, seed=5)
    with pytest.raises(ValueError, match="softmax scale .* is not a positive finite number"):
        kernels.masked_attention(q, k, v, mask, "time", scale=scale, backend="triton")
    if scale == -0.25:
        a = kernels.masked_attention(q, k, v, mask, "time", scale=scale, backend="reference")
        b = kernels.masked_attention(-q * (0.25 * 4.0), k, v, mask, "time", backend="sdpa")
        assert_close(a, b, atol=1e-5, rtol=1e-5, name="negative scale")


@pytest.mark.parametrize("axis", AXES)
def test_triton_attention_with_a_positive_custom_scale(axis):
    _, q, k, v = fused_qkv(2, 3, 16, 2, 16, torch.float64, requires_grad=False)
    q, k, v = q.float(), k.float(), v.float()
    mask = random_mask(2, 16, seed=6)
    a = kernels.masked_attention(q, k, v, mask, axis, scale=0.3, backend="triton")
    b = kernels.masked_attention(q, k, v, mask, axis, scale=0.3, backend="reference")
    assert_close(a, b, atol=2e-5, rtol=2e-5, name="scale 0.3")


# ---------------------------------------------------------------- RevIN


def naive_revin(x, mask, weight, bias, eps):
    B, T, V = x.shape
    y = torch.zeros(B, V, T, dtype=torch.float64)
    mean = torch.zeros(B, V, dtype=torch.float64)
    std = torch.full((B, V), eps, dtype=torch.float64)
    for b in range(B):
        valid = mask[b].nonzero().flatten()
        if len(valid) == 0:
            continue
        xs = x[b, valid].double()  # (n, V)
        mean[b] = xs.mean(0)
        std[b] = (xs.var(0, unbiased=False) + eps**2).sqrt()
        y[b, :, valid] = ((xs - mean[b]) / std[b] * weight.double() + bias.double()).T
    return y, mean, std


def revin_inputs(B=4, T=37, V=5, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale + 3 * scale).to(dtype)
    weight = (1 + 0.1 * torch.randn(V, generator=g, dtype=torch.float64)).to(dtype)
    bias = (0.1 * torch.randn(V, generator=g, dtype=torch.float64)).to(dtype)
    return x, random_mask(B, T, seed=seed), weight, bias


@pytest.mark.parametrize("scale", [1e-4, 1e-3, 1.0, 1e4])
def test_revin_matches_naive(scale):
    x, mask, w, b = revin_inputs(scale=scale)
    y, mean, std = kernels.revin_normalize(x, mask, w, b, backend="reference")
    ny, nmean, nstd = naive_revin(x, mask, w, b, 1e-5)
    assert y.shape == (4, 5, 37) and mean.shape == std.shape == (4, 5)
    assert_close(y, ny, atol=1e-10, rtol=1e-10, name="y")
    assert_close(mean, nmean, atol=1e-12 * scale, rtol=1e-12, name="mean")
    assert_close(std, nstd, atol=1e-12 * scale, rtol=1e-12, name="std")


def test_revin_small_std_not_distorted():
    # 5-minute log returns: std ~1e-3. With eps squared the relative error of
    # std is eps**2 / (2 var) ~ 1e-4; a plain var + eps would inflate it ~3x.
    x, mask, w, b = revin_inputs(scale=1e-3)
    _, _, std = kernels.revin_normalize(x, mask, w, b)
    _, _, nstd = naive_revin(x, mask, w, b, 0.0)
    assert ((std - nstd).abs() / nstd)[:-1].max() < 3e-4


def test_revin_round_trip():
    x, mask, w, b = revin_inputs(scale=1e2)
    y, mean, std = kernels.revin_normalize(x, mask, w, b)
    back = kernels.revin_denormalize(y, mean, std, w, b)  # (B, V, T)
    assert_close(back.transpose(1, 2)[mask], x[mask], atol=1e-9, rtol=1e-12, name="round trip")
    # trailing dims of any shape broadcast, e.g. quantile forecasts (B, V, H, Q)
    q = torch.randn(4, 5, 3, 7, dtype=torch.float64)
    out = kernels.revin_denormalize(q, mean, std, w, b)
    assert_close(out, (q - b[:, None, None]) / w[:, None, None] * std[..., None, None] + mean[..., None, None],
                 atol=1e-12, rtol=1e-12, name="4-D")


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_revin_padding_has_no_effect(poison):
    x, mask, w, b = revin_inputs()
    x.requires_grad_()
    y, mean, std = kernels.revin_normalize(x, mask, w, b)
    loss = y.square().sum() + mean.sum() + std.sum()
    (gx,) = torch.autograd.grad(loss, x)
    bad_x = poison_padding(x.detach(), mask, 1, poison).requires_grad_()
    by, bmean, bstd = kernels.revin_normalize(bad_x, mask, w, b)
    (bgx,) = torch.autograd.grad(by.square().sum() + bmean.sum() + bstd.sum(), bad_x)
    assert torch.equal(by, y) and torch.equal(bmean, mean) and torch.equal(bstd, std)
    assert torch.equal(bgx, gx)
    assert (y.transpose(1, 2)[~mask] == 0).all()


def test_revin_constant_and_empty_series_have_finite_gradients():
    x, mask, w, b = revin_inputs()
    x = torch.full_like(x, 7.0).requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    mask[-1] = False
    y, mean, std = kernels.revin_normalize(x, mask, w, b)
    grads = torch.autograd.grad(y.sum() + std.sum(), (x, w, b))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.allclose(std, torch.full_like(std, 1e-5))
    assert (mean[-1] == 0).all() and (y[-1] == 0).all()


def test_revin_low_precision_stats_in_float32():
    x, mask, w, b = revin_inputs(dtype=torch.bfloat16)
    y, mean, std = kernels.revin_normalize(x, mask, w.float(), b.float())
    assert y.dtype == torch.bfloat16 and mean.dtype == std.dtype == torch.float32


# ------------------------------------------------------ gated residual norm


def test_gated_residual_norm_formula_and_dtype():
    g = torch.Generator().manual_seed(0)
    x, u, gate = (torch.randn(3, 7, 48, generator=g, dtype=torch.float64) for _ in range(3))
    w, b = torch.randn(48, generator=g, dtype=torch.float64), torch.randn(48, generator=g, dtype=torch.float64)
    mu = u.mean(-1, keepdim=True)
    var = u.var(-1, unbiased=False, keepdim=True)
    ln = (u - mu) / torch.sqrt(var + 1e-5) * w + b
    want = x + torch.sigmoid(gate) * (ln - x)
    assert_close(kernels.gated_residual_norm(x, u, gate, w, b), want, atol=1e-12, rtol=1e-12, name="grn")
    half = kernels.gated_residual_norm(x.half(), u.half(), gate.half(), w.float(), b.float())
    assert half.dtype == torch.float16
    assert_close(half, want, atol=2e-2, rtol=2e-2, name="grn fp16")


# ------------------------------------------------------------- bad input


def _qkv(shape=(2, 3, 5, 2, 4), dtype=torch.float32):
    return [torch.randn(shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.update(q=a["q"][0]), r"q must have 5 dims"),
        (lambda a: a.update(k=torch.randn(2, 3, 6, 2, 4)), r"k must have the shape of q \(2, 3, 5, 2, 4\), got \(2, 3, 6, 2, 4\)"),
        (lambda a: a.update(v=a["v"].double()), r"v must have the dtype of q"),
        (lambda a: a.update(q=a["q"].long()), r"q must be float16, bfloat16, float32 or float64"),
        (lambda a: a.update(mask=a["mask"].float()), r"mask must be a bool tensor .* got torch.float32"),
        (lambda a: a.update(mask=a["mask"][:, :4]), r"mask must have shape \(B, T\) = \(2, 5\), got \(2, 4\)"),
        (lambda a: a.update(axis="steps"), r"axis must be one of"),
        (lambda a: a.update(q=a["q"].transpose(-1, -2).contiguous().transpose(-1, -2)), r"q must be contiguous in its last dim"),
        (lambda a: a.update(backend="cuda"), r"backend must be one of"),
    ],
    ids=["q-rank", "k-shape", "v-dtype", "int-q", "mask-dtype", "mask-shape", "axis", "last-stride", "backend"],
)
def test_attention_bad_input_messages(mutate, match):
    q, k, v = _qkv()
    args = dict(q=q, k=k, v=v, mask=torch.ones(2, 5, dtype=torch.bool), axis="time", backend="auto")
    mutate(args)
    with pytest.raises((ValueError, TypeError), match=match):
        kernels.masked_attention(args["q"], args["k"], args["v"], args["mask"], args["axis"], backend=args["backend"])


def test_norm_bad_input_messages():
    x, mask, w, b = revin_inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(V,\) = \(5,\), got \(6,\)"):
        kernels.revin_normalize(x, mask, torch.ones(6), b)
    with pytest.raises(ValueError, match=r"x must have 3 dims \(B, T, V\), got shape \(37, 5\)"):
        kernels.revin_normalize(x[0], mask, w, b)
    with pytest.raises(ValueError, match=r"mean must have shape \(B, V\) = \(4, 5\), got \(4, 6\)"):
        kernels.revin_denormalize(torch.randn(4, 5, 3), torch.randn(4, 6), torch.ones(4, 5), w, b)
    u = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"gate_logits must have the shape of x \(2, 8\), got \(2, 7\)"):
        kernels.gated_residual_norm(u, u, torch.randn(2, 7), torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match=r"bias must have shape \(D,\) = \(8,\), got \(4,\)"):
        kernels.gated_residual_norm(u, u, u, torch.ones(8), torch.zeros(4))


# ---------------------------------------------------------- backend choice


def test_backend_choice_rules(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    ok, unsupported = (lambda: None), (lambda: "V=200 is over 128")
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    assert _dispatch.choose("op", "auto", cpu, ok) == "sdpa"
    assert _dispatch.choose("op", "reference", cpu, ok) == "reference"
    if _dispatch.triton_importable():
        assert _dispatch.choose("op", "auto", cuda, ok) == "triton"
        assert _dispatch.choose("op", "auto", cuda, unsupported) == "sdpa"
        with pytest.raises(ValueError, match="backend='triton' cannot run this case: V=200 is over 128"):
            _dispatch.choose("op", "triton", cuda, unsupported)
    monkeypatch.setenv(_dispatch.ENV_VAR, "reference")
    assert _dispatch.choose("op", "auto", cuda, ok) == "reference"
    assert _dispatch.choose("op", "sdpa", cuda, ok) == "sdpa"  # explicit beats the env
    monkeypatch.setenv(_dispatch.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="MIGT_BACKEND must be one of"):
        _dispatch.choose("op", "auto", cpu, ok)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="tensors are on cpu"):
        _dispatch.choose("op", "triton", cpu, ok)
