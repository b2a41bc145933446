"""tests/interpreter_bf16.py: under the interpreter a bf16 tl.dot computes
the float32 product of the values, a float32 -> bf16 cast rounds to nearest
even, bit for bit as torch's (and a GPU's) conversion, and bf16 -> float32
is exact."""
import pytest
import torch

import interpreter_bf16
from kernels import _dispatch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
pytestmark = pytest.mark.skipif(not (_dispatch.interpreter_on() and interpreter_bf16.INSTALLED),
                                reason="checks the interpreter patch, installed by conftest under TRITON_INTERPRET=1")


@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr, BLOCK_K: tl.constexpr):
    rm, rn, rk = tl.arange(0, M), tl.arange(0, N), tl.arange(0, BLOCK_K)
    acc = tl.full((M, N), 1.0, tl.float32)  # the accumulator is added
    for k in range(0, K, BLOCK_K):  # a K loop, as the kernels accumulate
        a = tl.load(a_ptr + rm[:, None] * K + k + rk[None, :])
        b = tl.load(b_ptr + (k + rk[:, None]) * N + rn[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc)


@triton.jit
def _cast_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    tl.store(y_ptr + i, tl.load(x_ptr + i, mask=ok).to(y_ptr.dtype.element_ty), mask=ok)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_dot_is_the_float32_product_of_the_values(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 48, generator=g).to(dtype)
    b = torch.randn(48, 16, generator=g).to(dtype)
    c = torch.empty(16, 16)
    _dot_kernel[(1,)](a, b, c, 16, 16, 48, BLOCK_K=16)
    torch.testing.assert_close(c, a.float() @ b.float() + 1.0, atol=1e-5, rtol=1e-6)


def test_bf16_to_float32_is_exact_for_every_bit_pattern():
    bits = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16)  # all 65536, subnormals and NaN included
    x = bits.view(torch.bfloat16)
    y = torch.empty(x.numel(), dtype=torch.float32)
    _cast_kernel[(triton.cdiv(x.numel(), 4096),)](x, y, x.numel(), BLOCK=4096)
    want = x.float()
    assert torch.equal(y[~want.isnan()], want[~want.isnan()]) and y[want.isnan()].isnan().all()


def test_cast_rounds_to_nearest_even_as_torch():
    g = torch.Generator().manual_seed(1)
    magnitudes = 10.0 ** torch.randint(-44, 39, (6000,), generator=g).float()
    special = torch.tensor([
        float("nan"), -float("nan"), float("inf"), -float("inf"), 0.0, -0.0,
        3.3895e38, -3.4e38,  # round up to infinity / the largest finite bf16
        1e-45, -1.4e-45, 1e-40,  # float32 subnormals
        1.00390625, 1.01171875, -1.00390625,  # exact ties: to the even neighbour
        1.0039063, 0.99999994,  # just above a tie; the carry into the exponent
    ])
    x = torch.cat([torch.randn(6000, generator=g) * magnitudes, special])
    y = torch.empty(x.numel(), dtype=torch.bfloat16)
    _cast_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    want = x.to(torch.bfloat16)
    assert torch.equal(y.view(torch.int16)[~x.isnan()], want.view(torch.int16)[~x.isnan()])
    assert y[x.isnan()].isnan().all()
    # truncation, as the interpreter shipped, would differ on about half
    truncated = (x.view(torch.int32) >> 16).to(torch.int16)
    assert (truncated != want.view(torch.int16)).float().mean() > 0.3
