"""The Triton backend of kernels.masked_attention (kernels/attention.py):
parity with the float64 reference on the output and on dq, dk, dv, along
both axes; padding safety; deterministic backward; custom-op checks
(opcheck, torch.compile fullgraph); unsupported cases.

On the CPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py), so
shapes are small and odd. On a CUDA machine run with TRITON_INTERPRET=0 to
check the compiled kernels on the GPU. bf16 runs under the interpreter too,
with tests/interpreter_bf16.py (the shipped interpreter's bf16 tl.dot is wrong).
"""
import subprocess
import sys

import pytest
import torch

import kernels
from kernels import _dispatch, reference
from helpers import assert_close, fused_qkv, needs_gpu_bf16, poison_padding, random_mask

pytest.importorskip("triton")
attention = pytest.importorskip("kernels.attention")

ON_GPU = torch.cuda.is_available() and not _dispatch.interpreter_on()
DEVICE = "cuda" if ON_GPU else "cpu"
AXES = ["time", "variable"]
GRAD_NAMES = ("dq", "dk", "dv")


@pytest.fixture(autouse=True)
def nan_filled_buffers(monkeypatch):
    """Every kernel output starts as NaN: an element left unwritten fails."""
    def nan_buffer(shape, like, dtype=None):
        return torch.full(shape, float("nan"), device=like.device, dtype=like.dtype if dtype is None else dtype)
    monkeypatch.setattr(attention, "_new_buffer", nan_buffer)


def make_inputs(shape, dtype, mask, seed=0, poison=float("nan")):
    """Leaf QKV (B, V, T, 3, H, Dh) on DEVICE with `poison` at padded steps, its
    strided q, k, v views, and a float64 copy with clean padding for the reference."""
    clean, _, _, _ = fused_qkv(*shape, dtype, seed=seed, requires_grad=False)
    qkv = poison_padding(clean, mask, 2, poison).to(DEVICE).requires_grad_()
    ref_qkv = clean.double().requires_grad_()
    return qkv, ref_qkv


def run_triton(qkv, mask, axis, grad_out, scale=None):
    q, k, v = qkv.unbind(3)
    assert q.stride(-1) == 1 and not q.is_contiguous()
    out = kernels.masked_attention(q, k, v, mask.to(qkv.device), axis, scale=scale, backend="triton")
    (grad,) = torch.autograd.grad(out, qkv, grad_out)
    return out, grad


def run_reference(ref_qkv, mask, axis, grad_out, scale=None):
    q, k, v = ref_qkv.unbind(3)
    out = reference.attention(q, k, v, mask, axis, scale)
    (grad,) = torch.autograd.grad(out, ref_qkv, grad_out)
    return out, grad


def check_parity(out, grad, ref_out, ref_grad, mask, atol, rtol, grad_tol, grad_rtol=None):
    """grad_tol: the gradients' atol (and rtol unless grad_rtol), or a dict of atols by name."""
    out, grad = out.cpu(), grad.cpu()
    assert out.is_contiguous()
    assert_close(out, ref_out, atol=atol, rtol=rtol, name="out")
    for i, name in enumerate(GRAD_NAMES):
        g_atol = grad_tol[name] if isinstance(grad_tol, dict) else grad_tol
        g_rtol = g_atol if grad_rtol is None else grad_rtol
        assert_close(grad[:, :, :, i], ref_grad[:, :, :, i], atol=g_atol, rtol=g_rtol, name=name)
    # padded steps: exactly zero output and gradients, the all-padding sample included
    assert (out.permute(0, 2, 1, 3, 4)[~mask] == 0).all()
    assert (grad.permute(0, 2, 1, 3, 4, 5)[~mask] == 0).all()


