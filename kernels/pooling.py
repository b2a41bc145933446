"""Final LayerNorm + masked attention pooling over T in one pass (the
"triton" backend of kernels.norm_attention_pool, the model's aggregation).

One program per (b, v): it streams that series' T rows of x (B, V, T, D) in
tiles of BLOCK_T rows, normalises each row, scores it against the key-query
vector, and keeps an online softmax (running max, sum and weighted sum of
normalised rows) per row slot of the tile, combined once after the loop: no
cross-row reduction (a shared-memory barrier) inside it. Nothing of x's size
is written: the forward reads x once, and the backward reads x once more and
writes dx, recomputing every normalised row and weight from the saved max,
sum and float pooled vector.

Padded steps are never read (masked loads) and get weight 0 and gradient 0;
a series with no valid step pools to zeros with zero gradients.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import split_float32
from ._tiles import cast_for, layer_norm_rows, layer_norm_rows_bwd
from .norm_linear import acc_dtype, block_d, block_m, warps
from .norm_linear import unsupported_reason as _norm_unsupported
from .reference import compute_dtype

# Rows per tile: about 4096 elements forward (16 rows at D=256); 1024
# backward (4 rows), where three (rows, D) partial sums and five row tensors
# are live: at sm_90, D=256, 125 registers (4 programs per SM) against 198
# (2 per SM) with 2048, for the same instructions per element (bench.compile_check).
# Not tuned on a GPU. (At most 16 rows: norm_linear's tile rules.)
TILE_ELEMENTS = 4096
BWD_TILE_ELEMENTS = 1024


# ------------------------------------------------------------------ kernels


@triton.jit
def _row_tile(x_ptr, mask_ptr, sm_b, sm_t, series, b, t0, T, D, cols, col_ok, BLOCK_T: tl.constexpr,
              ACC: tl.constexpr):
    """Steps t0 .. t0 + BLOCK_T of one series: (x tile, 0 at padded steps and
    columns [BLOCK_T, BLOCK_D], ok, valid [BLOCK_T], in_range [BLOCK_T],
    offsets). The mask is read through its strides (any layout)."""
    steps = t0 + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    in_range = steps < T
    valid = tl.load(mask_ptr + b * sm_b + steps * sm_t, mask=in_range, other=0) != 0
    offs = (series * T + steps).to(tl.int64)[:, None] * D + cols[None, :]
    ok = valid[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(ACC)
    return x, ok, valid, in_range, offs


@triton.jit
def _series_operands(w_ptr, b_ptr, kq_ptr, c_ptr, V, D, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """This program's series (b * V + v) and sample b, the column offsets and
    mask, and the operands every row uses: the norm's weight and bias, the
    key-query vector and the score bias."""
    series = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(ACC)
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(ACC)
    kq = tl.load(kq_ptr + cols, mask=col_ok, other=0.0).to(ACC)
    return series, series // V, cols, col_ok, w, bias, kq, tl.load(c_ptr).to(ACC)


@triton.jit
def _norm_pool_fwd_kernel(
    x_ptr, mask_ptr, w_ptr, b_ptr, kq_ptr, c_ptr,
    out_ptr, pooled_ptr, max_ptr, sum_ptr,
    sm_b, sm_t, V, T, D, eps_hi, eps_lo,
    ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    series, b, cols, col_ok, w, bias, kq, c = _series_operands(w_ptr, b_ptr, kq_ptr, c_ptr, V, D, BLOCK_D, ACC)
    # an online softmax per row slot (its own max), combined after the loop
    slot_max = tl.full([BLOCK_T], float("-inf"), ACC)
    slot_sum = tl.zeros([BLOCK_T], ACC)
    slot_acc = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    for t0 in range(0, T, BLOCK_T):
        x, ok, valid, _, _ = _row_tile(x_ptr, mask_ptr, sm_b, sm_t, series, b, t0, T, D, cols, col_ok, BLOCK_T, ACC)
        # (a padded row normalises to the norm bias: its weight p is 0, so it adds nothing)
        h, _, _ = layer_norm_rows(x, ok, w, bias, D, eps_hi, eps_lo)
        score = tl.where(valid, tl.sum(h * kq[None, :], 1) + c, float("-inf"))  # [BLOCK_T]
        new_max = tl.maximum(slot_max, score)
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # a slot with no valid step yet
        rescale = tl.exp(slot_max - shift)
        p = tl.exp(score - shift)  # 0 at padded steps
        slot_sum = slot_sum * rescale + p
        slot_acc = slot_acc * rescale[:, None] + p[:, None] * h
        slot_max = new_max
    row_max = tl.max(slot_max, 0)
    shift = tl.where(row_max == float("-inf"), 0.0, row_max)
    rescale = tl.exp(slot_max - shift)  # 0 for slots that saw no valid step
    total = tl.sum(slot_sum * rescale, 0)
    pooled = tl.sum(slot_acc * rescale[:, None], 0) / tl.where(total > 0, total, 1.0)  # [BLOCK_D]
    tl.store(out_ptr + series * D + cols, cast_for(pooled, out_ptr), mask=col_ok)
    tl.store(pooled_ptr + series * D + cols, pooled, mask=col_ok)
    tl.store(max_ptr + series, shift)
    tl.store(sum_ptr + series, total)


@triton.jit
def _norm_pool_bwd_kernel(
    dout_ptr, x_ptr, mask_ptr, w_ptr, b_ptr, kq_ptr, c_ptr, pooled_ptr, max_ptr, sum_ptr,
    dx_ptr, dw_part_ptr, db_part_ptr, dkq_part_ptr,
    sm_b, sm_t, V, T, D, eps_hi, eps_lo,
    ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # pooled = sum_t a_t h_t, a = softmax over valid t of s_t = h_t . kq + c:
    #   dh_t = a_t g + ds_t kq,  ds_t = a_t (g . h_t - g . pooled),
    #   dkq = sum_t ds_t h_t,
    # then the LayerNorm backward of dh_t to dx_t. (c's gradient, sum_t ds_t,
    # is exactly 0: the host returns that, not this sum's rounding noise.)
    series, b, cols, col_ok, w, bias, kq, c = _series_operands(w_ptr, b_ptr, kq_ptr, c_ptr, V, D, BLOCK_D, ACC)
    g = tl.load(dout_ptr + series * D + cols, mask=col_ok, other=0.0).to(ACC)  # [BLOCK_D]
    pooled = tl.load(pooled_ptr + series * D + cols, mask=col_ok, other=0.0)
    g_pooled = tl.sum(g * pooled, 0)
    shift = tl.load(max_ptr + series)
    total = tl.load(sum_ptr + series)
    inv_total = 1.0 / tl.where(total > 0, total, 1.0)
    # per-(row slot, column) partial sums, reduced once after the loop
    dw_acc = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    db_acc = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    dkq_acc = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    for t0 in range(0, T, BLOCK_T):
        x, ok, valid, in_range, offs = _row_tile(x_ptr, mask_ptr, sm_b, sm_t, series, b, t0, T, D, cols, col_ok, BLOCK_T, ACC)
        h, mean, rstd = layer_norm_rows(x, ok, w, bias, D, eps_hi, eps_lo)  # the norm bias at padded rows
        xhat = tl.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
        score = tl.sum(h * kq[None, :], 1) + c
        a = tl.exp(tl.where(valid, score - shift, float("-inf"))) * inv_total  # [BLOCK_T], 0 at padded steps
        ds = a * (tl.sum(h * g[None, :], 1) - g_pooled)
        dh = a[:, None] * g[None, :] + ds[:, None] * kq[None, :]  # 0 at padded rows (a, ds) and columns (g, kq)
        dkq_acc += ds[:, None] * h
        dw_acc += dh * xhat
        db_acc += dh
        dx = layer_norm_rows_bwd(dh, xhat, w, rstd, D)  # 0 at padded steps: dh and xhat are
        tl.store(dx_ptr + offs, cast_for(dx, dx_ptr), mask=in_range[:, None] & col_ok[None, :])
    tl.store(dw_part_ptr + series * D + cols, tl.sum(dw_acc, 0), mask=col_ok)
    tl.store(db_part_ptr + series * D + cols, tl.sum(db_acc, 0), mask=col_ok)
    tl.store(dkq_part_ptr + series * D + cols, tl.sum(dkq_acc, 0), mask=col_ok)


# --------------------------------------------------------------- host side


def _tiles(D: int, tile: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_D, num_warps) of a tile of about ``tile`` elements, by
    the norm kernels' rules (whole rows, at most 16 of them)."""
    bd = block_d(D)
    bt = block_m(bd, tile)
    return bt, bd, warps(bt, bd)


