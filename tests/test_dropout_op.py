"""kernels.dropout (dropout whose mask is never stored; the model's
embedding fuses the same mask into kernels.value_embedding): the Triton row
kernel of kernels/feed_forward.py under the interpreter, with
keep bits drawn from seeds[0] and redrawn in the backward. Parity with the
Philox replica of the reference backend, the keep rate and scale, seeds and
reproducibility, what the backward keeps (the seed only), the op contract
and the argument checks."""

import pytest
import torch

import kernels
from helpers import assert_close, saved_by
from kernels import philox
from kernels import seeded_dropout as dropout_module

TOL = {torch.float64: dict(atol=1e-14, rtol=1e-14), torch.float32: dict(atol=1e-7, rtol=1e-6),
       torch.bfloat16: dict(atol=0.0, rtol=1e-2), torch.float16: dict(atol=0.0, rtol=1e-3)}


@pytest.fixture
def poisoned(poisoned_allocations):
    assert dropout_module.torch is not torch  # the fixture reaches the op's host code


def seeds3():
    # three seeds: the op must use seeds[0], not another site's
    return torch.tensor([1234567, -987654321, 42], dtype=torch.int64)


def randn(*shape, dtype=torch.float64, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


def forward_backward(backend, x, p, seeds, *, upstream_seed=7):
    y = kernels.dropout(x, p, seeds=seeds, backend=backend)
    upstream = randn(*y.shape, dtype=y.dtype, seed=upstream_seed, requires_grad=False)
    (dx,) = torch.autograd.grad(y, x, upstream)
    return y, dx, upstream


# ------------------------------------------------------------------ the mask


@pytest.mark.parametrize("shape", [(37, 48), (5, 257), (3, 1), (2, 3, 7), (4, 33)], ids=str)
def test_triton_mask_is_the_philox_replica_of_seed_0(shape, poisoned):
    # dropout(1): kept elements read 1/(1-p), the rest 0. D off a multiple of
    # 4 puts a partial Philox group at every row's end
    p = 0.25
    seeds = seeds3()
    y = kernels.dropout(torch.ones(shape), p, seeds=seeds, backend="triton")
    keep = philox.keep_mask(seeds[0], shape, p)
    assert torch.equal(y, torch.where(keep, 1.0 / (1.0 - p), 0.0))
    assert torch.equal(kernels.dropout(torch.ones(shape), p, seeds=seeds, backend="reference"), y)
    # another seed draws another mask
    other = kernels.dropout(torch.ones(shape), p, seeds=seeds[1:], backend="triton")
    assert not torch.equal(other, y) or y.numel() < 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["fp32", "fp64", "bf16", "fp16"])
@pytest.mark.parametrize("shape", [(6, 7), (3, 5, 33), (0, 33), (2, 0, 7), (9, 256), (1, 1)], ids=str)
@pytest.mark.parametrize("p", [0.1, 0.6])
def test_output_and_gradient_match_the_reference(dtype, shape, p, poisoned):
    x = randn(*shape, dtype=dtype)
    seeds = seeds3()
    y, dx, upstream = forward_backward("triton", x, p, seeds)
    ref_y, ref_dx, _ = forward_backward("reference", x, p, seeds)
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == x.shape and dx.shape == x.shape
    assert y.is_contiguous()
    assert_close(y, ref_y, **TOL[dtype], name="y")
    assert_close(dx, ref_dx, **TOL[dtype], name="dx")
    # dropped exactly where the reference drops
    keep = philox.keep_mask(seeds[0], shape, p)
    assert torch.equal(y == 0, ~keep | (x == 0))
    assert torch.equal(dx == 0, ~keep | (upstream == 0))