# (B, V, T, H, Dh), dtype, output atol/rtol, gradient atol/rtol. B=5: the masks
# are full, prefix, gaps, late start + early close, and all padding.
CASES = [
    pytest.param((5, 5, 37, 2, 16), torch.float32, 1e-5, 1e-5, id="fp32-V5-T37-Dh16"),
    pytest.param((5, 24, 70, 1, 32), torch.float32, 1e-5, 1e-5, id="fp32-V24-T70-Dh32"),
    # Dh=128 takes other tiles (64x32 forward, 32x32 backward)
    pytest.param((5, 3, 70, 1, 128), torch.float32, 1e-5, 1e-5, id="fp32-V3-T70-Dh128"),
    pytest.param((5, 5, 37, 2, 16), torch.float16, 2e-3, 1e-2, id="fp16-V5-T37-Dh16"),
    pytest.param((5, 24, 70, 1, 32), torch.bfloat16, 2e-2, 5e-2, id="bf16-V24-T70-Dh32",
                 marks=needs_gpu_bf16),
]


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("shape,dtype,tol,grad_tol", CASES)
def test_matches_float64_reference(axis, shape, dtype, tol, grad_tol):
    mask = random_mask(shape[0], shape[2], seed=11)
    qkv, ref_qkv = make_inputs(shape, dtype, mask)
    grad_out = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # NaN in the incoming gradient at padded rows must not matter either:
    # those outputs are constant zeros
    bad_grad_out = poison_padding(grad_out, mask, 2).to(dtype).to(DEVICE)
    out, grad = run_triton(qkv, mask, axis, bad_grad_out)
    assert out.dtype == dtype and grad.dtype == dtype
    ref_out, ref_grad = run_reference(ref_qkv, mask, axis, bad_grad_out.double().cpu().nan_to_num())
    check_parity(out, grad, ref_out, ref_grad, mask, tol, tol, grad_tol)


def test_time_block_skipping_paths():
    """Masks aimed at the loop bounds of the time kernels (64-step blocks):
    a sample starting in its third block, one with two whole padding blocks
    between valid steps, one with a single valid step; custom scale; the
    expanded incoming gradient of out.sum()."""
    B, V, T, H, Dh = 3, 2, 200, 1, 16
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 130:190] = True
    mask[1, 5:11] = True
    mask[1, 195:] = True
    mask[2, 199] = True
    qkv, ref_qkv = make_inputs((B, V, T, H, Dh), torch.float32, mask, seed=3, poison=float("inf"))
    q, k, v = qkv.unbind(3)
    out = kernels.masked_attention(q, k, v, mask.to(DEVICE), "time", scale=0.3, backend="triton")
    (grad,) = torch.autograd.grad(out.sum(), qkv)
    rq, rk, rv = ref_qkv.unbind(3)
    ref_out = reference.attention(rq, rk, rv, mask, "time", 0.3)
    (ref_grad,) = torch.autograd.grad(ref_out.sum(), ref_qkv)
    check_parity(out, grad, ref_out, ref_grad, mask, 1e-5, 1e-5, 1e-5)


