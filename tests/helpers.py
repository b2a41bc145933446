"""Input makers and comparisons shared by the kernel tests."""
from __future__ import annotations

import pytest
import torch


def bf16_as_on_gpu() -> bool:
    """Whether Triton kernels compute bfloat16 as a GPU does here (dots of
    the values, casts rounded to nearest even): on a GPU, or under the
    interpreter with tests/interpreter_bf16.py installed (conftest does,
    unless MIGT_PLAIN_INTERPRETER=1)."""
    import interpreter_bf16
    from kernels import _dispatch

    on_gpu = torch.cuda.is_available() and not _dispatch.interpreter_on()
    return on_gpu or interpreter_bf16.INSTALLED


# a test or case whose Triton kernels take bf16 dots or round to bf16
needs_gpu_bf16 = pytest.mark.skipif(not bf16_as_on_gpu(),
                                    reason="the interpreter computes bf16 wrongly without tests/interpreter_bf16.py")
# the 16-bit dtype of an autocast step whose kernels must compute right:
# bf16, as users train, where it can run; else float16
AUTOCAST_16 = torch.bfloat16 if bf16_as_on_gpu() else torch.float16


def random_mask(batch: int, steps: int, *, seed: int = 0, all_padding_sample: bool = True) -> torch.Tensor:
    """(B, T) bool masks like real days: a full day, a short session (prefix),
    days with gaps inside them, and optionally one sample with no valid step."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, steps, dtype=torch.bool)
    for b in range(batch):
        kind = b % 4
        if kind == 1:  # short session: a prefix
            mask[b, int(torch.randint(1, steps, (1,), generator=g)):] = False
        elif kind == 2:  # gaps inside the day
            mask[b] = torch.rand(steps, generator=g) > 0.3
        elif kind == 3:  # late start and early close
            lo = int(torch.randint(0, steps // 2, (1,), generator=g))
            hi = int(torch.randint(steps // 2 + 1, steps + 1, (1,), generator=g))
            mask[b] = False
            mask[b, lo:hi] = True
    if all_padding_sample and batch > 1:
        mask[-1] = False
    return mask


def fused_qkv(batch, n_vars, steps, heads, head_dim, dtype, *, seed=0, requires_grad=True):
    """A fused QKV tensor (B, V, T, 3, H, Dh) and its q, k, v unbind views
    (strided, only the last dim contiguous), as the model produces them."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, n_vars, steps, 3, heads, head_dim, generator=g, dtype=torch.float64)
    qkv = qkv.to(dtype).requires_grad_(requires_grad)
    q, k, v = qkv.unbind(3)
    return qkv, q, k, v


def poison_padding(t: torch.Tensor, mask: torch.Tensor, step_dim: int, value=float("nan")) -> torch.Tensor:
    """A copy of t with every padded step (mask False) set to `value`."""
    shape = [1] * t.dim()
    shape[0], shape[step_dim] = mask.shape
    return torch.where(mask.view(shape), t, torch.full_like(t, value))


def assert_close(actual, expected, *, atol, rtol, name="tensor"):
    """torch.testing.assert_close that also says where the worst element is."""
    actual = actual.detach().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    bad = ~torch.isfinite(actual) & torch.isfinite(expected)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(f"{name}: non-finite value {actual[idx].item()} at {idx} (expected {expected[idx].item()})")
    err = (actual - expected).abs() - (atol + rtol * expected.abs())
    if (err > 0).any():
        idx = tuple(int(i) for i in (err == err.max()).nonzero()[0])
        raise AssertionError(
            f"{name}: {(err > 0).sum().item()} of {err.numel()} elements differ; worst at {idx}: "
            f"{actual[idx].item():.6g} vs {expected[idx].item():.6g} (atol={atol}, rtol={rtol})"
        )


def saved_by(fn):
    """(fn(), the tensors autograd saved for the backward while it ran)."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved
