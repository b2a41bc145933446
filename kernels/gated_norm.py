"""Fused gated residual norm (the "triton" backend of kernels.gated_residual_norm).

out = x + sigmoid(g) * (layer_norm(u; w, b) - x), over the last dim D.

Inputs (..., D) are seen as 2-D (N, D) views and read by strides, so any
layout whose leading dims merge into one (contiguous, or sliced along the
last dim, or a broadcast gradient) costs no copy; other layouts are copied
once by reshape. Forward: BLOCK_M rows per program, each whole row in one
block (D <= MAX_D), float32 math (float64 for float64 x); only the mean and
rstd of each row are saved. Backward: one kernel writes dx, du and dg; each
program walks a fixed, strided set of row blocks and writes its partial sums
of dweight and dbias to its own row of a buffer, which the host then adds
(two stages, no atomics, so bitwise deterministic on a given GPU).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import (INT32_LIMIT, backward_programs, cdiv, int32_indexable, loop_stages, max_offset,
                      next_power_of_2, split_float32)
from ._tiles import cast_for, layer_norm_rows, layer_norm_rows_bwd
from .reference import compute_dtype

MAX_D = 8192
# About 4096 elements per tile: BLOCK_M = 16 rows at D=256 (the model's case),
# one row at D >= 4096. Chosen by reasoning, not yet tuned on a GPU.
TILE_ELEMENTS = 4096
MAX_BLOCK_M = 16
# Backward programs per SM: each loops over row blocks, so this bounds the
# partial-sum buffer (programs x D) independently of N.


# ------------------------------------------------------------------ kernels


@triton.jit
def _load_rows(ptr, rows, cols, ok, stride_r, stride_c, ACC: tl.constexpr):
    return tl.load(ptr + rows[:, None] * stride_r + cols[None, :] * stride_c, mask=ok, other=0.0).to(ACC)


@triton.jit
def _gated_norm_fwd_kernel(
    x_ptr, u_ptr, g_ptr, w_ptr, b_ptr, out_ptr, mean_ptr, rstd_ptr,
    N, D,
    stride_xr, stride_xc, stride_ur, stride_uc, stride_gr, stride_gc,
    eps_hi, eps_lo,
    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = rows < N
    col_ok = cols < D
    ok = row_ok[:, None] & col_ok[None, :]  # [BLOCK_M, BLOCK_D]

    u = _load_rows(u_ptr, rows, cols, ok, stride_ur, stride_uc, ACC)  # [BLOCK_M, BLOCK_D]
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(ACC)  # [BLOCK_D]
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)
    normed, mean, rstd = layer_norm_rows(u, ok, w, b, D, eps_hi, eps_lo)  # [BLOCK_M, BLOCK_D], [BLOCK_M] x 2

    x = _load_rows(x_ptr, rows, cols, ok, stride_xr, stride_xc, ACC)
    gate = tl.sigmoid(_load_rows(g_ptr, rows, cols, ok, stride_gr, stride_gc, ACC))
    out = x + gate * (normed - x)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], cast_for(out, out_ptr), mask=ok)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _gated_norm_bwd_kernel(
    dout_ptr, x_ptr, u_ptr, g_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr,
    dx_ptr, du_ptr, dg_ptr, dw_part_ptr, db_part_ptr, dgb_part_ptr,
    N, D,
    stride_or, stride_oc, stride_xr, stride_xc, stride_ur, stride_uc, stride_gr, stride_gc,
    GATE_BIAS_GRAD: tl.constexpr, LOOP_STAGES: tl.constexpr,
    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # With uhat = (u - mean) * rstd, n = uhat * w + b, s = sigmoid(g):
    #   dx = dout * (1 - s);  dg = dout * (n - x) * s * (1 - s)
    #   dn = dout * s;  dw += dn * uhat;  db += dn
    #   du = rstd * (dn*w - mean(dn*w) - uhat * mean(dn*w * uhat))
    # When the logits come from a Linear (gated_feed_forward), this pass also
    # sums dg over rows: the gate bias's gradient.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    col_ok = cols < D
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(ACC)  # [BLOCK_D]
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)
    # partial sums kept per (row slot, column) and reduced over the rows once
    # at the end: a reduction across rows inside the loop would make the
    # program's warps meet at a barrier on every row block
    dw_acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    db_acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    dgb_acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for block in tl.range(pid, tl.cdiv(N, BLOCK_M), tl.num_programs(0), num_stages=LOOP_STAGES):
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        row_ok = rows < N
        ok = row_ok[:, None] & col_ok[None, :]  # [BLOCK_M, BLOCK_D]
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)  # [BLOCK_M]
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        u = _load_rows(u_ptr, rows, cols, ok, stride_ur, stride_uc, ACC)  # [BLOCK_M, BLOCK_D]
        uhat = tl.where(ok, (u - mean[:, None]) * rstd[:, None], 0.0)
        x = _load_rows(x_ptr, rows, cols, ok, stride_xr, stride_xc, ACC)
        gate = tl.sigmoid(_load_rows(g_ptr, rows, cols, ok, stride_gr, stride_gc, ACC))
        dout = _load_rows(dout_ptr, rows, cols, ok, stride_or, stride_oc, ACC)

        normed = uhat * w[None, :] + b[None, :]
        dx = dout * (1.0 - gate)
        dg = dout * (normed - x) * gate * (1.0 - gate)
        dn = dout * gate  # 0 outside the tile: dout was loaded with other=0
        dw_acc += dn * uhat
        db_acc += dn
        du = layer_norm_rows_bwd(dn, uhat, w, rstd, D)

        dense = rows[:, None] * D + cols[None, :]  # gradients are written contiguous (N, D)
        tl.store(dx_ptr + dense, cast_for(dx, dx_ptr), mask=ok)
        tl.store(du_ptr + dense, cast_for(du, du_ptr), mask=ok)
        tl.store(dg_ptr + dense, cast_for(dg, dg_ptr), mask=ok)
        if GATE_BIAS_GRAD:
            dgb_acc += dg
    tl.store(dw_part_ptr + pid * D + cols, tl.sum(dw_acc, 0), mask=col_ok)
    tl.store(db_part_ptr + pid * D + cols, tl.sum(db_acc, 0), mask=col_ok)
    if GATE_BIAS_GRAD:
        tl.store(dgb_part_ptr + pid * D + cols, tl.sum(dgb_acc, 0), mask=col_ok)


# --------------------------------------------------------------- host side


def _launch_shape(D: int, backward: bool = False) -> tuple[int, int, int]:
    """BLOCK_M, BLOCK_D, num_warps for rows of D.

    The forward gives each thread 16 elements of a tile (4096 elements over
    8 warps at D=256: 51 registers, 4 programs per SM). The backward keeps
    ~10 tiles' worth of values live, so at 16 elements a thread it sat at the
    255-register ceiling with one 8-warp program per SM; at 8 elements a
    thread (16 warps) it needs 128, no spill, and one program per SM still
    has the same 16 rows in flight, now with twice the warps to hide
    latency. (A smaller BLOCK_M instead would cut the rows in flight per SM
    to 8-12: see docs/kernel-tuning.md.)"""
    block_d = next_power_of_2(D)
    block_m = max(1, min(MAX_BLOCK_M, TILE_ELEMENTS // block_d))
    elements_per_thread = 8 if backward else 16
    num_warps = min(16, max(4, block_m * block_d // (32 * elements_per_thread)))
    return block_m, block_d, num_warps


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t (..., D) as an (N, D) view; one copy when the leading dims cannot merge."""
    D = t.shape[-1]
    try:
        return t.view(-1, D)
    except RuntimeError:
        return t.reshape(-1, D)