def test_time_spans_ending_on_block_boundaries():
    """The time loops run over [first valid step's block, last valid step + 1)
    with no per-block branch: a span whose last step is the last of a
    64-step block (63, 127) or the first of one (64) must keep that key and
    query, and a span starting on a boundary must not read the block before."""
    B, V, T, H, Dh = 4, 1, 131, 1, 16
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, :64] = True
    mask[1, 1:128] = True
    mask[2, 64:65] = True
    mask[3, 63:129] = True
    qkv, ref_qkv = make_inputs((B, V, T, H, Dh), torch.float32, mask, seed=7)
    grad_out = torch.randn((B, V, T, H, Dh), dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    out, grad = run_triton(qkv, mask, "time", grad_out.float().to(DEVICE))
    ref_out, ref_grad = run_reference(ref_qkv, mask, "time", grad_out)
    check_parity(out, grad, ref_out, ref_grad, mask, 1e-5, 1e-5, 1e-5)


@pytest.mark.parametrize("axis", AXES)
def test_backward_is_deterministic(axis):
    shape = (3, 5, 37, 2, 16)
    mask = random_mask(3, 37, seed=5)
    qkv, _ = make_inputs(shape, torch.float32, mask)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    _, first = run_triton(qkv, mask, axis, grad_out)
    _, second = run_triton(qkv, mask, axis, grad_out)
    assert torch.equal(first, second)


def test_all_padding_batch_gives_zeros():
    qkv, _ = make_inputs((2, 3, 9, 1, 16), torch.float32, torch.ones(2, 9, dtype=torch.bool))
    mask = torch.zeros(2, 9, dtype=torch.bool, device=DEVICE)
    q, k, v = qkv.unbind(3)
    for axis in AXES:
        out = kernels.masked_attention(q, k, v, mask, axis, backend="triton")
        (grad,) = torch.autograd.grad(out.square().sum() + out.sum(), qkv)
        assert torch.equal(out, torch.zeros_like(out))
        assert torch.equal(grad, torch.zeros_like(grad))


# --------------------------------------------------------------- custom ops


@pytest.mark.parametrize("axis", AXES)
def test_opcheck(axis):
    _, q, k, v = fused_qkv(2, 3, 9, 1, 16, torch.float32, requires_grad=False)
    q, k, v = (t.to(DEVICE).requires_grad_() for t in (q, k, v))
    mask = random_mask(2, 9, seed=6).to(DEVICE)
    torch.library.opcheck(torch.ops.migt.masked_attention_fwd.default, (q, k, v, mask, axis, 0.25))


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_opcheck_qkvpacked(axis, with_bias):
    qkv, _, _, _ = fused_qkv(2, 3, 9, 1, 16, torch.float32)
    mask = random_mask(2, 9, seed=6).to(DEVICE)
    bias = torch.randn(3 * 16, device=DEVICE).requires_grad_() if with_bias else None
    torch.library.opcheck(torch.ops.migt.masked_attention_qkvpacked_fwd.default,
                          (qkv.detach().to(DEVICE).requires_grad_(), bias, mask, axis, 0.25))


# (B, V, T, H, Dh), dtype, atol/rtol, and for bf16 each gradient's atol as a
# share of its largest |value|: the bias (std 2) makes gradients up to ~16,
# and q + bq is rounded to bf16 as the GEMM's epilogue rounds it, so dk's
# worst error is 1.3% of its largest (0.21 along time, where the reference
# run in bf16 is off by 0.16); dq's 0.8%, dv's 0.3%.
BIAS_CASES = [
    pytest.param((5, 5, 37, 2, 16), torch.float32, 1e-5, None, id="fp32-V5-T37-Dh16"),
    # two key and query blocks along time and two heads: the bias enters
    # every loop iteration, and the host's sum of the partial rows must
    # keep heads and blocks apart
    pytest.param((5, 3, 70, 2, 32), torch.float32, 1e-5, None, id="fp32-V3-T70-H2-Dh32"),
    pytest.param((5, 5, 37, 2, 16), torch.float16, 1e-2, None, id="fp16-V5-T37-Dh16"),
    pytest.param((5, 24, 70, 2, 32), torch.bfloat16, 5e-2, 2e-2, id="bf16-V24-T70-H2-Dh32", marks=needs_gpu_bf16),
]


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("shape,dtype,tol,grad_share", BIAS_CASES)
def test_packed_bias_matches_float64_reference(axis, shape, dtype, tol, grad_share):
    """attention(qkv + bias) with the bias added and its gradient summed in
    the kernels: output, dqkv and dbias against the float64 reference of
    qkv + bias; k's bias gradient exactly 0 (the softmax cancels k's bias)."""
    mask = random_mask(shape[0], shape[2], seed=12)
    qkv, ref_qkv = make_inputs(shape, dtype, mask, seed=4)
    H, Dh = shape[3], shape[4]
    bias64 = torch.randn(3 * H * Dh, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    bias = bias64.to(dtype).to(DEVICE).requires_grad_()
    ref_bias = bias.detach().double().cpu().requires_grad_()  # the same rounded values
    grad_out = poison_padding(torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)),
                              mask, 2)
    out = kernels.masked_attention_qkvpacked(qkv, mask.to(DEVICE), axis, bias=bias, backend="triton")
    grad, dbias = torch.autograd.grad(out, (qkv, bias), grad_out.to(dtype).to(DEVICE))
    rq, rk, rv = (ref_qkv + ref_bias.view(3, H, Dh)).unbind(3)
    ref_out = reference.attention(rq, rk, rv, mask, axis)
    ref_grad, ref_dbias = torch.autograd.grad(ref_out, (ref_qkv, ref_bias), grad_out.nan_to_num())
    grad_tol = tol if grad_share is None else {
        name: grad_share * ref_grad[:, :, :, i].abs().max().item() for i, name in enumerate(GRAD_NAMES)}
    check_parity(out, grad, ref_out, ref_grad, mask, tol, tol, grad_tol, grad_rtol=tol)
    dbias, ref_dbias = dbias.cpu().view(3, H, Dh), ref_dbias.view(3, H, Dh)
    assert dbias.dtype == dtype
    for i, name in ((0, "dbq"), (2, "dbv")):
        assert_close(dbias[i], ref_dbias[i], atol=tol * 10, rtol=tol, name=name)
    assert torch.equal(dbias[1], torch.zeros_like(dbias[1])) and ref_dbias[1].abs().max() < 1e-10


