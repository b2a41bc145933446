"""The model's input embedding in one pass (the "triton" backend of
kernels.value_embedding):

    x[b, v, t, :] = dropout(y[b, v, t] * weight[v] + bias[v] + pos[b, t])

y (B, V, T) is the RevIN output, weight and bias (V, D) the per-variable
Linear(1, D), pos (B, T, D) the calendar encoding. Eager PyTorch runs this as
a multiply, two adds and a dropout over (B, V, T, D) float32, each a full
read and write, and keeps a mask for the backward; here it is one write of x,
and the backward keeps y (one float per token) and the seed.

Dropout draws from seeds[0] at site 0 over the (B*V*T, D) rows, the mask of
kernels.dropout and philox.keep_mask (so the reference reproduces it).

Backward, two passes over the output gradient (each draws the mask again):
one walks the V variables of a (b, block of steps) tile, writing dy and
summing the calendar gradient dpos[b, t] = sum_v g[b, v, t] in registers;
the other gives each variable a few persistent programs that keep their
weight and bias gradients as (steps, columns) register partials over their
tiles and write them once, summed on the host (no atomics: deterministic,
and the partials do not grow with the batch). One pass did both, summing
across rows for every variable of every tile (48 reductions through shared
memory, and a barrier, per tile): 0.86 ms on the H200 for 0.47 GB.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import backward_programs, cdiv, loop_stages
from ._tiles import cast_for, keep_tile, split_scalar, tile_offsets
from .norm_linear import MAX_D, TILE_ELEMENTS, acc_dtype, block_d, block_m, dropout_args, warps
from .reference import compute_dtype

SITE = tl.constexpr(0)  # seeds[0], as kernels.dropout (a constexpr: kernels read globals only so)
# backward tiles: BLOCK_T steps of one sample, a whole row of D each
BWD_TILE_ELEMENTS = 4096


@triton.jit
def _value_embedding_fwd_kernel(
    y_ptr, w_ptr, b_ptr, pos_ptr, seed_ptr, out_ptr, N, VT, T, D, cut, scale_hi, scale_lo,
    HAS_DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # flat (b, v, t) [BLOCK_M]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = rows < N
    ok = row_ok[:, None] & (cols < D)[None, :]  # [BLOCK_M, BLOCK_D]
    r = rows.to(tl.int64)
    v = (r % VT) // T
    bt = (r // VT) * T + r % T  # row of pos (B*T, D)
    y = tl.load(y_ptr + r, mask=row_ok, other=0.0).to(ACC)  # [BLOCK_M]
    w = tl.load(w_ptr + tile_offsets(v, cols, D), mask=ok, other=0.0).to(ACC)
    b = tl.load(b_ptr + tile_offsets(v, cols, D), mask=ok, other=0.0).to(ACC)
    pos = tl.load(pos_ptr + tile_offsets(bt, cols, D), mask=ok, other=0.0).to(ACC)
    x = y[:, None] * w + b + pos
    if HAS_DROPOUT:
        scale = split_scalar(scale_hi, scale_lo, ACC)
        x = tl.where(keep_tile(seed_ptr, SITE, rows, 0, D, cut, BLOCK_D), x * scale, 0.0)
    tl.store(out_ptr + tile_offsets(rows, cols, D), cast_for(x, out_ptr), mask=ok)


@triton.jit
def _value_embedding_bwd_rows_kernel(
    dout_ptr, w_ptr, seed_ptr, dy_ptr, dpos_ptr, V, T, D, cut, scale_hi, scale_lo,
    HAS_DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program per (b, block of steps): walks the V variables, writing
    # dy and summing the calendar gradient dpos[b, t] = sum_v g in registers.
    t_blocks = tl.cdiv(T, BLOCK_T)
    b = tl.program_id(0) // t_blocks
    t = (tl.program_id(0) % t_blocks) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    col_ok = cols < D
    t_ok = t < T
    ok = t_ok[:, None] & col_ok[None, :]  # [BLOCK_T, BLOCK_D]
    dpos = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    for v in range(V):
        rows = (b.to(tl.int64) * V + v) * T + t  # [BLOCK_T]
        g = _dropped_grad(dout_ptr, seed_ptr, rows, cols, ok, D, cut, scale_hi, scale_lo, HAS_DROPOUT, ACC, BLOCK_D)
        w = tl.load(w_ptr + v * D + cols, mask=col_ok, other=0.0).to(ACC)  # [BLOCK_D]
        tl.store(dy_ptr + rows, cast_for(tl.sum(g * w[None, :], 1), dy_ptr), mask=t_ok)
        dpos += g
    pos_rows = b.to(tl.int64) * T + t
    tl.store(dpos_ptr + tile_offsets(pos_rows, cols, D), cast_for(dpos, dpos_ptr), mask=ok)


@triton.jit
def _value_embedding_bwd_params_kernel(
    dout_ptr, y_ptr, seed_ptr, dw_part_ptr, db_part_ptr, V, T, D, n_tiles, cut, scale_hi, scale_lo,
    HAS_DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    LOOP_STAGES: tl.constexpr,
):
    # Program (pid, v) walks the (b, block of steps) tiles pid, pid + P, ...
    # of variable v, keeping (steps, columns) partials of dweight[v] and
    # dbias[v] in registers, reduced over the steps once after the loop (a
    # reduction across rows per tile puts a barrier in every iteration).
    v = tl.program_id(0)  # V on the grid's x axis: its y axis stops at 65535
    pid = tl.program_id(1)
    t_blocks = tl.cdiv(T, BLOCK_T)
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    col_ok = cols < D
    dw_acc = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    db_acc = tl.zeros([BLOCK_T, BLOCK_D], ACC)
    for tile in tl.range(pid, n_tiles, tl.num_programs(1), num_stages=LOOP_STAGES):
        b = tile // t_blocks
        t = (tile % t_blocks) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
        t_ok = t < T
        rows = (b.to(tl.int64) * V + v) * T + t  # [BLOCK_T]
        g = _dropped_grad(dout_ptr, seed_ptr, rows, cols, t_ok[:, None] & col_ok[None, :], D, cut,
                          scale_hi, scale_lo, HAS_DROPOUT, ACC, BLOCK_D)
        y = tl.load(y_ptr + rows, mask=t_ok, other=0.0).to(ACC)  # [BLOCK_T]
        dw_acc += g * y[:, None]
        db_acc += g
    part = (pid * V + v) * D + cols
    tl.store(dw_part_ptr + part, tl.sum(dw_acc, 0), mask=col_ok)
    tl.store(db_part_ptr + part, tl.sum(db_acc, 0), mask=col_ok)


@triton.jit
def _dropped_grad(dout_ptr, seed_ptr, rows, cols, ok, D, cut, scale_hi, scale_lo,
                  HAS_DROPOUT: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    """The gradient before the dropout, g, of rows ``rows`` (flat (b, v, t)): the
    output gradient through the forward's mask, drawn again."""
    g = tl.load(dout_ptr + tile_offsets(rows, cols, D), mask=ok, other=0.0).to(ACC)
    if HAS_DROPOUT:
        scale = split_scalar(scale_hi, scale_lo, ACC)
        g = tl.where(keep_tile(seed_ptr, SITE, rows, 0, D, cut, BLOCK_D), g * scale, 0.0)
    return g