def unsupported_reason(x, update, gate_logits, weight, bias) -> Optional[str]:
    """Why the kernel cannot take this case (None when it can)."""
    D = x.shape[-1]
    if D < 1:
        return "the last dim D is 0"
    if D > MAX_D:
        return f"D={D} is over {MAX_D} (a row must fit one block)"
    if x.numel() > INT32_LIMIT or max(max_offset(t) for t in (x, update, gate_logits)) > INT32_LIMIT:
        return f"x of shape {tuple(x.shape)} needs 64-bit offsets (the kernel indexes with int32)"
    return None


def _acc(dtype: torch.dtype):
    return tl.float64 if compute_dtype(dtype) == torch.float64 else tl.float32


def gated_norm_fwd(x, update, gate_logits, weight, bias, eps: float, *, out=None, stats=None):
    """Returns out (x's shape and dtype, contiguous; written into ``out`` when
    given) and the per-row mean and rstd (N,) in the compute dtype (written
    into ``stats``, a (mean, rstd) pair of (N,) views, when given)."""
    D = x.shape[-1]
    x2, u2, g2 = _rows(x), _rows(update), _rows(gate_logits)
    N = x2.shape[0]
    acc = compute_dtype(x.dtype)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if out is None else out
    if stats is None:
        stats = (torch.empty((N,), dtype=acc, device=x.device), torch.empty((N,), dtype=acc, device=x.device))
    mean, rstd = stats
    if N == 0:
        return out, mean, rstd
    block_m, block_d, num_warps = _launch_shape(D)
    eps_hi, eps_lo = split_float32(eps)
    # the kernels read weight and bias at unit stride; (D,) views of wider
    # parameters (or expanded ones) are copied, which costs D elements
    weight, bias = weight.contiguous(), bias.contiguous()
    _gated_norm_fwd_kernel[(cdiv(N, block_m),)](
        x2, u2, g2, weight, bias, out, mean, rstd,
        N, D,
        x2.stride(0), x2.stride(1), u2.stride(0), u2.stride(1), g2.stride(0), g2.stride(1),
        eps_hi, eps_lo,
        ACC=_acc(x.dtype), BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
    )
    return out, mean, rstd