def unsupported_reason(x: torch.Tensor) -> Optional[str]:
    """The norm kernels' limits: a row of D <= norm_linear.MAX_D in one block."""
    return _norm_unsupported(x)


def norm_pool_fwd(x, mask, norm_weight, norm_bias, eps: float, key_query, score_bias, out_dtype):
    """x (B, V, T, D) contiguous, mask (B, T) bool; key_query (D,), score_bias
    () in the compute dtype. Returns (pooled (B, V, D) in out_dtype, pooled
    in the compute dtype, row max (B, V), softmax sum (B, V))."""
    B, V, T, D = x.shape
    acc = compute_dtype(x.dtype)
    out = torch.empty((B, V, D), dtype=out_dtype, device=x.device)
    pooled = torch.empty((B, V, D), dtype=acc, device=x.device)
    row_max = torch.empty((B, V), dtype=acc, device=x.device)
    row_sum = torch.empty((B, V), dtype=acc, device=x.device)
    if B * V == 0:
        return out, pooled, row_max, row_sum
    bt, bd, nw = _tiles(D, TILE_ELEMENTS)
    eps_hi, eps_lo = split_float32(eps)
    m = mask.view(torch.uint8)
    _norm_pool_fwd_kernel[(B * V,)](
        x, m, norm_weight.contiguous(), norm_bias.contiguous(), key_query.contiguous(),
        score_bias, out, pooled, row_max, row_sum, m.stride(0), m.stride(1), V, T, D, eps_hi, eps_lo,
        ACC=acc_dtype(x.dtype), BLOCK_T=bt, BLOCK_D=bd, num_warps=nw,
    )
    return out, pooled, row_max, row_sum