# --------------------------------------------------------------- host side


def unsupported_reason(y: torch.Tensor, weight: torch.Tensor) -> Optional[str]:
    D = weight.shape[-1]
    if D > MAX_D:
        return f"D={D} is over {MAX_D} (a row must fit one block)"
    return None


def _compute_dtype(weight_dtype, pos_dtype) -> torch.dtype:
    """The math's dtype: float32 at least, float64 when the parameters or pos are."""
    return compute_dtype(torch.promote_types(weight_dtype, pos_dtype))


def value_embedding_fwd(y, weight, bias, pos, seeds, p: float, out_dtype):
    """x (B, V, T, D) in out_dtype from contiguous y (B, V, T), weight, bias
    (V, D) and pos (B, T, D)."""
    B, V, T = y.shape
    D = weight.shape[1]
    out = torch.empty((B, V, T, D), dtype=out_dtype, device=y.device)
    N = B * V * T
    if N == 0 or D == 0:
        return out
    has_dropout, cut, scale_hi, scale_lo = dropout_args(seeds, p)
    bd = block_d(D)
    bm = block_m(bd, TILE_ELEMENTS)
    _value_embedding_fwd_kernel[(cdiv(N, bm),)](
        y, weight, bias, pos, seeds if has_dropout else y, out, N, V * T, T, D, cut, scale_hi, scale_lo,
        HAS_DROPOUT=has_dropout, ACC=acc_dtype(_compute_dtype(weight.dtype, pos.dtype)),
        BLOCK_M=bm, BLOCK_D=bd, num_warps=warps(bm, bd),
    )
    return out


