"""Residual add + dropout + LayerNorm in one pass, and LayerNorm + Linear that
keeps no normalised copy (the "triton" backend of kernels.layer_norm_linear,
and the first half of kernels.residual_feed_forward).

Rows of D (the last dim) are read as a contiguous (N, D) matrix, BLOCK_M rows
per tile, each whole row in one block (D <= MAX_D), with float32 math
(float64 for float64 input).

Forward: x_new = x + dropout(branch) (when a branch is given), then
h = layer_norm(x_new) in the GEMM's dtype; the per-row mean and rstd are
kept, with x (and the branch). The backward recomputes h with the same
kernel (for the weight gradient of the GEMM that consumed it), rebuilds
x_new from x and the branch, and redraws the dropout bits from the seed, so
neither h, x_new nor a mask is ever saved. dweight and dbias of
the norm are reduced in two stages (a partial row per program, then one sum
on the host): no atomics, so bitwise deterministic on a given GPU.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import philox
from ._launch import backward_programs, cdiv, loop_stages, next_power_of_2, split_float32
from ._tiles import (branch_rows, cast_for, keep_tile, layer_norm_rows, layer_norm_rows_bwd, split_scalar,
                     tile_offsets)
from .linear import linear_backward
from .reference import compute_dtype

MAX_D = 8192
# About 4096 elements per tile (16 rows at D=256) forward; 8 rows backward,
# where twice as many row tensors are live. Chosen by reasoning, not tuned on a GPU.
TILE_ELEMENTS = 4096
BWD_TILE_ELEMENTS = 2048
# With a branch bias (the model's FFN: out_proj's bias summed here), a third
# (rows, D) partial sum and the bias row take the FFN's backward from 147 to
# 177 registers at sm_90 (the variable tail's from 155 to 192), 3 -> 2
# programs per SM; 4-row tiles take it to 100 (107): 4 per SM, for 3% more
# instructions per element (bench.compile_check --sass). Not timed on a GPU:
# bench.kernel_times --sweep times both tile heights.
BRANCH_BIAS_BWD_TILE_ELEMENTS = 1024
MAX_BLOCK_M = 16
# Programs per SM of the persistent norm backward: 8 ran 16% faster than 4 on
# the H200 (bench/results/2026-11-28-nvidia-h200-fused-step/, one kernel alone).
NORM_BWD_PROGRAMS_PER_SM = 8


# ------------------------------------------------------------------ kernels


@triton.jit
def _residual_norm_fwd_kernel(
    x_ptr, branch_ptr, seed_ptr, w_ptr, b_ptr,
    x_out_ptr, h_ptr, mean_ptr, rstd_ptr, x_low_ptr, branch_bias_ptr,
    N, row0, D, cut, scale_hi, scale_lo, eps_hi, eps_lo,
    HAS_BRANCH: tl.constexpr, HAS_DROPOUT: tl.constexpr, SITE: tl.constexpr,
    STORE_X: tl.constexpr, STORE_STATS: tl.constexpr, STORE_X_LOW: tl.constexpr, HAS_BRANCH_BIAS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = rows < N
    col_ok = cols < D
    ok = row_ok[:, None] & col_ok[None, :]  # [BLOCK_M, BLOCK_D]
    offs = tile_offsets(rows, cols, D)

    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(ACC)  # [BLOCK_M, BLOCK_D]
    if STORE_X_LOW:  # x itself (not x_new) in another dtype, for a GEMM that reads it (the variable blocks' gate)
        tl.store(x_low_ptr + offs, cast_for(x, x_low_ptr), mask=ok)
    if HAS_BRANCH:
        branch = branch_rows(branch_ptr, branch_bias_ptr, offs, ok, cols, col_ok, HAS_BRANCH_BIAS, ACC)
        if HAS_DROPOUT:
            scale = split_scalar(scale_hi, scale_lo, ACC)
            branch = tl.where(keep_tile(seed_ptr, SITE, row0 + rows, 0, D, cut, BLOCK_D), branch * scale, 0.0)
        # x_new rounded to the stream's dtype (a no-op in float32), as it is
        # stored or rebuilt by the backward and the output add: every pass
        # normalises and adds the same value
        x = cast_for(x + branch, x_ptr).to(ACC)
    if STORE_X:  # x_new, or without a branch a copy of x (a residual handed on)
        tl.store(x_out_ptr + offs, cast_for(x, x_out_ptr), mask=ok)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(ACC)  # [BLOCK_D]
    b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)
    h, mean, rstd = layer_norm_rows(x, ok, w, b, D, eps_hi, eps_lo)
    tl.store(h_ptr + offs, cast_for(h, h_ptr), mask=ok)
    if STORE_STATS:
        tl.store(mean_ptr + rows, mean, mask=row_ok)
        tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _residual_norm_bwd_kernel(
    dh_ptr, dres_ptr, x_ptr, branch_ptr, mean_ptr, rstd_ptr, w_ptr, seed_ptr,
    dx_ptr, dbranch_ptr, dx_add_ptr, dw_part_ptr, db_part_ptr, branch_bias_ptr, dbb_part_ptr,
    N, row0, D, cut, scale_hi, scale_lo,
    HAS_RES_GRAD: tl.constexpr, HAS_BRANCH: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    HAS_DX_ADD: tl.constexpr, DX_ACCUMULATE: tl.constexpr, HAS_BRANCH_BIAS: tl.constexpr,
    SITE: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    LOOP_STAGES: tl.constexpr,
):
    # The norm's input is x, or with a branch x_new = x + dropout(branch),
    # rebuilt here from x and the branch (never stored), so
    #   dx = dres + layer_norm_grad(dh)   and   dbranch = keep * scale * dx
    # Gradients of x's other uses (not through x_new, so not the branch's)
    # are added to dx alone: what dx_ptr holds (DX_ACCUMULATE) and dx_add.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    col_ok = cols < D
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(ACC)
    # partial sums per (row slot, column), reduced over the rows once at the
    # end (not per row block: that would put a barrier in every iteration)
    dw_acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    db_acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    dbb_acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)  # the branch bias's: dbranch summed (with HAS_BRANCH_BIAS)
    for block in tl.range(pid, tl.cdiv(N, BLOCK_M), tl.num_programs(0), num_stages=LOOP_STAGES):
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        row_ok = rows < N
        ok = row_ok[:, None] & col_ok[None, :]  # [BLOCK_M, BLOCK_D]
        offs = tile_offsets(rows, cols, D)
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)  # [BLOCK_M]
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        x = tl.load(x_ptr + offs, mask=ok, other=0.0)  # [BLOCK_M, BLOCK_D]
        if HAS_BRANCH:
            scale = split_scalar(scale_hi, scale_lo, ACC)
            branch = branch_rows(branch_ptr, branch_bias_ptr, offs, ok, cols, col_ok, HAS_BRANCH_BIAS, ACC)
            if HAS_DROPOUT:
                keep = keep_tile(seed_ptr, SITE, row0 + rows, 0, D, cut, BLOCK_D)
                branch = tl.where(keep, branch * scale, 0.0)
            x = cast_for(x.to(ACC) + branch, x_ptr)  # rounded as in the forward
        x = x.to(ACC)
        xhat = tl.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
        dh = tl.load(dh_ptr + offs, mask=ok, other=0.0).to(ACC)
        dw_acc += dh * xhat
        db_acc += dh
        dx = layer_norm_rows_bwd(dh, xhat, w, rstd, D)
        if HAS_RES_GRAD:
            dx += tl.load(dres_ptr + offs, mask=ok, other=0.0).to(ACC)
        dx_total = dx
        if DX_ACCUMULATE:
            dx_total += tl.load(dx_ptr + offs, mask=ok, other=0.0).to(ACC)
        if HAS_DX_ADD:
            dx_total += tl.load(dx_add_ptr + offs, mask=ok, other=0.0).to(ACC)
        tl.store(dx_ptr + offs, cast_for(dx_total, dx_ptr), mask=ok)
        if HAS_BRANCH:
            dbranch = dx
            if HAS_DROPOUT:
                dbranch = tl.where(keep, dx * scale, 0.0)
            tl.store(dbranch_ptr + offs, cast_for(dbranch, dbranch_ptr), mask=ok)
            if HAS_BRANCH_BIAS:
                dbb_acc += dbranch  # 0 on padded rows (dh is); padded columns are masked at the store
    tl.store(dw_part_ptr + pid * D + cols, tl.sum(dw_acc, 0), mask=col_ok)
    tl.store(db_part_ptr + pid * D + cols, tl.sum(db_acc, 0), mask=col_ok)
    if HAS_BRANCH_BIAS:
        tl.store(dbb_part_ptr + pid * D + cols, tl.sum(dbb_acc, 0), mask=col_ok)


# --------------------------------------------------------------- host side


def acc_dtype(dtype: torch.dtype):
    return tl.float64 if compute_dtype(dtype) == torch.float64 else tl.float32


def dropout_args(seeds: Optional[torch.Tensor], p: float) -> tuple[bool, int, float, float]:
    """(has_dropout, integer cut, 1/(1-p) as two float32 halves) for a kernel launch."""
    has = seeds is not None and seeds.numel() > 0 and p > 0.0
    scale_hi, scale_lo = split_float32(1.0 / (1.0 - p) if has else 1.0)
    return has, (philox.threshold(p) if has else 0), scale_hi, scale_lo


def block_d(D: int) -> int:
    """Columns of a whole-row tile: a power of two >= 8 (dropout draws eight columns per call)."""
    return max(8, next_power_of_2(D))


def block_m(block_d: int, tile: int) -> int:
    return max(1, min(MAX_BLOCK_M, tile // block_d))


def warps(block_m: int, block_d: int) -> int:
    return min(16, max(4, block_m * block_d // 512))


def unsupported_reason(x: torch.Tensor) -> Optional[str]:
    D = x.shape[-1]
    if D < 1:
        return "the last dim D is 0"
    if D > MAX_D:
        return f"D={D} is over {MAX_D} (a row must fit one block)"
    return None


def residual_norm_fwd(x, branch, seeds, site: int, p: float, weight, bias, eps: float, h_dtype,
                      *, store_x: bool = False, store_stats: bool = True, row0: int = 0, stats=None, x_low=None,
                      branch_bias=None):
    """x, branch: contiguous (N, D) (branch may be None). Returns
    (x_new or None, h (N, D) in h_dtype, mean (N,), rstd (N,)): x_new =
    x + dropout(branch) (a copy of x without a branch) only when store_x;
    mean and rstd only when store_stats, written into ``stats`` (a (mean,
    rstd) pair of (N,) views) when given. row0: the index of x's first row in
    the whole tensor, when x is a chunk of it (the dropout bits count rows
    from there). x_low: an (N, D) tensor that gets x itself in its dtype
    (a cast the same pass makes while it reads x). branch_bias: (D,) added
    to the branch before its dropout."""
    N, D = x.shape
    acc = compute_dtype(x.dtype)
    has_branch = branch is not None
    x_new = torch.empty_like(x) if store_x else None
    h = torch.empty((N, D), dtype=h_dtype, device=x.device)
    if stats is not None:
        mean, rstd = stats
    else:
        mean = torch.empty((N,), dtype=acc, device=x.device) if store_stats else None
        rstd = torch.empty((N,), dtype=acc, device=x.device) if store_stats else None
    if N == 0:
        return x_new, h, mean, rstd
    has_dropout, cut, scale_hi, scale_lo = dropout_args(seeds, p)
    bd = block_d(D)
    bm = block_m(bd, TILE_ELEMENTS)
    eps_hi, eps_lo = split_float32(eps)
    _residual_norm_fwd_kernel[(cdiv(N, bm),)](
        x, branch if has_branch else x, seeds if has_dropout else x, weight.contiguous(), bias.contiguous(),
        x_new if x_new is not None else h, h, mean if store_stats else h, rstd if store_stats else h,
        x_low if x_low is not None else h, branch_bias if branch_bias is not None else h,
        N, row0, D, cut, scale_hi, scale_lo, eps_hi, eps_lo,
        HAS_BRANCH=has_branch, HAS_DROPOUT=has_dropout, SITE=site,
        STORE_X=x_new is not None, STORE_STATS=store_stats, STORE_X_LOW=x_low is not None,
        HAS_BRANCH_BIAS=has_branch and branch_bias is not None,
        ACC=acc_dtype(x.dtype), BLOCK_M=bm, BLOCK_D=bd, num_warps=warps(bm, bd),
    )
    return x_new, h, mean, rstd


def residual_norm_bwd(dh, dres, x, mean, rstd, weight, *, branch=None, seeds=None, site: int = 0, p: float = 0.0,
                      row0: int = 0, dx=None, dbranch=None, dx_add=None, accumulate_dx: bool = False,
                      branch_bias=None):
    """Gradients of h = layer_norm(x_new), x_new = x + dropout(branch) (x_new
    = x without a branch), rebuilding x_new from x and branch.

    dh: (N, D) gradient of h; dres: (N, D) gradient of x_new itself, or None.
    Returns dx (x's dtype), dbranch (branch's dtype, None without a branch),
    dweight, dbias (D,) in the compute dtype; dx and dbranch are written into
    the (N, D) tensors given, if any. row0: as for residual_norm_fwd.
    Gradients of x's uses outside x_new are added to dx (not to dbranch):
    dx_add ((N, D), any float dtype), and with accumulate_dx what the given
    dx holds already. With branch_bias (x_new = x + dropout(branch +
    branch_bias)) also its gradient, dbranch summed over the rows in the
    compute dtype, as a fifth value (else None).
    """
    N, D = x.shape
    acc = compute_dtype(x.dtype)
    if accumulate_dx and dx is None:
        raise ValueError("accumulate_dx needs the dx to add to")
    dx = torch.empty_like(x) if dx is None else dx
    dbranch = (torch.empty_like(branch) if dbranch is None else dbranch) if branch is not None else None
    has_bb = branch is not None and branch_bias is not None
    if N == 0:
        zeros = torch.zeros((D,), dtype=acc, device=x.device)
        return dx, dbranch, zeros, zeros.clone(), (zeros.clone() if has_bb else None)
    has_dropout, cut, scale_hi, scale_lo = dropout_args(seeds, p)
    bd = block_d(D)
    bm = block_m(bd, BRANCH_BIAS_BWD_TILE_ELEMENTS if has_bb else BWD_TILE_ELEMENTS)
    programs = backward_programs(x.device, cdiv(N, bm), NORM_BWD_PROGRAMS_PER_SM)
    dw_part = torch.empty((programs, D), dtype=acc, device=x.device)
    db_part = torch.empty((programs, D), dtype=acc, device=x.device)
    dbb_part = torch.empty((programs, D), dtype=acc, device=x.device) if has_bb else db_part
    _residual_norm_bwd_kernel[(programs,)](
        dh, dres if dres is not None else dh, x, branch if branch is not None else x, mean, rstd,
        weight.contiguous(), seeds if has_dropout else x,
        dx, dbranch if dbranch is not None else dx, dx_add if dx_add is not None else dh, dw_part, db_part,
        branch_bias if has_bb else dh, dbb_part,
        N, row0, D, cut, scale_hi, scale_lo,
        HAS_RES_GRAD=dres is not None, HAS_BRANCH=branch is not None, HAS_DROPOUT=has_dropout,
        HAS_DX_ADD=dx_add is not None, DX_ACCUMULATE=accumulate_dx, HAS_BRANCH_BIAS=has_bb,
        SITE=site, ACC=acc_dtype(x.dtype), BLOCK_M=bm, BLOCK_D=bd,
        LOOP_STAGES=loop_stages(bm * bd, *(t for t in (dh, dres, x, branch, dx_add) if t is not None),
                                *((dx,) if accumulate_dx else ())),
        num_warps=warps(bm, bd),
    )
    return dx, dbranch, dw_part.sum(0), db_part.sum(0), (dbb_part.sum(0) if has_bb else None)


# ------------------------------------------------------ custom-op registration


@torch.library.custom_op("migt::layer_norm_linear", mutates_args=())
def _layer_norm_linear_op(
    x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float,
    weight: torch.Tensor, bias: Optional[torch.Tensor], pass_residual: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    D = x.shape[-1]
    residual, h, mean, rstd = residual_norm_fwd(x.reshape(-1, D), None, None, 0, 0.0, norm_weight, norm_bias, eps,
                                                weight.dtype, store_x=pass_residual)
    y = torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()
    residual = residual.view(x.shape) if pass_residual else x.new_empty((0,))
    return y.view(*x.shape[:-1], weight.shape[0]), residual, mean, rstd


@_layer_norm_linear_op.register_fake
def _(x, norm_weight, norm_bias, eps, weight, bias, pass_residual):
    N = x.numel() // x.shape[-1]
    acc = compute_dtype(x.dtype)
    return (x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=weight.dtype),
            x.new_empty(x.shape if pass_residual else (0,)),
            x.new_empty((N,), dtype=acc), x.new_empty((N,), dtype=acc))


@torch.library.custom_op("migt::layer_norm_linear_backward", mutates_args=())
def _layer_norm_linear_backward_op(
    dy: torch.Tensor, dresidual: Optional[torch.Tensor], x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
    norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float, weight: torch.Tensor, has_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx, the norm's dweight and dbias, the GEMM's dweight, and its dbias
    ((D_out,) in the compute dtype; an empty tensor without a bias)."""
    D = x.shape[-1]
    x2 = x.reshape(-1, D)
    _, h, _, _ = residual_norm_fwd(x2, None, None, 0, 0.0, norm_weight, norm_bias, eps, weight.dtype,
                                   store_stats=False)
    dh, dweight, dbias = linear_backward(dy.reshape(-1, weight.shape[0]).contiguous(), h, weight, mean.dtype,
                                         bias_grad=has_bias)
    if dbias is None:
        dbias = mean.new_empty((0,))
    del h
    # the handed-on residual's gradient joins the norm's in the same pass
    if dresidual is not None and dresidual.shape != x.shape:
        raise ValueError(f"dresidual must have x's shape {tuple(x.shape)}, got {tuple(dresidual.shape)}")
    dres = dresidual.reshape(-1, D).contiguous() if dresidual is not None else None
    dx, _, dnorm_w, dnorm_b, _ = residual_norm_bwd(dh, dres, x2, mean, rstd, norm_weight)
    return dx.view(x.shape), dnorm_w, dnorm_b, dweight, dbias