def test_strided_input_and_seeds(poisoned):
    # a transposed view is dropped by logical position; a seeds view with a
    # storage offset gives its own first element
    base = randn(33, 6)
    x = base.t()  # (6, 33), not contiguous
    seeds = torch.tensor([3, 99, 5, 8])[1::2]  # seeds[0] == 99
    y, dx, _ = forward_backward("triton", x, 0.4, seeds)
    ref_y, ref_dx, _ = forward_backward("reference", x, 0.4, torch.tensor([99]))
    assert_close(y, ref_y, **TOL[torch.float64], name="y")
    assert_close(dx, ref_dx, **TOL[torch.float64], name="dx")


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_and_scaling(p):
    # n = 2**18 draws through the kernel: the kept fraction is binomial with
    # sd sqrt(p(1-p)/n) <= 1e-3
    rows, D = 256, 1024
    n = rows * D
    x = torch.ones(rows, D, requires_grad=True)
    y = kernels.dropout(x, p, seeds=torch.tensor([2024]), backend="triton")
    keep = y != 0
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(keep.double().mean().item() - (1 - p)) < 5 * sd
    # every kept element is scaled by exactly 1/(1-p), so dropout keeps the mean
    assert torch.equal(y[keep], torch.full((int(keep.sum()),), 1.0 / (1.0 - p)))
    assert abs(y.double().mean().item() - 1.0) < 5 * sd / (1 - p)
    # no stripes from the counter layout: each of the four words of a Philox
    # call, and neighbouring columns, are kept at the right rate
    for word in range(4):
        sd_word = (p * (1 - p) / (n / 4)) ** 0.5
        assert abs(keep[:, word::4].double().mean().item() - (1 - p)) < 5 * sd_word, word
    both = (keep[:, :-1] & keep[:, 1:]).double().mean().item()
    assert abs(both - (1 - p) ** 2) < 10 * sd
    # the gradient is scaled the same way
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(dx, y.detach())


def test_gradient_redraws_the_forward_mask(poisoned):
    x = randn(11, 40)
    seeds = seeds3()
    y = kernels.dropout(x, 0.5, seeds=seeds, backend="triton")
    upstream = randn(11, 40, seed=3, requires_grad=False)
    (dx,) = torch.autograd.grad(y, x, upstream)
    kept = y.detach() != 0
    assert 0.3 < kept.double().mean().item() < 0.7
    assert torch.equal(dx != 0, kept)
    assert_close(dx, torch.where(kept, upstream * 2.0, 0.0), atol=0, rtol=0, name="dx")


def test_double_backward(poisoned):
    # dropout with a fixed mask is linear in x: its backward is the same
    # dropout, whose own backward is again the same
    seeds = seeds3()
    x = randn(3, 10)
    torch.autograd.gradcheck(lambda t: kernels.dropout(t, 0.3, seeds=seeds, backend="triton"), (x,))
    torch.autograd.gradgradcheck(lambda t: kernels.dropout(t, 0.3, seeds=seeds, backend="triton"), (x,))


# ------------------------------------------------------------------ seeds


def test_manual_seed_reproduces_the_default_seed():
    x = randn(6, 33)

    def run(seed, backend="triton"):
        torch.manual_seed(seed)
        y = kernels.dropout(x, 0.3, backend=backend)
        return y, torch.autograd.grad(y.sum(), x)[0]

    y_a, dx_a = run(11)
    y_b, dx_b = run(11)
    y_c, _ = run(12)
    assert torch.equal(y_a, y_b) and torch.equal(dx_a, dx_b)
    assert not torch.equal(y_a, y_c)
    # the default seed is one fresh draw of dropout_seeds, the same on every backend
    torch.manual_seed(11)
    expected = kernels.dropout(x, 0.3, seeds=kernels.dropout_seeds("cpu", 1), backend="reference")
    assert_close(y_a, expected, **TOL[torch.float64], name="y")
    assert_close(run(11, "reference")[0], y_a, **TOL[torch.float64], name="y")


def test_p0_is_the_input_itself():
    # no node and no copy: the gradient passes straight through
    x = randn(4, 9)
    for backend in ("triton", "reference", "sdpa"):
        assert kernels.dropout(x, 0.0, backend=backend) is x
        assert kernels.dropout(x, 0, seeds=torch.empty(0, dtype=torch.int64), backend=backend) is x
    # the op itself (called directly) returns a copy with p == 0 or no seed
    for seeds, p in ((seeds3(), 0.0), (torch.empty(0, dtype=torch.int64), 0.5)):
        y = dropout_module._dropout_op(x, seeds, p)
        assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()
        (dx,) = torch.autograd.grad(y, x, torch.full_like(y, 3.0))
        assert torch.equal(dx, torch.full_like(x, 3.0))