def gated_norm_bwd(grad_out, x, update, gate_logits, weight, bias, mean, rstd, *, dx=None,
                   gate_bias_grad: bool = False):
    """Returns dx, du, dg (contiguous, each in its input's dtype; dx written
    into the given contiguous tensor, if any) and dweight, dbias (D,) in the
    compute dtype; with gate_bias_grad (the logits come from a Linear) also
    dg's column sums (D,) in the compute dtype, from the same pass."""
    D = x.shape[-1]
    o2, x2, u2, g2 = int32_indexable(_rows(grad_out)), _rows(x), _rows(update), _rows(gate_logits)
    N = x2.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if dx is None else dx
    du = torch.empty(update.shape, dtype=update.dtype, device=x.device)
    dg = torch.empty(gate_logits.shape, dtype=gate_logits.dtype, device=x.device)
    if N == 0:
        zeros = torch.zeros((D,), dtype=mean.dtype, device=x.device)
        grads = (dx, du, dg, zeros, zeros.clone())
        return grads + (zeros.clone(),) if gate_bias_grad else grads
    block_m, block_d, num_warps = _launch_shape(D, backward=True)
    programs = backward_programs(x.device, cdiv(N, block_m))
    dw_part = torch.empty((programs, D), dtype=mean.dtype, device=x.device)
    db_part = torch.empty((programs, D), dtype=mean.dtype, device=x.device)
    dgb_part = torch.empty((programs, D), dtype=mean.dtype, device=x.device) if gate_bias_grad else db_part
    weight, bias = weight.contiguous(), bias.contiguous()  # read at unit stride
    _gated_norm_bwd_kernel[(programs,)](
        o2, x2, u2, g2, weight, bias, mean, rstd,
        dx, du, dg, dw_part, db_part, dgb_part,
        N, D,
        o2.stride(0), o2.stride(1), x2.stride(0), x2.stride(1),
        u2.stride(0), u2.stride(1), g2.stride(0), g2.stride(1),
        GATE_BIAS_GRAD=gate_bias_grad, LOOP_STAGES=loop_stages(block_m * block_d, o2, x2, u2, g2),
        ACC=_acc(x.dtype), BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps,
    )
    grads = (dx, du, dg, dw_part.sum(0), db_part.sum(0))
    return grads + (dgb_part.sum(0),) if gate_bias_grad else grads


# ------------------------------------------------------ custom-op registration


@torch.library.custom_op("migt::gated_residual_norm", mutates_args=())
def _gated_norm_op(
    x: torch.Tensor, update: torch.Tensor, gate_logits: torch.Tensor,
    weight: torch.Tensor, bias: torch.Tensor, eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return gated_norm_fwd(x, update, gate_logits, weight, bias, eps)


@_gated_norm_op.register_fake
def _(x, update, gate_logits, weight, bias, eps):
    N = x.numel() // x.shape[-1]
    acc = compute_dtype(x.dtype)
    return x.new_empty(x.shape), x.new_empty((N,), dtype=acc), x.new_empty((N,), dtype=acc)


@torch.library.custom_op("migt::gated_residual_norm_backward", mutates_args=())
def _gated_norm_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, update: torch.Tensor, gate_logits: torch.Tensor,
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return gated_norm_bwd(grad_out, x, update, gate_logits, weight, bias, mean, rstd)


@_gated_norm_backward_op.register_fake
def _(grad_out, x, update, gate_logits, weight, bias, mean, rstd):
    D = x.shape[-1]
    return (
        x.new_empty(x.shape), update.new_empty(update.shape), gate_logits.new_empty(gate_logits.shape),
        mean.new_empty((D,)), mean.new_empty((D,)),
    )


def _setup_context(ctx, inputs, output):
    x, update, gate_logits, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, update, gate_logits, weight, bias, mean, rstd)


def _backward(ctx, grad_out, _grad_mean, _grad_rstd):
    # mean and rstd are saved statistics, never exposed: their gradients are ignored
    x, update, gate_logits, weight, bias, mean, rstd = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(x)
    dx, du, dg, dw, db = _gated_norm_backward_op(grad_out, x, update, gate_logits, weight, bias, mean, rstd)
    return dx, du, dg, dw.to(weight.dtype), db.to(bias.dtype), None


_gated_norm_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------ public function


def gated_residual_norm(x, update, gate_logits, weight, bias, eps: float = 1e-5):
    """x + sigmoid(gate_logits) * (layer_norm(update; weight, bias) - x).

    x, update, gate_logits: (..., D), same shape, any strides; weight,
    bias: (D,). Returns (..., D) contiguous in x's dtype; differentiable in
    every tensor argument.
    """
    out, _, _ = _gated_norm_op(x, update, gate_logits, weight, bias, float(eps))
    return out
