"""Fused masked RevIN (the "triton" backend of kernels.revin_normalize).

Forward: one program per (sample b, block of BLOCK_V variables) reads x
(B, T, V) by strides, computes the masked mean and biased variance over the
valid steps, and writes y already transposed to (B, V, T), plus mean and std.
Backward: the same grid recomputes z = (x - mean) / std from the saved stats
and writes dx (the gradient flows through y, mean and std), plus per-program
partial sums for dweight and dbias, which one host-side sum adds over B (a
two-stage, atomic-free and so bitwise deterministic reduction). Gradients
that do not exist are not made: no zero-filled gradient for an unused mean
or std, no dx for features that need none.

The kernels take microseconds; host overhead decides this op's time, so a
forward and backward costs two Triton launches and one torch op, with no
host sync, and eager calls skip the custom op's dispatch (see
docs/kernel-tuning.md).

Statistics run in float32 (float64 for float64 input). The mean is found in
two steps (a rough mean, then the mean of x - rough), so series sitting far
from zero (prices near 1e4 with a std near 1) keep their precision; the
variance is the corrected two-pass form, never sum(x**2) - sum(x)**2.
Padded steps are excluded by masked loads with other=0 and tl.where, so NaN
or inf stored there reaches nothing.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ._launch import INT32_LIMIT, cdiv, int32_indexable, max_offset, next_power_of_2, split_float32
from .reference import compute_dtype

# Launch parameters (chosen by reasoning, not yet tuned on a GPU): 8
# variables x 128 steps per tile. 8 float32 variables are one 32-byte sector
# of a row of x; B * ceil(V / 8) programs (192 at B=64, V=24) keep the SMs
# busier than one program per sample would.
BLOCK_V_MAX = 8
BLOCK_T_MAX = 128
NUM_WARPS = 4


# ------------------------------------------------------------------ kernels


@triton.jit
def _load_steps(x_ptr, m_ptr, offs_t, offs_v, v_ok, T, stride_xt, stride_xv, stride_mt, ACC: tl.constexpr):
    """x at steps offs_t of one sample, zero where padded, and the valid mask."""
    t_in = offs_t < T  # [BLOCK_T]
    step_ok = tl.load(m_ptr + offs_t * stride_mt, mask=t_in, other=0) != 0  # [BLOCK_T]
    ok = step_ok[:, None] & v_ok[None, :]  # [BLOCK_T, BLOCK_V]
    x = tl.load(x_ptr + offs_t[:, None] * stride_xt + offs_v[None, :] * stride_xv, mask=ok, other=0.0)
    return x.to(ACC), ok, step_ok


@triton.jit
def _revin_fwd_kernel(
    x_ptr, m_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, std_ptr,
    T, V,
    stride_xb, stride_xt, stride_xv,
    stride_mb, stride_mt,
    eps_sq_hi, eps_sq_lo,
    ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
):
    pid_b = tl.program_id(0)
    offs_v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)  # [BLOCK_V]
    v_ok = offs_v < V
    x_ptr += pid_b * stride_xb
    m_ptr += pid_b * stride_mb

    # pass 1: count of valid steps and a rough mean
    total = tl.zeros([BLOCK_T, BLOCK_V], ACC)
    count_t = tl.zeros([BLOCK_T], ACC)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)  # [BLOCK_T]
        x, ok, step_ok = _load_steps(x_ptr, m_ptr, offs_t, offs_v, v_ok, T, stride_xt, stride_xv, stride_mt, ACC)
        total += x
        count_t += step_ok.to(ACC)
    count = tl.maximum(tl.sum(count_t, 0), 1.0)  # a sample with no valid step gets mean 0, std eps
    rough = tl.sum(total, 0) / count  # [BLOCK_V]

    # pass 2: deviations from the rough mean give the exact mean and variance
    dev_sum = tl.zeros([BLOCK_T, BLOCK_V], ACC)
    dev_sq = tl.zeros([BLOCK_T, BLOCK_V], ACC)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        x, ok, step_ok = _load_steps(x_ptr, m_ptr, offs_t, offs_v, v_ok, T, stride_xt, stride_xv, stride_mt, ACC)
        d = tl.where(ok, x - rough[None, :], 0.0)  # [BLOCK_T, BLOCK_V]
        dev_sum += d
        dev_sq += d * d
    shift = tl.sum(dev_sum, 0) / count  # [BLOCK_V], mean - rough
    var = tl.maximum(tl.sum(dev_sq, 0) / count - shift * shift, 0.0)
    # eps**2 arrives as two float32 halves (a Python float argument is float32)
    # added one at a time, so the float64 kernel sees it unrounded
    std = tl.sqrt(var + eps_sq_hi + eps_sq_lo)
    inv_std = 1.0 / std
    stat_offs = pid_b * V + offs_v
    tl.store(mean_ptr + stat_offs, rough + shift, mask=v_ok)
    tl.store(std_ptr + stat_offs, std, mask=v_ok)

    # pass 3: y, transposed to (B, V, T); padded steps are written as 0
    w = tl.load(w_ptr + offs_v, mask=v_ok, other=0.0).to(ACC)  # [BLOCK_V]
    b = tl.load(b_ptr + offs_v, mask=v_ok, other=0.0).to(ACC)
    y_ptr += pid_b * V * T
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        x, ok, step_ok = _load_steps(x_ptr, m_ptr, offs_t, offs_v, v_ok, T, stride_xt, stride_xv, stride_mt, ACC)
        z = (x - rough[None, :] - shift[None, :]) * inv_std[None, :]
        y = tl.where(ok, z * w[None, :] + b[None, :], 0.0)  # [BLOCK_T, BLOCK_V]
        in_range = (offs_t < T)[:, None] & v_ok[None, :]
        tl.store(y_ptr + offs_v[None, :] * T + offs_t[:, None], y.to(y_ptr.dtype.element_ty), mask=in_range)


@triton.jit
def _revin_bwd_kernel(
    x_ptr, m_ptr, w_ptr, mean_ptr, std_ptr, gy_ptr, gmean_ptr, gstd_ptr,
    dx_ptr, part_ptr,
    T, V,
    stride_xb, stride_xt, stride_xv,
    stride_mb, stride_mt,
    stride_gyb, stride_gyv, stride_gyt,
    stride_gmb, stride_gmv,
    stride_gsb, stride_gsv,
    stride_dxb, stride_dxt, stride_dxv,
    ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
    HAS_GRAD_STATS: tl.constexpr, NEED_DX: tl.constexpr,
):
    # part_ptr: (2, B, V) partial sums over this sample's steps, dweight in
    # row 0 and dbias in row 1, so one host-side sum over B finishes both.
    # HAS_GRAD_STATS False: mean and std got no gradient (the usual case: the
    # loss reads y only), so none is read. NEED_DX False: x needs no
    # gradient (features), so the second pass is skipped and dx is not written.
    # With z = (x - mean) / std over the n valid steps and gz = gy * w:
    #   dx = (gz - mean(gz) - z * mean(gz * z)) / std   (through y)
    #      + gmean / n + gstd * z / n                   (through mean and std)
    pid_b = tl.program_id(0)
    offs_v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)  # [BLOCK_V]
    v_ok = offs_v < V
    x_ptr += pid_b * stride_xb
    m_ptr += pid_b * stride_mb
    gy_ptr += pid_b * stride_gyb
    stat_offs = pid_b * V + offs_v
    mean = tl.load(mean_ptr + stat_offs, mask=v_ok, other=0.0).to(ACC)  # [BLOCK_V]
    inv_std = 1.0 / tl.load(std_ptr + stat_offs, mask=v_ok, other=1.0).to(ACC)
    w = tl.load(w_ptr + offs_v, mask=v_ok, other=0.0).to(ACC)

    # pass 1: sums of z, gy and gy * z over the valid steps
    sum_z = tl.zeros([BLOCK_T, BLOCK_V], ACC)
    sum_gy = tl.zeros([BLOCK_T, BLOCK_V], ACC)
    sum_gyz = tl.zeros([BLOCK_T, BLOCK_V], ACC)
    count_t = tl.zeros([BLOCK_T], ACC)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        x, ok, step_ok = _load_steps(x_ptr, m_ptr, offs_t, offs_v, v_ok, T, stride_xt, stride_xv, stride_mt, ACC)
        z = tl.where(ok, (x - mean[None, :]) * inv_std[None, :], 0.0)  # [BLOCK_T, BLOCK_V]
        gy = tl.load(gy_ptr + offs_v[None, :] * stride_gyv + offs_t[:, None] * stride_gyt, mask=ok, other=0.0).to(ACC)
        sum_z += z
        sum_gy += gy
        sum_gyz += gy * z
        count_t += step_ok.to(ACC)
    count = tl.maximum(tl.sum(count_t, 0), 1.0)
    # The saved mean is rounded to the stats dtype (by up to 5e-4 for a
    # float32 series near 1e4), which shifts every z by the same amount; z
    # must average 0, so its average is that shift and is taken back out.
    z_shift = tl.sum(sum_z, 0) / count  # [BLOCK_V]
    db = tl.sum(sum_gy, 0)
    dw = tl.sum(sum_gyz, 0) - z_shift * db
    tl.store(part_ptr + stat_offs, dw, mask=v_ok)
    tl.store(part_ptr + tl.num_programs(0) * V + stat_offs, db, mask=v_ok)
    if NEED_DX:
        mean_gz = w * db / count  # [BLOCK_V]
        mean_gzz = w * dw / count
        if HAS_GRAD_STATS:
            gmean = tl.load(gmean_ptr + pid_b * stride_gmb + offs_v * stride_gmv, mask=v_ok, other=0.0).to(ACC)
            gstd = tl.load(gstd_ptr + pid_b * stride_gsb + offs_v * stride_gsv, mask=v_ok, other=0.0).to(ACC)

        # pass 2: dx, 0 at padded steps
        dx_ptr += pid_b * stride_dxb
        for t0 in range(0, T, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            x, ok, step_ok = _load_steps(x_ptr, m_ptr, offs_t, offs_v, v_ok, T, stride_xt, stride_xv, stride_mt, ACC)
            z = tl.where(ok, (x - mean[None, :]) * inv_std[None, :] - z_shift[None, :], 0.0)  # [BLOCK_T, BLOCK_V]
            gy = tl.load(gy_ptr + offs_v[None, :] * stride_gyv + offs_t[:, None] * stride_gyt,
                         mask=ok, other=0.0).to(ACC)
            dx = (gy * w[None, :] - mean_gz[None, :] - z * mean_gzz[None, :]) * inv_std[None, :]
            if HAS_GRAD_STATS:
                dx += (gmean[None, :] + gstd[None, :] * z) / count
            dx = tl.where(ok, dx, 0.0)
            in_range = (offs_t < T)[:, None] & v_ok[None, :]
            tl.store(dx_ptr + offs_t[:, None] * stride_dxt + offs_v[None, :] * stride_dxv,
                     dx.to(dx_ptr.dtype.element_ty), mask=in_range)


# --------------------------------------------------------------- host side


def _blocks(T: int, V: int) -> tuple[int, int]:
    return min(next_power_of_2(T), BLOCK_T_MAX), min(next_power_of_2(V), BLOCK_V_MAX)


def unsupported_reason(x, mask, weight, bias) -> Optional[str]:
    """Why the kernel cannot take this case (None when it can)."""
    B, T, V = x.shape
    if B * T * V > INT32_LIMIT or max(max_offset(x), max_offset(mask)) > INT32_LIMIT:
        return f"x of shape {tuple(x.shape)} needs 64-bit offsets (the kernel indexes with int32)"
    return None


def revin_fwd(x, mask, weight, bias, eps: float):
    B, T, V = x.shape
    acc = compute_dtype(x.dtype)
    y = torch.empty((B, V, T), dtype=x.dtype, device=x.device)
    mean = torch.empty((B, V), dtype=acc, device=x.device)
    std = torch.empty((B, V), dtype=acc, device=x.device)
    if B == 0 or V == 0:
        return y, mean, std
    block_t, block_v = _blocks(T, V)
    eps_hi, eps_lo = split_float32(eps * eps)
    m = mask.view(torch.uint8)
    # the kernel reads weight and bias at unit stride; (V,) views of wider
    # parameters (or expanded ones) are copied, which costs V elements
    weight, bias = weight.contiguous(), bias.contiguous()
    _revin_fwd_kernel[(B, cdiv(V, block_v))](
        x, m, weight, bias, y, mean, std,
        T, V,
        x.stride(0), x.stride(1), x.stride(2),
        m.stride(0), m.stride(1),
        eps_hi, eps_lo,
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        BLOCK_T=block_t, BLOCK_V=block_v, num_warps=NUM_WARPS,
    )
    return y, mean, std


def revin_bwd(grad_y, grad_mean, grad_std, x, mask, weight, mean, std, need_dx: bool = True):
    """Returns dx (x's shape and dtype, contiguous; an empty (0,) tensor when
    need_dx is False) and (2, V): dweight and dbias in the statistics dtype
    (float32, float64 for float64 x), one tensor because a custom op's
    outputs may not alias. grad_mean and grad_std may be None (no gradient
    reached them): they are then not read, instead of being zero-filled."""
    B, T, V = x.shape
    dx = torch.empty((B, T, V) if need_dx else (0,), dtype=x.dtype, device=x.device)
    parts = torch.empty((2, B, V), dtype=mean.dtype, device=x.device)  # dweight, dbias per sample
    if B == 0 or V == 0:
        return dx, parts.sum(1)
    has_grad_stats = grad_mean is not None or grad_std is not None
    if has_grad_stats:  # one of them alone is rare: the other becomes zeros
        grad_mean = torch.zeros_like(mean) if grad_mean is None else int32_indexable(grad_mean)
        grad_std = torch.zeros_like(std) if grad_std is None else int32_indexable(grad_std)
    else:  # never read (HAS_GRAD_STATS is off): any tensor fills the pointer slots
        grad_mean = grad_std = mean
    grad_y = int32_indexable(grad_y)
    block_t, block_v = _blocks(T, V)
    m = mask.view(torch.uint8)
    weight = weight.contiguous()  # read at unit stride
    _revin_bwd_kernel[(B, cdiv(V, block_v))](
        x, m, weight, mean, std, grad_y, grad_mean, grad_std,
        dx, parts,
        T, V,
        x.stride(0), x.stride(1), x.stride(2),
        m.stride(0), m.stride(1),
        grad_y.stride(0), grad_y.stride(1), grad_y.stride(2),
        grad_mean.stride(0), grad_mean.stride(1),
        grad_std.stride(0), grad_std.stride(1),
        *(dx.stride() if need_dx else (0, 0, 0)),
        ACC=tl.float64 if mean.dtype == torch.float64 else tl.float32,
        BLOCK_T=block_t, BLOCK_V=block_v, HAS_GRAD_STATS=has_grad_stats, NEED_DX=need_dx,
        num_warps=NUM_WARPS,
    )
    return dx, parts.sum(1)  # the second stage: one small op for both


# ------------------------------------------------------ custom-op registration


@torch.library.custom_op("migt::revin_normalize", mutates_args=())
def _revin_op(
    x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return revin_fwd(x, mask, weight, bias, eps)


@_revin_op.register_fake
def _(x, mask, weight, bias, eps):
    B, T, V = x.shape
    acc = compute_dtype(x.dtype)
    return x.new_empty((B, V, T)), x.new_empty((B, V), dtype=acc), x.new_empty((B, V), dtype=acc)


@torch.library.custom_op("migt::revin_normalize_backward", mutates_args=())
def _revin_backward_op(
    grad_y: torch.Tensor, grad_mean: Optional[torch.Tensor], grad_std: Optional[torch.Tensor],
    x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
    need_dx: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return revin_bwd(grad_y, grad_mean, grad_std, x, mask, weight, mean, std, need_dx)


@_revin_backward_op.register_fake
def _(grad_y, grad_mean, grad_std, x, mask, weight, mean, std, need_dx):
    V = x.shape[2]
    return x.new_empty(x.shape if need_dx else (0,)), mean.new_empty((2, V))


def _setup_context(ctx, inputs, output):
    x, mask, weight, bias, _ = inputs
    _, mean, std = output
    ctx.save_for_backward(x, mask, weight, mean, std)
    ctx.bias_dtype = bias.dtype
    # unused outputs (mean and std, usually) send None, not zero-filled tensors
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_y, grad_mean, grad_std, backward_fn=_revin_backward_op):
    x, mask, weight, mean, std = ctx.saved_tensors
    if grad_y is None:  # only mean or std reached the loss
        grad_y = torch.zeros_like(x).transpose(1, 2)
    need_dx = ctx.needs_input_grad[0]
    dx, dw_db = backward_fn(grad_y, grad_mean, grad_std, x, mask, weight, mean, std, need_dx)
    dw, db = dw_db
    return dx if need_dx else None, None, dw.to(weight.dtype), db.to(ctx.bias_dtype), None


_revin_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerRevin(torch.autograd.Function):
    """The same forward and backward as the custom op, without its dispatch:
    in eager mode the custom op's Python round trips cost about as much host
    time as the two launches themselves (measured on the CPU, see
    docs/kernel-tuning.md), and RevIN's kernels are only microseconds long.
    torch.compile and fake tensors still see the custom op."""

    @staticmethod
    def forward(ctx, x, mask, weight, bias, eps):
        output = revin_fwd(x, mask, weight, bias, eps)
        _setup_context(ctx, (x, mask, weight, bias, eps), output)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_mean, grad_std):
        return _backward(ctx, grad_y, grad_mean, grad_std, backward_fn=revin_bwd)


# ------------------------------------------------------------ public function


def revin_normalize(x, mask, weight, bias, eps: float = 1e-5):
    """Masked RevIN with the transpose fused (see kernels.revin_normalize).

    x: (B, T, V), any strides; mask: (B, T) bool; weight, bias: (V,).
    Returns y (B, V, T) contiguous in x's dtype (padded steps 0), and mean,
    std (B, V) in float32 (float64 for float64 x). Differentiable in x,
    weight and bias, through y, mean and std.
    """
    if torch.compiler.is_compiling() or type(x) is not torch.Tensor:
        return _revin_op(x, mask, weight, bias, float(eps))
    return _EagerRevin.apply(x, mask, weight, bias, float(eps))