def test_packed_bias_on_other_backends_is_added_to_qkv():
    mask = random_mask(3, 11, seed=1)
    qkv, _, _, _ = fused_qkv(3, 2, 11, 2, 16, torch.float64, requires_grad=False)
    bias = torch.randn(3 * 2 * 16, dtype=torch.float64)
    for backend in ("sdpa", "reference"):
        got = kernels.masked_attention_qkvpacked(qkv, mask, "time", bias=bias, backend=backend)
        want = kernels.masked_attention_qkvpacked(qkv + bias.view(3, 2, 16), mask, "time", backend=backend)
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match=r"bias must have shape \(3 \* H \* Dh,\) = \(96,\), got \(95,\)"):
        kernels.masked_attention_qkvpacked(qkv, mask, "time", bias=bias[:95], backend="reference")


class TwoAxisAttention(torch.nn.Module):
    """Time then variable attention from one fused QKV tensor, as the model
    does: through unbind views, and through the packed entry point."""

    def forward(self, qkv, mask):
        q, k, v = qkv.unbind(3)
        along_time = kernels.masked_attention(q, k, v, mask, "time", backend="triton")
        along_vars = kernels.masked_attention_qkvpacked(qkv, mask, "variable", backend="triton")
        return along_time + 2 * along_vars


def test_torch_compile_fullgraph():
    mask = random_mask(2, 9, seed=7)
    qkv, _ = make_inputs((2, 3, 9, 1, 16), torch.float32, mask)
    mask = mask.to(DEVICE)
    eager = TwoAxisAttention()(qkv, mask)
    (eager_grad,) = torch.autograd.grad(eager.sum(), qkv)
    torch._dynamo.reset()
    compiled = torch.compile(TwoAxisAttention(), fullgraph=True)(qkv, mask)
    (compiled_grad,) = torch.autograd.grad(compiled.sum(), qkv)
    # inductor may fuse the sum of the two outputs differently (e.g. an fma)
    assert_close(compiled, eager, atol=1e-6, rtol=1e-6, name="compiled out")
    assert_close(compiled_grad, eager_grad, atol=1e-6, rtol=1e-6, name="compiled grad")


# ------------------------------------------------------------ packed QKV


@pytest.mark.parametrize("axis", AXES)
def test_qkvpacked_matches_unbind_views_bitwise(axis):
    shape = (3, 5, 37, 2, 16)
    mask = random_mask(3, 37, seed=9)
    qkv, _ = make_inputs(shape, torch.float32, mask)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    out, grad = run_triton(qkv, mask, axis, grad_out)
    packed = kernels.masked_attention_qkvpacked(qkv, mask.to(DEVICE), axis, backend="triton")
    (packed_grad,) = torch.autograd.grad(packed, qkv, grad_out)
    assert torch.equal(packed, out)
    assert torch.equal(packed_grad, grad) and packed_grad.is_contiguous()


