"""kernels.norm_attention_pool (the final LayerNorm + attention pooling over
T) on the Triton backend, under the interpreter: parity with the reference and
with the model's own modules on the output and every gradient, padding (NaN
included) and series with no valid step, the output dtype under autocast,
what the backward keeps, and argument errors."""
import math

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import pooling, reference
from helpers import assert_close, poison_padding, random_mask, saved_by
from migt.heads import MaskedAttentionPooling

F64 = dict(atol=1e-10, rtol=1e-9)
PARAMS = ("norm_weight", "norm_bias", "key_weight", "key_bias", "query")


def operands(B, V, T, D, dtype=torch.float64, *, seed=0, poison=float("nan")):
    """x (B, V, T, D) with `poison` at padded steps, a mask with a short day,
    gaps and (B > 1) an all-padding sample, and the five parameters."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).requires_grad_()

    mask = random_mask(B, T, seed=seed)
    clean = torch.randn(B, V, T, D, generator=g, dtype=torch.float64) * 2.0 + 0.5
    x = poison_padding(clean, mask, 2, poison).to(dtype).requires_grad_()
    # a key weight large enough that the softmax is far from uniform
    params = (rand(D, shift=1.0), rand(D), rand(D, D, scale=2.0), rand(D), rand(D))
    return x, mask, params


def grads_of(out, inputs, seed=7):
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.autograd.grad(out, inputs, upstream.to(out.dtype))


@pytest.mark.parametrize("shape", [(5, 3, 37, 24), (2, 1, 5, 8), (3, 2, 19, 257), (1, 2, 16, 7), (0, 2, 4, 8)],
                         ids=str)
def test_matches_float64_reference(shape, poisoned_allocations):
    # odd T and D, T below and across tiles (16 rows forward, 4 backward at
    # D <= 256), D past a power of two (fewer rows per tile), one series, an
    # empty batch
    x, mask, params = operands(*shape)
    y = kernels.norm_attention_pool(x, mask, *params, backend="triton")
    ref = kernels.norm_attention_pool(x, mask, *params, backend="reference")
    assert y.dtype == torch.float64 and y.shape == (shape[0], shape[1], shape[3])
    assert_close(y, ref, **F64, name="pooled")
    if y.numel() == 0:
        return
    names = ("x",) + PARAMS
    for name, got, want in zip(names, grads_of(y, (x, *params)), grads_of(ref, (x, *params))):
        if name == "key_bias":  # it shifts every score alike: exactly 0 here, rounding noise in the reference
            assert torch.equal(got, torch.zeros_like(got)) and want.abs().max() < 1e-12
        else:
            assert_close(got, want, **F64, name=f"d{name}")


def test_large_scores_keep_the_softmax_finite():
    # float32 scores in the hundreds: exp overflows unless each slot's max is
    # subtracted and the slots are rescaled to one max when combined
    x, mask, params = operands(3, 2, 40, 16, torch.float32)
    y = kernels.norm_attention_pool(x, mask, *params, scale=100.0, backend="triton")
    x64 = x.detach().double().requires_grad_()
    p64 = tuple(p.detach().double().requires_grad_() for p in params)
    ref = kernels.norm_attention_pool(x64, mask, *p64, scale=100.0, backend="reference")
    assert_close(y, ref, atol=1e-4, rtol=1e-4, name="pooled")
    for name, got, want in zip(("x",) + PARAMS, grads_of(y, (x, *params)), grads_of(ref, (x64, *p64))):
        if name != "key_bias":
            assert_close(got, want, atol=1e-3, rtol=1e-3, name=f"d{name}")


def test_any_mask_layout_reads_the_same_steps():
    # a transposed (column-major) mask and a stride-0 expanded one hold the
    # same values as their contiguous copies: the kernels read by strides
    x, _, params = operands(3, 2, 21, 8, poison=0.0)  # other masks than its own: no NaN stored
    base = random_mask(1, 21, seed=4, all_padding_sample=False)
    for mask in (random_mask(21, 3, seed=5).t(), base.expand(3, 21)):
        assert not mask.is_contiguous()
        y = kernels.norm_attention_pool(x, mask, *params, backend="triton")
        want = kernels.norm_attention_pool(x, mask.contiguous(), *params, backend="triton")
        assert torch.equal(y, want)
        assert torch.equal(grads_of(y, (x,))[0], grads_of(want, (x,))[0])


def test_padding_and_empty_series_give_zeros_and_finite_gradients():
    x, mask, params = operands(4, 2, 21, 16, poison=float("inf"))
    assert not mask[-1].any()
    y = kernels.norm_attention_pool(x, mask, *params, backend="triton")
    dx, *dparams = grads_of(y, (x, *params))
    assert torch.equal(y[-1], torch.zeros_like(y[-1]))
    assert torch.isfinite(y).all() and all(torch.isfinite(d).all() for d in (dx, *dparams))
    padded = ~mask[:, None, :, None].expand_as(dx)
    assert torch.equal(dx[padded], torch.zeros_like(dx[padded]))
    assert dx[:-1][~padded[:-1]].abs().sum() > 0  # valid steps do get gradient
    # whatever a padded step holds, nothing changes
    x2 = torch.where(mask[:, None, :, None], x.detach(), 123.0).requires_grad_()
    y2 = kernels.norm_attention_pool(x2, mask, *params, backend="triton")
    assert torch.equal(y2, y)
    assert torch.equal(grads_of(y2, (x2,))[0], dx)


def test_is_the_models_final_norm_and_pooling_modules():
    """The fused op computes what the sdpa/reference model runs as modules:
    final_norm, then MaskedAttentionPooling, gradients of every parameter
    included (float64, so any difference is a formula's, not rounding's)."""
    B, V, T, D = 3, 2, 13, 16
    x, mask, _ = operands(B, V, T, D)
    torch.manual_seed(3)
    norm, pool = torch.nn.LayerNorm(D).double(), MaskedAttentionPooling(D).double()
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.5)
        norm.bias.normal_()
        pool.key_proj.weight.mul_(8.0)
    module_params = (norm.weight, norm.bias, pool.key_proj.weight, pool.key_proj.bias, pool.query)
    y = kernels.norm_attention_pool(x, mask, *module_params, norm.eps, scale=pool.scale, backend="triton")
    ref = pool(norm(x), mask)
    assert_close(y, ref, **F64, name="pooled")
    # the modules' NaN at padded steps of x reaches norm's output and is masked out after
    for name, got, want in zip(("x",) + PARAMS, grads_of(y, (x, *module_params)), grads_of(ref, (x, *module_params))):
        tol = dict(atol=1e-12, rtol=0.0) if name == "key_bias" else F64
        assert_close(got, want, **tol, name=f"d{name}")


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_autocast_writes_its_dtype_and_computes_in_float32(x_dtype):
    x, mask, params = operands(3, 2, 24, 32, x_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.norm_attention_pool(x, mask, *params, backend="triton")
        ref = kernels.norm_attention_pool(x, mask, *params, backend="reference")
    assert y.dtype == ref.dtype == torch.bfloat16
    # both round a float32 value to nearest even once (the interpreter as a GPU:
    # tests/interpreter_bf16.py): an ulp (2**-7 relative) apart at most, where
    # the two float32 sums, in different orders, straddle a rounding boundary
    assert_close(y, ref, atol=1e-6, rtol=2 ** -7, name="pooled")
    x64 = x.detach().double().requires_grad_()
    p64 = tuple(p.detach().double().requires_grad_() for p in params)
    ref64 = kernels.norm_attention_pool(x64, mask, *p64, backend="reference")
    for name, got, want in zip(("x",) + PARAMS, grads_of(y, (x, *params)), grads_of(ref64, (x64, *p64))):
        if name != "key_bias":
            assert_close(got, want, atol=2e-2, rtol=2e-2, name=f"d{name}")


def test_keeps_only_x_and_a_few_floats_per_series():
    B, V, T, D = 2, 3, 50, 16  # B*V*T above D*D: only x may reach it
    x, mask, params = operands(B, V, T, D, torch.float32)
    y, saved = saved_by(lambda: kernels.norm_attention_pool(x, mask, *params, backend="triton"))
    big = [t for t in saved if t.numel() >= B * V * T]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), [tuple(t.shape) for t in saved]
    per_series = [t for t in saved if t.dim() in (2, 3) and tuple(t.shape[:2]) == (B, V)]
    # the float pooled vector, the softmax max and sum
    assert sorted(t.numel() for t in per_series) == [B * V, B * V, B * V * D], [tuple(t.shape) for t in saved]


def test_custom_ops_pass_opcheck():
    x, mask, params = operands(2, 2, 9, 8, torch.float32)
    nw, nb, kw, kb, q = (p.detach() for p in params)
    kq, c = (kw.t() @ q).requires_grad_(), (kb @ q).requires_grad_()
    args = (x.detach().nan_to_num(), mask, nw, nb, 1e-5, kq, c)
    torch.library.opcheck(pooling._norm_pool_op, args + (torch.bfloat16,))
    with torch.no_grad():
        _, pooled, row_max, row_sum = pooling._norm_pool_op(*args, torch.float32)
    torch.library.opcheck(pooling._norm_pool_backward_op,
                          (torch.randn(2, 2, 8), args[0], mask, nw, nb, 1e-5, kq.detach(), c.detach(), pooled,
                           row_max, row_sum))


def test_default_scale_is_one_over_sqrt_d():
    x, mask, params = operands(2, 1, 6, 9)
    a = kernels.norm_attention_pool(x, mask, *params, backend="reference")
    b = kernels.norm_attention_pool(x, mask, *params, scale=1.0 / math.sqrt(9), backend="reference")
    c = kernels.norm_attention_pool(x, mask, *params, scale=2.0, backend="reference")
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_bad_inputs_name_the_argument():
    x, mask, params = operands(2, 2, 6, 8, torch.float32)
    nw, nb, kw, kb, q = params
    with pytest.raises(ValueError, match=r"x must have 4 dims \(B, V, T, D\), got shape \(2, 6, 8\)"):
        kernels.norm_attention_pool(x[:, 0], mask, *params)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\) = \(2, 6\), got \(2, 5\)"):
        kernels.norm_attention_pool(x, mask[:, :5], *params)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor"):
        kernels.norm_attention_pool(x, mask.float(), *params)
    with pytest.raises(ValueError, match=r"key_weight must have shape \(D, D\) = \(8, 8\), got \(8, 7\)"):
        kernels.norm_attention_pool(x, mask, nw, nb, kw[:, :7], kb, q)
    with pytest.raises(ValueError, match=r"query must have shape \(D,\) = \(8,\), got \(9,\)"):
        kernels.norm_attention_pool(x, mask, nw, nb, kw, kb, torch.zeros(9))
    with pytest.raises(ValueError, match=r"x must have at least one step \(T >= 1\)"):
        kernels.norm_attention_pool(x[:, :, :0], mask[:, :0], *params)
    with pytest.raises(TypeError, match=r"x must be float16, bfloat16, float32 or float64, got torch.int64"):
        kernels.norm_attention_pool(torch.ones(2, 2, 6, 8, dtype=torch.long), mask, *params)


def test_reference_softmax_is_the_modules():
    # the module and the reference share masked_softmax; here its contract
    scores = torch.tensor([[[1.0, float("nan"), 3.0]], [[float("nan")] * 3]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    w = reference.masked_softmax(scores, mask)
    assert_close(w[0, 0], F.softmax(torch.tensor([1.0, float("-inf"), 3.0]), -1), atol=1e-7, rtol=0, name="w")
    assert torch.equal(w[1], torch.zeros(1, 3))
