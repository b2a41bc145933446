"""kernels.linear_keep_input: nn.Linear's product and gradients, with x
itself (not autocast's low-precision copy) kept for the backward."""
import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import linear
from helpers import assert_close


def operands(shape, D, D_out, dtype, *, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_()

    return rand(*shape, D), rand(D_out, D), rand(D_out)


def grads(y, inputs):
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(y.dtype)
    return torch.autograd.grad(y, inputs, upstream)


@pytest.mark.parametrize("shape,D,D_out", [((2, 3), 7, 5), ((1,), 16, 16), ((4, 1, 3), 33, 2)], ids=str)
def test_matches_linear_in_float64(shape, D, D_out):
    x, w, b = operands(shape, D, D_out, torch.float64)
    y = kernels.linear_keep_input(x, w, b)
    ref = F.linear(x, w, b)
    assert y.shape == (*shape, D_out) and y.dtype == torch.float64
    assert_close(y, ref, atol=1e-12, rtol=1e-12, name="y")
    for name, got, want in zip("xwb", grads(y, (x, w, b)), grads(ref, (x, w, b))):
        assert_close(got, want, atol=1e-12, rtol=1e-12, name=f"d{name}")


def test_under_autocast_matches_nn_linear_and_keeps_x_not_a_copy():
    x, w, b = operands((6, 5), 32, 24, torch.float32)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = kernels.linear_keep_input(x, w, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.linear(x, w, b)
    assert y.dtype == ref.dtype == torch.bfloat16
    assert_close(y, ref, atol=1e-2, rtol=1e-2, name="y")
    for name, got, want in zip("xwb", grads(y, (x, w, b)), grads(ref, (x, w, b))):
        assert got.dtype == want.dtype == torch.float32, name
        assert_close(got, want, atol=2e-2 * want.abs().max().item(), rtol=2e-2, name=f"d{name}")
    # what the backward keeps: x itself (same storage) and the bf16 weight,
    # no (..., D) bf16 copy of x
    assert any(t.data_ptr() == x.data_ptr() and t.dtype == torch.float32 for t in saved)
    assert not any(t.dtype == torch.bfloat16 and t.numel() == x.numel() for t in saved), \
        [(t.dtype, tuple(t.shape)) for t in saved]


def test_custom_op_passes_opcheck():
    x, w, b = operands((3, 4), 8, 6, torch.float32)
    torch.library.opcheck(linear._linear_keep_input_op, (x, w, b))
    # a float64 input with float32 weights: the gradient of x comes back in float64
    x64 = x.detach().double().requires_grad_()
    torch.library.opcheck(linear._linear_keep_input_op, (x64, w, b))
    (dx,) = torch.autograd.grad(linear.linear_keep_input(x64, w, b).sum(), (x64,))
    assert dx.dtype == torch.float64


def test_bad_inputs_name_the_argument():
    x, w, b = operands((3,), 8, 6, torch.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(D_out, D\) = \(6, 8\), got \(6, 7\)"):
        kernels.linear_keep_input(x, w[:, :7], b)
    with pytest.raises(ValueError, match=r"bias must have shape \(D_out,\) = \(6,\), got \(5,\)"):
        kernels.linear_keep_input(x, w, b[:5])
    with pytest.raises(TypeError, match=r"x must be float16, bfloat16, float32 or float64, got torch.int64"):
        kernels.linear_keep_input(torch.ones(3, 8, dtype=torch.int64), w, b)
    with pytest.raises(ValueError, match=r"all tensors must be on one device, got .*bias on meta"):
        kernels.linear_keep_input(x, w, torch.empty(6, device="meta"))
