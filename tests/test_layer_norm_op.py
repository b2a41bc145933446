"""kernels.layer_norm on the Triton backend (under the interpreter): parity
with torch's LayerNorm on the output and every gradient, the output dtype
(autocast's when it is on), and what the backward keeps."""
import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import norm_linear
from helpers import assert_close

F64 = dict(atol=1e-10, rtol=1e-9)


def operands(shape, D, dtype, *, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*s, shift=0.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) + shift).to(dtype).requires_grad_()

    return rand(*shape, D, shift=3.0), rand(D, shift=1.0), rand(D)


@pytest.mark.parametrize("shape,D", [((2, 3, 5), 48), ((1,), 7), ((17,), 257), ((0, 4), 16)], ids=str)
def test_matches_float64_layer_norm(shape, D, poisoned_allocations):
    x, w, b = operands(shape, D, torch.float64)
    y = kernels.layer_norm(x, w, b, 1e-5, backend="triton")
    ref = F.layer_norm(x, (D,), w, b, 1e-5)
    assert y.dtype == torch.float64 and y.shape == x.shape
    assert_close(y, ref, **F64, name="y")
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for name, got, want in zip("xwb", torch.autograd.grad(y, (x, w, b), upstream),
                               torch.autograd.grad(ref, (x, w, b), upstream)):
        assert_close(got, want, **F64, name=f"d{name}")


def test_writes_autocasts_dtype_and_keeps_only_x_and_row_statistics():
    x, w, b = operands((4, 9), 32, torch.float32)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = kernels.layer_norm(x, w, b, backend="triton")
        ref = kernels.layer_norm(x, w, b, backend="reference")
    assert y.dtype == ref.dtype == torch.bfloat16
    assert_close(y, ref, atol=2e-2, rtol=1e-2, name="y")
    # x itself, two floats per row and the weight: nothing of x's size in another dtype
    assert any(t.data_ptr() == x.data_ptr() for t in saved)
    assert sorted(t.numel() for t in saved) == sorted([x.numel(), 36, 36, 32]), [t.shape for t in saved]


def test_custom_ops_pass_opcheck():
    x, w, b = operands((3, 4), 16, torch.float32)
    torch.library.opcheck(norm_linear._layer_norm_op, (x, w, b, 1e-5, torch.bfloat16))
    _, mean, rstd = norm_linear._layer_norm_op(x, w, b, 1e-5, torch.float32)
    torch.library.opcheck(norm_linear._layer_norm_backward_op,
                          (torch.randn(3, 4, 16), x.detach(), mean.detach(), rstd.detach(), w.detach()))


def test_bad_inputs_name_the_argument():
    x, w, b = operands((3,), 8, torch.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(D,\) = \(8,\), got \(7,\)"):
        kernels.layer_norm(x, w[:7], b)
    with pytest.raises(TypeError, match=r"x must be float16, bfloat16, float32 or float64, got torch.int32"):
        kernels.layer_norm(torch.ones(3, 8, dtype=torch.int32), w, b)