# ------------------------------------------------------------------ what the backward keeps


def test_backward_keeps_only_the_seed():
    x = randn(5, 7, 33)
    seeds = seeds3()
    y, saved = saved_by(lambda: kernels.dropout(x, 0.2, seeds=seeds, backend="triton"))
    assert len(saved) == 1, [(t.dtype, tuple(t.shape)) for t in saved]
    assert saved[0].dtype == torch.int64 and saved[0].data_ptr() == seeds.data_ptr()
    # the reference, by contrast, keeps a mask
    _, ref_saved = saved_by(lambda: kernels.dropout(x, 0.2, seeds=seeds, backend="reference"))
    assert any(t.dtype == torch.bool and t.shape == x.shape for t in ref_saved)


# ------------------------------------------------------------------ contract


def test_custom_ops_pass_opcheck():
    seeds = seeds3()
    for x in (randn(3, 5, 33, dtype=torch.float32), randn(4, 7), randn(0, 5), randn(6)):
        torch.library.opcheck(dropout_module._dropout_op, (x, seeds, 0.3))
    torch.library.opcheck(dropout_module._dropout_op, (randn(4, 7), torch.empty(0, dtype=torch.int64), 0.3))


def test_bad_inputs_name_the_argument():
    x = randn(2, 5, 16, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"p must be a float in \[0, 1\), got 1.0"):
        kernels.dropout(x, 1.0)
    with pytest.raises(ValueError, match=r"p must be a float in \[0, 1\), got -0.1"):
        kernels.dropout(x, -0.1)
    with pytest.raises(ValueError, match=r"p must be a float in \[0, 1\), got '0.1'"):
        kernels.dropout(x, "0.1")
    with pytest.raises(ValueError, match=r"p must be a float in \[0, 1\), got tensor"):
        kernels.dropout(x, torch.tensor(0.1))
    with pytest.raises(ValueError, match=r"seeds must be a 1-D int64 tensor with at least 1 element .*"
                                         r"got torch.float32 of shape \(3,\)"):
        kernels.dropout(x, 0.1, seeds=torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"seeds must be a 1-D int64 tensor .*got torch.int64 of shape \(0,\)"):
        kernels.dropout(x, 0.1, seeds=torch.empty(0, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"seeds must be a 1-D int64 tensor .*got torch.int64 of shape \(\)"):
        kernels.dropout(x, 0.1, seeds=torch.tensor(5))
    with pytest.raises(ValueError, match=r"seeds must be a 1-D int64 tensor .*of shape \(1, 3\)"):
        kernels.dropout(x, 0.1, seeds=torch.ones(1, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"seeds must be a torch.Tensor, got list"):
        kernels.dropout(x, 0.1, seeds=[1, 2])
    with pytest.raises(ValueError, match=r"all tensors must be on one device, got x on cpu, seeds on meta"):
        kernels.dropout(x, 0.1, seeds=torch.empty(1, dtype=torch.int64, device="meta"))
    with pytest.raises(TypeError, match=r"x must be float16, bfloat16, float32 or float64, got torch.int64"):
        kernels.dropout(torch.ones(3, 4, dtype=torch.int64), 0.1)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got list"):
        kernels.dropout([1.0, 2.0], 0.1)
    with pytest.raises(ValueError, match=r"x must have at least one dim \(\.\.\., D\)"):
        kernels.dropout(torch.tensor(1.0), 0.1)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        kernels.dropout(x, 0.0, backend="cuda")


def test_unsupported_width_raises_reason_and_auto_falls_back():
    wide = torch.ones(2, 8193)
    assert kernels._triton_reason("dropout", wide) == "D=8193 is over 8192 (a row must fit one block)"
    with pytest.raises(ValueError, match=r"dropout: backend='triton' cannot run this case: D=8193"):
        kernels.dropout(wide, 0.1, backend="triton")
    assert kernels._triton_reason("dropout", torch.ones(2, 8192)) is None
    # on the CPU "auto" runs the reference (the same mask)
    seeds = seeds3()
    assert torch.equal(kernels.dropout(wide, 0.1, seeds=seeds),
                       kernels.dropout(wide, 0.1, seeds=seeds, backend="reference"))