def norm_pool_bwd(dout, x, mask, norm_weight, norm_bias, eps: float, key_query, score_bias, pooled, row_max,
                  row_sum):
    """Gradients (dx, dnorm_weight, dnorm_bias, dkey_query, dscore_bias) of
    norm_pool_fwd's pooled output, given its gradient dout (B, V, D).
    dscore_bias is exactly 0: a shift of every score is what the softmax
    cancels."""
    B, V, T, D = x.shape
    acc = compute_dtype(x.dtype)
    dx = torch.empty_like(x)
    series = B * V
    parts = [torch.empty((series, D), dtype=acc, device=x.device) for _ in range(3)]
    dscore_bias = torch.zeros((), dtype=acc, device=x.device)
    if series == 0:
        zeros = torch.zeros((D,), dtype=acc, device=x.device)
        return dx, zeros, zeros.clone(), zeros.clone(), dscore_bias
    bt, bd, nw = _tiles(D, BWD_TILE_ELEMENTS)
    eps_hi, eps_lo = split_float32(eps)
    m = mask.view(torch.uint8)
    _norm_pool_bwd_kernel[(series,)](
        dout.contiguous(), x, m, norm_weight.contiguous(), norm_bias.contiguous(),
        key_query.contiguous(), score_bias, pooled, row_max, row_sum,
        dx, *parts, m.stride(0), m.stride(1), V, T, D, eps_hi, eps_lo,
        ACC=acc_dtype(x.dtype), BLOCK_T=bt, BLOCK_D=bd, num_warps=nw,
    )
    dw, db, dkq = (p.sum(0) for p in parts)
    return dx, dw, db, dkq, dscore_bias


# ------------------------------------------------------ custom-op registration


@torch.library.custom_op("migt::norm_attention_pool", mutates_args=())
def _norm_pool_op(
    x: torch.Tensor, mask: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float,
    key_query: torch.Tensor, score_bias: torch.Tensor, out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return norm_pool_fwd(x, mask, norm_weight, norm_bias, eps, key_query, score_bias, out_dtype)


@_norm_pool_op.register_fake
def _(x, mask, norm_weight, norm_bias, eps, key_query, score_bias, out_dtype):
    B, V, _, D = x.shape
    acc = compute_dtype(x.dtype)
    return (x.new_empty((B, V, D), dtype=out_dtype), x.new_empty((B, V, D), dtype=acc),
            x.new_empty((B, V), dtype=acc), x.new_empty((B, V), dtype=acc))


@torch.library.custom_op("migt::norm_attention_pool_backward", mutates_args=())
def _norm_pool_backward_op(
    dout: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
    eps: float, key_query: torch.Tensor, score_bias: torch.Tensor, pooled: torch.Tensor, row_max: torch.Tensor,
    row_sum: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return norm_pool_bwd(dout, x, mask, norm_weight, norm_bias, eps, key_query, score_bias, pooled, row_max,
                         row_sum)


@_norm_pool_backward_op.register_fake
def _(dout, x, mask, norm_weight, norm_bias, eps, key_query, score_bias, pooled, row_max, row_sum):
    D = x.shape[-1]
    acc = compute_dtype(x.dtype)
    return (x.new_empty(x.shape), x.new_empty((D,), dtype=acc), x.new_empty((D,), dtype=acc),
            x.new_empty((D,), dtype=acc), x.new_empty((), dtype=acc))


def _setup_context(ctx, inputs, output):
    x, mask, norm_weight, norm_bias, eps, key_query, score_bias, _ = inputs
    _, pooled, row_max, row_sum = output
    ctx.set_materialize_grads(False)  # the float pooled copy and the softmax statistics are only saved
    ctx.eps = eps
    ctx.save_for_backward(x, mask, norm_weight, norm_bias, key_query, score_bias, pooled, row_max, row_sum)


def _backward(ctx, dout, _dpooled, _dmax, _dsum):
    x, mask, norm_weight, norm_bias, key_query, score_bias, pooled, row_max, row_sum = ctx.saved_tensors
    if dout is None:
        return None, None, None, None, None, None, None, None
    dx, dw, db, dkq, dc = _norm_pool_backward_op(dout, x, mask, norm_weight, norm_bias, ctx.eps, key_query,
                                                 score_bias, pooled, row_max, row_sum)
    return (dx, None, dw.to(norm_weight.dtype), db.to(norm_bias.dtype), None, dkq.to(key_query.dtype),
            dc.to(score_bias.dtype), None)


_norm_pool_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------ public function


def norm_attention_pool(x, mask, norm_weight, norm_bias, eps: float, key_query, score_bias, out_dtype):
    """Pooled (B, V, D) in out_dtype; key_query (D,) and score_bias () carry
    the softmax scale already (kernels.norm_attention_pool makes them)."""
    out, _, _, _ = _norm_pool_op(x.contiguous(), mask, norm_weight, norm_bias, float(eps), key_query, score_bias,
                                 out_dtype)
    return out