@_layer_norm_linear_backward_op.register_fake
def _(dy, dresidual, x, mean, rstd, norm_weight, norm_bias, eps, weight, has_bias):
    D = x.shape[-1]
    return (x.new_empty(x.shape), mean.new_empty((D,)), mean.new_empty((D,)),
            weight.new_empty(weight.shape), mean.new_empty((weight.shape[0] if has_bias else 0,)))


def _setup_context(ctx, inputs, output):
    x, norm_weight, norm_bias, eps, weight, bias, pass_residual = inputs
    _, residual, mean, rstd = output
    ctx.set_materialize_grads(False)  # the residual, mean and rstd may get no gradient: none is zero-filled
    ctx.eps, ctx.pass_residual, ctx.has_bias = eps, pass_residual, bias is not None
    # the handed-on copy holds x's values: keep it, and let x itself go
    ctx.save_for_backward(residual if pass_residual else x, mean, rstd, norm_weight, norm_bias, weight)


def _backward(ctx, dy, dresidual, _dmean, _drstd):
    x, mean, rstd, norm_weight, norm_bias, weight = ctx.saved_tensors
    if not ctx.pass_residual:  # the (0,) placeholder output: whatever came for it is no gradient of x
        dresidual = None
    if dy is None:  # only the handed-on copy (if anything) carries a gradient
        return dresidual, None, None, None, None, None, None
    dx, dnw, dnb, dw, db = _layer_norm_linear_backward_op(dy, dresidual, x, mean, rstd, norm_weight, norm_bias,
                                                          ctx.eps, weight, ctx.has_bias)
    db = db.to(weight.dtype) if ctx.has_bias else None
    return dx, dnw.to(norm_weight.dtype), dnb.to(norm_bias.dtype), None, dw, db, None