def params_programs(device: torch.device, tiles: int, V: int) -> int:
    """Programs per variable of the weight and bias gradients' pass, each
    with its own (D,) partial rows (summed on the host: no atomics,
    deterministic): about BWD_PROGRAMS_PER_SM programs per SM over the V
    variables on a GPU, at most one per tile; a few under the interpreter."""
    if device.type != "cuda":
        return backward_programs(device, tiles)
    return max(1, min(tiles, backward_programs(device, tiles * V) // V))


def value_embedding_bwd(dout, y, weight, seeds, p: float, pos_dtype):
    """Gradients (dy, dweight, dbias, dpos) of value_embedding_fwd; dweight
    and dbias in the compute dtype, dy in y's dtype, dpos in pos_dtype."""
    B, V, T = y.shape
    D = weight.shape[1]
    acc = _compute_dtype(weight.dtype, pos_dtype)
    dy = torch.empty_like(y)
    dpos = torch.empty((B, T, D), dtype=pos_dtype, device=y.device)
    if B * V * T == 0 or D == 0:
        zeros = torch.zeros((V, D), dtype=acc, device=y.device)
        return dy, zeros, zeros.clone(), dpos.zero_()
    has_dropout, cut, scale_hi, scale_lo = dropout_args(seeds, p)
    bd = block_d(D)
    bt = block_m(bd, BWD_TILE_ELEMENTS)
    tiles = B * cdiv(T, bt)
    seed_arg = seeds if has_dropout else y
    acc_tl = acc_dtype(acc)
    _value_embedding_bwd_rows_kernel[(tiles,)](
        dout, weight, seed_arg, dy, dpos, V, T, D, cut, scale_hi, scale_lo,
        HAS_DROPOUT=has_dropout, ACC=acc_tl, BLOCK_T=bt, BLOCK_D=bd, num_warps=warps(bt, bd),
    )
    programs = params_programs(y.device, tiles, V)
    dw_part = torch.empty((programs, V, D), dtype=acc, device=y.device)
    db_part = torch.empty((programs, V, D), dtype=acc, device=y.device)
    _value_embedding_bwd_params_kernel[(V, programs)](
        dout, y, seed_arg, dw_part, db_part, V, T, D, tiles, cut, scale_hi, scale_lo,
        HAS_DROPOUT=has_dropout, ACC=acc_tl, BLOCK_T=bt, BLOCK_D=bd,
        LOOP_STAGES=loop_stages(bt * bd, dout), num_warps=warps(bt, bd),
    )
    return dy, dw_part.sum(0), db_part.sum(0), dpos


# ------------------------------------------------------ custom-op registration


@torch.library.custom_op("migt::value_embedding", mutates_args=())
def _value_embedding_op(
    y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, pos: torch.Tensor, seeds: torch.Tensor, p: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    return value_embedding_fwd(y, weight, bias, pos, seeds, p, out_dtype)


@_value_embedding_op.register_fake
def _(y, weight, bias, pos, seeds, p, out_dtype):
    return y.new_empty((*y.shape, weight.shape[1]), dtype=out_dtype)


@torch.library.custom_op("migt::value_embedding_backward", mutates_args=())
def _value_embedding_backward_op(
    dout: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, seeds: torch.Tensor, p: float, pos_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return value_embedding_bwd(dout, y, weight, seeds, p, pos_dtype)


@_value_embedding_backward_op.register_fake
def _(dout, y, weight, seeds, p, pos_dtype):
    B, V, T = y.shape
    D = weight.shape[1]
    acc = _compute_dtype(weight.dtype, pos_dtype)
    return (y.new_empty(y.shape), y.new_empty((V, D), dtype=acc), y.new_empty((V, D), dtype=acc),
            y.new_empty((B, T, D), dtype=pos_dtype))


def _setup_context(ctx, inputs, output):
    y, weight, _, pos, seeds, p, _ = inputs
    ctx.p, ctx.pos_dtype = p, pos.dtype
    ctx.save_for_backward(y, weight, seeds)  # one float per token; no mask, no x


def _backward(ctx, dout):
    y, weight, seeds = ctx.saved_tensors
    dy, dweight, dbias, dpos = _value_embedding_backward_op(dout.contiguous(), y, weight, seeds, ctx.p,
                                                            ctx.pos_dtype)
    return dy, dweight.to(weight.dtype), dbias.to(weight.dtype), dpos, None, None, None


_value_embedding_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------ public function


def value_embedding(y, weight, bias, pos, seeds, p: float, out_dtype):
    """dropout(y[..., None] * weight[:, None] + bias[:, None] + pos[:, None])
    as (B, V, T, D) in out_dtype; inputs made contiguous, bias in weight's
    dtype (the caller checks shapes and seeds)."""
    return _value_embedding_op(y.contiguous(), weight.contiguous(), bias.contiguous(), pos.contiguous(),
                               seeds.contiguous(), float(p), out_dtype)