def test_qkvpacked_other_backends_and_bad_input():
    qkv, q, k, v = fused_qkv(2, 3, 9, 1, 16, torch.float32, requires_grad=False)
    mask = random_mask(2, 9, seed=10)
    for backend in ("sdpa", "reference"):
        got = kernels.masked_attention_qkvpacked(qkv, mask, "variable", backend=backend)
        assert torch.equal(got, kernels.masked_attention(q, k, v, mask, "variable", backend=backend))
    with pytest.raises(ValueError, match=r"qkv must have size 3 in dim 3 .* got shape \(2, 3, 9, 2, 1, 16\)"):
        kernels.masked_attention_qkvpacked(qkv[:, :, :, :2], mask, "time")
    with pytest.raises(ValueError, match=r"qkv must have 6 dims"):
        kernels.masked_attention_qkvpacked(q, mask, "time")


# ----------------------------------------------------- support and dispatch


@pytest.mark.parametrize(
    "shape,dtype,axis,reason",
    [
        ((1, 2, 3, 1, 8), torch.float32, "time", r"head dim Dh=8 is not supported"),
        ((1, 2, 3, 1, 16), torch.float64, "time", r"dtype torch.float64 is not supported"),
        ((1, 129, 3, 1, 16), torch.float32, "variable", r"V=129 is over 128"),
        ((1, 1, 4097, 1, 16), torch.float32, "time", r"T=4097 is over 4096"),
        ((1, 65, 3, 1, 128), torch.float32, "variable", r"float32 along variables with V=65 > 64 and Dh=128 > 64 does not fit shared memory"),
    ],
    ids=["Dh8", "fp64", "V129", "T4097", "fp32-V65-Dh128-variable"],
)
def test_explicit_triton_on_unsupported_case_raises_reason(shape, dtype, axis, reason):
    q = torch.zeros(shape, dtype=dtype, device=DEVICE)
    mask = torch.ones(shape[0], shape[2], dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match=r"backend='triton' cannot run this case: " + reason):
        kernels.masked_attention(q, q, q, mask, axis, backend="triton")


def test_time_stride_too_large_for_int32_offsets_is_unsupported():
    q = torch.empty(1, 1, 4096, 1, 16, device="meta").as_strided((1, 1, 4096, 1, 16), (0, 0, 2**20, 16, 1))
    assert "too large for T=4096" in attention.unsupported_reason(q, q, q, None, "time")
    assert attention.unsupported_reason(q, q, q, None, "variable") is None


def test_real_shapes_are_supported():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for head_dim in (16, 32, 64, 128):
            q = torch.empty(128, 24, 288, 8, head_dim, dtype=dtype, device="meta")
            for axis in AXES:
                assert attention.unsupported_reason(q, q, q, None, axis) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks triton on CUDA")
def test_auto_on_cpu_stays_sdpa(monkeypatch):
    def must_not_run(*args):
        raise AssertionError("auto ran the Triton kernel on the CPU")
    monkeypatch.setattr(attention, "attention_fwd", must_not_run)
    _, q, k, v = fused_qkv(2, 3, 9, 1, 16, torch.float32, requires_grad=False)
    mask = random_mask(2, 9, seed=8)
    got = kernels.masked_attention(q, k, v, mask, "time")
    assert torch.equal(got, kernels.masked_attention(q, k, v, mask, "time", backend="sdpa"))


def test_kernels_work_without_triton():
    # triton blocked from import: the reference and sdpa backends still run,
    # auto falls back, and an explicit "triton" says why it cannot
    code = """
import sys
sys.modules["triton"] = None
import torch, kernels
q = torch.randn(1, 2, 5, 1, 16)
mask = torch.ones(1, 5, dtype=torch.bool)
out = kernels.masked_attention(q, q, q, mask, "time")
assert torch.equal(out, kernels.masked_attention(q, q, q, mask, "time", backend="sdpa"))
try:
    kernels.masked_attention(q, q, q, mask, "time", backend="triton")
except ValueError as err:
    assert "triton is not installed" in str(err), err
else:
    raise AssertionError("backend='triton' ran without triton")
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