_layer_norm_linear_op.register_autograd(_backward, setup_context=_setup_context)


# LayerNorm alone, its output written straight in the dtype of the product
# that reads it (the final norm before the pooling): one pass, where
# autocast's LayerNorm writes float32 and a cast follows.


@torch.library.custom_op("migt::layer_norm", mutates_args=())
def _layer_norm_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    D = x.shape[-1]
    _, h, mean, rstd = residual_norm_fwd(x.reshape(-1, D), None, None, 0, 0.0, weight, bias, eps, out_dtype)
    return h.view(x.shape), mean, rstd


@_layer_norm_op.register_fake
def _(x, weight, bias, eps, out_dtype):
    N = x.numel() // x.shape[-1]
    acc = compute_dtype(x.dtype)
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty((N,), dtype=acc), x.new_empty((N,), dtype=acc)


@torch.library.custom_op("migt::layer_norm_backward", mutates_args=())
def _layer_norm_backward_op(
    dh: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    D = x.shape[-1]
    dx, _, dweight, dbias, _ = residual_norm_bwd(dh.reshape(-1, D).contiguous(), None, x.reshape(-1, D), mean,
                                                 rstd, weight)
    return dx.view(x.shape), dweight, dbias


@_layer_norm_backward_op.register_fake
def _(dh, x, mean, rstd, weight):
    D = x.shape[-1]
    return x.new_empty(x.shape), mean.new_empty((D,)), mean.new_empty((D,))


def _layer_norm_setup_context(ctx, inputs, output):
    x, weight, _, _, _ = inputs
    _, mean, rstd = output
    ctx.set_materialize_grads(False)  # mean and rstd are only saved
    ctx.save_for_backward(x, mean, rstd, weight)


def _layer_norm_backward(ctx, dh, _dmean, _drstd):
    x, mean, rstd, weight = ctx.saved_tensors
    if dh is None:
        return None, None, None, None, None
    dx, dweight, dbias = _layer_norm_backward_op(dh, x, mean, rstd, weight)
    return dx, dweight.to(weight.dtype), dbias.to(weight.dtype), None, None


_layer_norm_op.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup_context)


# ------------------------------------------------------------ public function


def layer_norm_linear(x, norm_weight, norm_bias, weight, bias, eps: float = 1e-5, return_residual: bool = False):
    """layer_norm(x; norm_weight, norm_bias) @ weight.T + bias, keeping only x
    and the per-row statistics for the backward.

    x: (..., D) contiguous; norm_weight, norm_bias: (D,); weight: (D_out, D)
    and bias (D_out,) or None in the GEMM's dtype. Returns (..., D_out) in weight's
    dtype; with return_residual also a copy of x, written by the norm pass,
    whose gradient the backward adds in its norm pass (no separate sum).
    """
    y, residual, _, _ = _layer_norm_linear_op(x.contiguous(), norm_weight, norm_bias, float(eps), weight, bias,
                                              return_residual)
    return (y, residual) if return_residual else y


def layer_norm(x, weight, bias, eps: float = 1e-5, out_dtype=None):
    """layer_norm(x; weight, bias) in float32 at least, written in out_dtype
    (default x's), keeping x and two floats per row for the backward."""
    h, _, _ = _layer_norm_op(x.contiguous(), weight, bias, float(eps), out_dtype or x.dtype)
    return h
