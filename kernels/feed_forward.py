"""The FFN half of a pre-norm transformer block as one autograd node (the
"triton" backend of kernels.residual_feed_forward):

    x_mid  = x + dropout(branch)                        residual add   (site 0)
    h      = layer_norm(x_mid)                          one pass with the add
    hidden = h @ W1.T + b1                              cuBLAS GEMM, bias in its epilogue
    g      = dropout(gelu(hidden))                      one pass       (site 1)
    out    = x_mid + dropout(g @ W2.T + b2)             GEMM, then one pass (site 2)

What the backward keeps: x (which the block's first node keeps too) and the
branch, the per-row mean and rstd of the norm, the GEMMs' pre-activation
``hidden`` (or nothing of it with recompute_hidden=True, which redoes the
first GEMM), and one int64 seed per dropout site. x_mid is never stored:
the output pass and the backward rebuild it from x and the branch. h and g
are recomputed (g by the GELU backward, which reads the hidden anyway); the
dropout bits are redrawn from the seeds (kernels/philox.py); no mask is
stored. The first bias's gradient is reduced inside the GELU backward, the
second's inside the dropout-gradient pass (two stages each, deterministic).
A large batch runs a chunk of rows at a time (kernels/chunking.py), so no
(rows, d_ff) tensor but the kept hidden is ever made for the whole batch.
With ``gelu_in_gemm`` the first GEMM and the GELU + dropout pass are one
Triton kernel, and so are the d-hidden GEMM and the GELU backward
(kernels/gelu_gemm.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import backward_programs, cdiv, loop_stages
from ._tiles import branch_rows, cast_for, keep_tile, split_scalar, tile_offsets
from . import gelu_gemm
from .gelu import gelu, gelu_and_grad
from .chunking import ChunkGradients, mm_float32, row_chunks
from .norm_linear import (
    TILE_ELEMENTS, acc_dtype, block_d, block_m, dropout_args,
    residual_norm_bwd, residual_norm_fwd, warps,
)
from .norm_linear import unsupported_reason as _norm_unsupported
from .reference import compute_dtype

BRANCH_SITE, HIDDEN_SITE, OUTPUT_SITE = 0, 1, 2  # seeds[site]: kernels.dropout_seeds draws three
# Hidden tiles: 16 rows x 256 columns forward (pure streaming, chosen by
# reasoning) and backward, where the H200 measured 16 rows 10% faster than 8
# at 4 programs per SM (bench/results/2026-11-28-nvidia-h200-fused-step/).
HIDDEN_BLOCK_M, HIDDEN_BLOCK_C, HIDDEN_BWD_BLOCK_M = 16, 256, 16
HIDDEN_BWD_PROGRAMS_PER_SM = 4


# ------------------------------------------------------------------ kernels


@triton.jit
def _gelu_dropout_fwd_kernel(
    hidden_ptr, seed_ptr, g_ptr, N, row0, C, cut, scale_hi, scale_lo,
    HAS_DROPOUT: tl.constexpr, SITE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    ok = (rows < N)[:, None] & (cols < C)[None, :]  # [BLOCK_M, BLOCK_C]
    offs = tile_offsets(rows, cols, C)
    f = tl.load(hidden_ptr + offs, mask=ok, other=0.0).to(ACC)
    g = gelu(f, hidden_ptr.dtype.element_ty.primitive_bitwidth == 16)  # nn.GELU()'s; 16-bit: kernels/gelu.py
    if HAS_DROPOUT:
        scale = split_scalar(scale_hi, scale_lo, ACC)
        kept = keep_tile(seed_ptr, SITE, row0 + rows, tl.program_id(1) * BLOCK_C, C, cut, BLOCK_C)
        g = tl.where(kept, g * scale, 0.0)
    tl.store(g_ptr + offs, cast_for(g, g_ptr), mask=ok)


@triton.jit
def _gelu_dropout_bwd_kernel(
    dg_ptr, hidden_ptr, seed_ptr, dhidden_ptr, g_ptr, db_part_ptr, N, row0, C, cut, scale_hi, scale_lo,
    HAS_DROPOUT: tl.constexpr, SITE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, LOOP_STAGES: tl.constexpr,
):
    # Program (pid, column block) walks row blocks pid, pid + P, ... and keeps
    # its partial column sums of dhidden (the first bias's gradient). It also
    # writes g = dropout(gelu(hidden)) again (the forward's expression, so the
    # same values) for the second GEMM's weight gradient: hidden is read here
    # anyway, and a separate recompute pass would read it once more.
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    col_ok = cols < C
    db_acc = tl.zeros([BLOCK_M, BLOCK_C], ACC)  # reduced over its rows once, after the loop
    for block in tl.range(pid, tl.cdiv(N, BLOCK_M), tl.num_programs(0), num_stages=LOOP_STAGES):
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        ok = (rows < N)[:, None] & col_ok[None, :]  # [BLOCK_M, BLOCK_C]
        offs = tile_offsets(rows, cols, C)
        f = tl.load(hidden_ptr + offs, mask=ok, other=0.0).to(ACC)
        dg = tl.load(dg_ptr + offs, mask=ok, other=0.0).to(ACC)
        # g bitwise as _gelu_dropout_fwd_kernel's (same helper, same dtype test)
        g, slope = gelu_and_grad(f, hidden_ptr.dtype.element_ty.primitive_bitwidth == 16)
        if HAS_DROPOUT:
            scale = split_scalar(scale_hi, scale_lo, ACC)
            keep = keep_tile(seed_ptr, SITE, row0 + rows, tl.program_id(1) * BLOCK_C, C, cut, BLOCK_C)
            dg = tl.where(keep, dg * scale, 0.0)
            g = tl.where(keep, g * scale, 0.0)
        tl.store(g_ptr + offs, cast_for(g, g_ptr), mask=ok)
        df = dg * slope
        db_acc += df
        tl.store(dhidden_ptr + offs, cast_for(df, dhidden_ptr), mask=ok)
    tl.store(db_part_ptr + pid * C + cols, tl.sum(db_acc, 0), mask=col_ok)


@triton.jit
def _dropout_add_kernel(
    x_ptr, mid_ptr, branch_ptr, seed_ptr, out_ptr, mid_bias_ptr, N, row0, D, cut, scale_hi, scale_lo,
    HAS_X: tl.constexpr, HAS_MID: tl.constexpr, HAS_DROPOUT: tl.constexpr, MID_SITE: tl.constexpr,
    SITE: tl.constexpr, ACC: tl.constexpr, MID_ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_MID_BIAS: tl.constexpr,
):
    # out = base + dropout(branch), base = x, or with HAS_MID the block's
    # x_mid = x + dropout(mid) rebuilt (rounded to x's dtype as the norm
    # kernel rounds it); without x, dropout alone (its backward: the same
    # mask applied to the output gradient)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    col_ok = cols < D
    ok = (rows < N)[:, None] & col_ok[None, :]  # [BLOCK_M, BLOCK_D]
    offs = tile_offsets(rows, cols, D)
    scale = split_scalar(scale_hi, scale_lo, ACC)
    out = tl.load(branch_ptr + offs, mask=ok, other=0.0).to(ACC)
    if HAS_DROPOUT:
        out = tl.where(keep_tile(seed_ptr, SITE, row0 + rows, 0, D, cut, BLOCK_D), out * scale, 0.0)
    if HAS_X:
        base = tl.load(x_ptr + offs, mask=ok, other=0.0)
        if HAS_MID:  # in x's accumulation dtype, as the norm kernels add it
            mid = branch_rows(mid_ptr, mid_bias_ptr, offs, ok, cols, col_ok, HAS_MID_BIAS, MID_ACC)
            if HAS_DROPOUT:
                mid_scale = split_scalar(scale_hi, scale_lo, MID_ACC)
                mid = tl.where(keep_tile(seed_ptr, MID_SITE, row0 + rows, 0, D, cut, BLOCK_D), mid * mid_scale, 0.0)
            base = cast_for(base.to(MID_ACC) + mid, x_ptr)
        out += base.to(ACC)
    tl.store(out_ptr + offs, cast_for(out, out_ptr), mask=ok)


@triton.jit
def _dropout_grad_kernel(
    dout_ptr, seed_ptr, df_ptr, db_part_ptr, N, row0, D, cut, scale_hi, scale_lo,
    HAS_DROPOUT: tl.constexpr, WRITE_DF: tl.constexpr, SITE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, LOOP_STAGES: tl.constexpr,
):
    # df = dropout's gradient of dout (the same mask) in df's dtype, and the
    # column sums of that df: the second GEMM's bias gradient. Persistent:
    # program pid walks row blocks pid, pid + P, ... keeping (rows, columns)
    # partials, reduced once after the loop (docs/kernel-tuning.md, 6).
    # Without WRITE_DF, dout is df already and only the sums are made.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    col_ok = cols < D
    db_acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for block in tl.range(pid, tl.cdiv(N, BLOCK_M), tl.num_programs(0), num_stages=LOOP_STAGES):
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        ok = (rows < N)[:, None] & col_ok[None, :]  # [BLOCK_M, BLOCK_D]
        offs = tile_offsets(rows, cols, D)
        df = tl.load(dout_ptr + offs, mask=ok, other=0.0).to(ACC)
        if HAS_DROPOUT:
            scale = split_scalar(scale_hi, scale_lo, ACC)
            df = tl.where(keep_tile(seed_ptr, SITE, row0 + rows, 0, D, cut, BLOCK_D), df * scale, 0.0)
        df = cast_for(df, df_ptr)
        if WRITE_DF:
            tl.store(df_ptr + offs, df, mask=ok)
        db_acc += df.to(ACC)  # the bias gradient sums the rounded df, as the GEMMs read it
    tl.store(db_part_ptr + pid * D + cols, tl.sum(db_acc, 0), mask=col_ok)


# --------------------------------------------------------------- host side


def gelu_dropout_fwd(hidden, seeds, p: float, row0: int = 0):
    """g = dropout(gelu(hidden)) for contiguous hidden (N, C), in hidden's
    dtype. row0: the index of hidden's first row when it is a chunk of the
    whole (the dropout bits count rows from there)."""
    N, C = hidden.shape
    g = torch.empty_like(hidden)
    if hidden.numel() == 0:
        return g
    has_dropout, cut, scale_hi, scale_lo = dropout_args(seeds, p)
    grid = (cdiv(N, HIDDEN_BLOCK_M), cdiv(C, HIDDEN_BLOCK_C))
    _gelu_dropout_fwd_kernel[grid](
        hidden, seeds if has_dropout else hidden, g, N, row0, C, cut, scale_hi, scale_lo,
        HAS_DROPOUT=has_dropout, SITE=HIDDEN_SITE, ACC=acc_dtype(hidden.dtype),
        BLOCK_M=HIDDEN_BLOCK_M, BLOCK_C=HIDDEN_BLOCK_C, num_warps=8,
    )
    return g


def gelu_dropout_bwd(dg, hidden, seeds, p: float, row0: int = 0):
    """Returns dhidden (N, C) in hidden's dtype, its column sums (C,) in the
    compute dtype, and g = dropout(gelu(hidden)) (N, C) as the forward made
    it. row0: as for gelu_dropout_fwd."""
    N, C = hidden.shape
    acc = compute_dtype(hidden.dtype)
    # dhidden over dg (each element is read, then written, by one program
    # thread): one (N, C) tensor less at the backward's peak
    dhidden = dg if dg.dtype == hidden.dtype and dg.is_contiguous() else torch.empty_like(hidden)
    g = torch.empty_like(hidden)
    if hidden.numel() == 0:
        return dhidden, torch.zeros((C,), dtype=acc, device=hidden.device), g
    has_dropout, cut, scale_hi, scale_lo = dropout_args(seeds, p)
    col_blocks = cdiv(C, HIDDEN_BLOCK_C)
    # enough (row, column) programs to fill the GPU, each looping over row blocks
    programs = max(1, backward_programs(hidden.device, cdiv(N, HIDDEN_BWD_BLOCK_M), HIDDEN_BWD_PROGRAMS_PER_SM)
                   // col_blocks)
    db_part = torch.empty((programs, C), dtype=acc, device=hidden.device)
    _gelu_dropout_bwd_kernel[(programs, col_blocks)](
        dg, hidden, seeds if has_dropout else hidden, dhidden, g, db_part, N, row0, C, cut, scale_hi, scale_lo,
        HAS_DROPOUT=has_dropout, SITE=HIDDEN_SITE, ACC=acc_dtype(hidden.dtype),
        BLOCK_M=HIDDEN_BWD_BLOCK_M, BLOCK_C=HIDDEN_BLOCK_C,
        LOOP_STAGES=loop_stages(HIDDEN_BWD_BLOCK_M * HIDDEN_BLOCK_C, dg, hidden), num_warps=8,
    )
    return dhidden, db_part.sum(0), g


def _dropout_rows(x, branch, seeds, site: int, cut: int, scale_hi: float, scale_lo: float, out,
                  *, mid=None, mid_site: int = 0, has_dropout: bool = True, row0: int = 0, mid_bias=None):
    """out = (x +) dropout(branch) over contiguous (N, D) rows, whole rows per
    tile; with ``mid``, out = (x + dropout_mid_site(mid (+ mid_bias))) + dropout(branch)."""
    N, D = branch.shape
    if branch.numel():
        bd = block_d(D)
        bm = block_m(bd, TILE_ELEMENTS)
        _dropout_add_kernel[(cdiv(N, bm),)](
            x if x is not None else branch, mid if mid is not None else branch, branch,
            seeds if has_dropout else branch, out, mid_bias if mid_bias is not None else branch,
            N, row0, D, cut, scale_hi, scale_lo,
            HAS_X=x is not None, HAS_MID=mid is not None, HAS_DROPOUT=has_dropout, MID_SITE=mid_site, SITE=site,
            HAS_MID_BIAS=mid is not None and mid_bias is not None,
            ACC=acc_dtype(torch.promote_types(branch.dtype, out.dtype)),
            MID_ACC=acc_dtype(x.dtype if x is not None else out.dtype),
            BLOCK_M=bm, BLOCK_D=bd, num_warps=warps(bm, bd),
        )
    return out


def residual_out(x, branch, f, seeds, p: float, row0: int = 0, out=None, branch_bias=None):
    """The block's output (x + dropout(branch (+ branch_bias))) + dropout(f)
    (sites 0 and 2) for contiguous (N, D) tensors, in x's dtype (into
    ``out`` when given): x_mid is rebuilt, not read. row0: as for gelu_dropout_fwd."""
    has_dropout, cut, scale_hi, scale_lo = dropout_args(seeds, p)
    return _dropout_rows(x, f, seeds, OUTPUT_SITE, cut, scale_hi, scale_lo,
                         torch.empty_like(x) if out is None else out,
                         mid=branch, mid_site=BRANCH_SITE, has_dropout=has_dropout, row0=row0, mid_bias=branch_bias)


def dropout_grad(dout, seeds, p: float, dtype, acc: torch.dtype, row0: int = 0):
    """Gradient of dropout (site 2) for contiguous (N, D) dout, in ``dtype``,
    and its column sums (D,) in ``acc``: (df, dbias) of the second GEMM, from
    one pass over dout. row0: as for gelu_dropout_fwd."""
    N, D = dout.shape
    has_dropout, cut, scale_hi, scale_lo = dropout_args(seeds, p)
    write_df = has_dropout or dout.dtype != dtype
    df = torch.empty(dout.shape, dtype=dtype, device=dout.device) if write_df else dout
    if dout.numel() == 0:
        return df, torch.zeros((D,), dtype=acc, device=dout.device)
    bd = block_d(D)
    bm = block_m(bd, TILE_ELEMENTS)
    programs = backward_programs(dout.device, cdiv(N, bm))
    kernel_acc = compute_dtype(torch.promote_types(torch.promote_types(dout.dtype, dtype), acc))
    db_part = torch.empty((programs, D), dtype=kernel_acc, device=dout.device)
    _dropout_grad_kernel[(programs,)](
        dout, seeds if has_dropout else dout, df, db_part, N, row0, D, cut, scale_hi, scale_lo,
        HAS_DROPOUT=has_dropout, WRITE_DF=write_df, SITE=OUTPUT_SITE, ACC=acc_dtype(kernel_acc),
        BLOCK_M=bm, BLOCK_D=bd, LOOP_STAGES=loop_stages(bm * bd, dout), num_warps=warps(bm, bd),
    )
    return df, db_part.sum(0).to(acc)


def unsupported_reason(x: torch.Tensor) -> Optional[str]:
    return _norm_unsupported(x)


def feed_forward_fwd(x, branch, seeds, p, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                     keep_hidden: bool, chunks=None, after_chunk=None, x_low_dtype=None, branch_bias=None,
                     gelu_in_gemm: bool = False):
    """Returns out, mean, rstd (N,), and hidden (N, C) (an empty tensor when
    not kept). x_mid is never stored: the output pass and the backward
    rebuild it from x and the branch. Runs a chunk of rows at a time
    (``chunks``, default row_chunks), so g never exists for the whole batch.
    after_chunk(rows, out_rows, x_low_rows), when given, runs after each
    chunk's output is written, with x's rows in x_low_dtype as the chunk's
    norm pass wrote them (None without x_low_dtype). branch_bias: (D,)
    added to the branch (x_mid = x + dropout(branch + branch_bias)).
    gelu_in_gemm: the first GEMM and the GELU + dropout as one Triton kernel
    (kernels/gelu_gemm.py) where its dtype allows, instead of cuBLAS and a pass."""
    D, C = x.shape[-1], fc1_weight.shape[0]
    x2, branch2 = x.reshape(-1, D), branch.reshape(-1, D)
    N = x2.shape[0]
    acc = compute_dtype(x.dtype)
    out = torch.empty_like(x2)
    mean = torch.empty((N,), dtype=acc, device=x.device)
    rstd = torch.empty((N,), dtype=acc, device=x.device)
    hidden = (torch.empty((N, C), dtype=fc1_weight.dtype, device=x.device) if keep_hidden
              else x.new_empty((0,), dtype=fc1_weight.dtype))
    gelu_in_gemm = gelu_in_gemm and gelu_gemm.applies(fc1_weight)
    for start, end in chunks or row_chunks(N, C, fc1_weight.element_size()):
        rows = slice(start, end)
        x_low = torch.empty((end - start, D), dtype=x_low_dtype, device=x.device) if x_low_dtype else None
        _, h, _, _ = residual_norm_fwd(x2[rows], branch2[rows], seeds, BRANCH_SITE, p, norm_weight, norm_bias, eps,
                                       fc1_weight.dtype, row0=start, stats=(mean[rows], rstd[rows]), x_low=x_low,
                                       branch_bias=branch_bias)
        if gelu_in_gemm:  # without keep_hidden the hidden is never written
            g = gelu_gemm.fc1_gelu(h, fc1_weight, fc1_bias, seeds, p, HIDDEN_SITE, row0=start,
                                   hidden=hidden[rows] if keep_hidden else None)
            del h
        else:
            if keep_hidden:
                hidden_rows = torch.addmm(fc1_bias, h, fc1_weight.t(), out=hidden[rows])  # [rows, C]
            else:
                hidden_rows = torch.addmm(fc1_bias, h, fc1_weight.t())
            del h
            g = gelu_dropout_fwd(hidden_rows, seeds, p, row0=start)
            del hidden_rows
        f = torch.addmm(fc2_bias, g, fc2_weight.t())  # [rows, D]
        del g
        residual_out(x2[rows], branch2[rows], f, seeds, p, row0=start, out=out[rows], branch_bias=branch_bias)
        if after_chunk is not None:
            after_chunk(rows, out[rows], x_low)
        del x_low
    return out.view(x.shape), mean, rstd, hidden


def feed_forward_bwd_rows(start, dout, x, branch, mean, rstd, hidden, dx, dbranch, seeds, p,
                          norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight, weight_grads_float32,
                          dx_add=None, accumulate_dx: bool = False, branch_bias=None, gelu_in_gemm: bool = False):
    """One chunk of feed_forward_bwd: writes dx and dbranch of these rows
    (start: the index of the first) and returns their parameter gradients
    dnorm_w, dnorm_b, dW1, db1, dW2, db2 (dW1 and dW2 in float32 when
    weight_grads_float32, for a sum over chunks), and with branch_bias its
    gradient (the column sums of dbranch, made in the norm backward pass).
    hidden is None under selective recompute. dx_add and accumulate_dx:
    gradients of x's other uses, added to dx alone (norm_linear.residual_norm_bwd).
    gelu_in_gemm: as feed_forward_fwd's (the d-hidden GEMM and the GELU +
    dropout backward as one kernel, which also recomputes the hidden's tiles
    under selective recompute)."""
    weight_grad = mm_float32 if weight_grads_float32 else torch.mm
    df, db2 = dropout_grad(dout, seeds, p, fc2_weight.dtype, mean.dtype, row0=start)  # [rows, D], [D]
    _, h, _, _ = residual_norm_fwd(x, branch, seeds, BRANCH_SITE, p, norm_weight, norm_bias, eps,
                                   fc1_weight.dtype, store_stats=False, row0=start, branch_bias=branch_bias)
    if gelu_in_gemm and gelu_gemm.applies(fc1_weight):
        # under selective recompute the kernel makes the hidden's tiles again itself
        recompute = (h, fc1_weight, fc1_bias) if hidden is None else None
        dhidden, db1, g = gelu_gemm.dhidden_gelu(df, fc2_weight, hidden, seeds, p, HIDDEN_SITE, row0=start,
                                                 recompute=recompute)
        del hidden
    else:
        if hidden is None:
            hidden = torch.addmm(fc1_bias, h, fc1_weight.t())
        dg = df @ fc2_weight  # [rows, C]
        # dhidden (over dg's buffer), db1, and g again (for dW2) in one pass over the hidden
        dhidden, db1, g = gelu_dropout_bwd(dg, hidden, seeds, p, row0=start)
        del dg, hidden
    dw2 = weight_grad(df.t(), g)
    del g, df
    dh = dhidden @ fc1_weight
    dw1 = weight_grad(dhidden.t(), h)
    del dhidden, h
    _, _, dnw, dnb, dbb = residual_norm_bwd(dh, dout, x, mean, rstd, norm_weight, branch=branch, seeds=seeds,
                                            site=BRANCH_SITE, p=p, row0=start, dx=dx, dbranch=dbranch,
                                            dx_add=dx_add, accumulate_dx=accumulate_dx, branch_bias=branch_bias)
    grads = (dnw, dnb, dw1, db1, dw2, db2)
    return grads if branch_bias is None else grads + (dbb,)


def grad_dtypes(fc1_weight, fc2_weight, branch_bias=None) -> list:
    """The dtypes feed_forward_bwd_rows' gradients are declared in, for
    chunking.ChunkGradients: dW1 and dW2 in the weights' (their chunks' GEMMs
    write float32 when there are several), the rest as they come (and the
    branch bias's, when there is one)."""
    return [None, None, fc1_weight.dtype, None, fc2_weight.dtype, None] + ([None] if branch_bias is not None else [])


def feed_forward_bwd(dout, x, branch, mean, rstd, hidden, seeds, p, norm_weight, norm_bias, eps,
                     fc1_weight, fc1_bias, fc2_weight, branch_bias=None, gelu_in_gemm: bool = False):
    """Gradients of feed_forward_fwd: dx, dbranch, dnorm_w, dnorm_b, dW1, db1,
    dW2, db2, and the branch bias's (an empty tensor without one).

    A chunk of rows at a time, as the forward, so the (rows, C) working set
    is bounded whatever the batch. With several chunks the parameter
    gradients are summed over chunks in the compute dtype (float32 under
    bf16: the weight GEMMs write float32), then rounded once to the weights'
    dtype, as one whole-batch GEMM rounds them."""
    D, C = x.shape[-1], fc1_weight.shape[0]
    x2, branch2 = x.reshape(-1, D), branch.reshape(-1, D)
    dout2 = dout.reshape(-1, D).contiguous()
    dx, dbranch = torch.empty_like(x2), torch.empty_like(branch2)
    keep_hidden = hidden.dim() == 2  # else the (0,) placeholder of selective recompute
    chunks = row_chunks(x2.shape[0], C, fc1_weight.element_size())
    grads = ChunkGradients(len(chunks), mean.dtype, grad_dtypes(fc1_weight, fc2_weight, branch_bias))
    for start, end in chunks:
        rows = slice(start, end)
        grads.add(feed_forward_bwd_rows(
            start, dout2[rows], x2[rows], branch2[rows], mean[rows], rstd[rows],
            hidden[rows] if keep_hidden else None, dx[rows], dbranch[rows], seeds, p,
            norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight, len(chunks) > 1,
            branch_bias=branch_bias, gelu_in_gemm=gelu_in_gemm,
        ))
    dnw, dnb, dw1, db1, dw2, db2, *dbb = grads.result()
    dbb = dbb[0] if dbb else mean.new_empty((0,))
    return dx.view(x.shape), dbranch.view(x.shape), dnw, dnb, dw1, db1, dw2, db2, dbb


# ------------------------------------------------------ custom-op registration


@torch.library.custom_op("migt::residual_feed_forward", mutates_args=())
def _feed_forward_op(
    x: torch.Tensor, branch: torch.Tensor, seeds: torch.Tensor, p: float,
    norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float,
    fc1_weight: torch.Tensor, fc1_bias: torch.Tensor, fc2_weight: torch.Tensor, fc2_bias: torch.Tensor,
    keep_hidden: bool, branch_bias: Optional[torch.Tensor], gelu_in_gemm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return feed_forward_fwd(x, branch, seeds, p, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight,
                            fc2_bias, keep_hidden, branch_bias=branch_bias, gelu_in_gemm=gelu_in_gemm)


@_feed_forward_op.register_fake
def _(x, branch, seeds, p, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias, keep_hidden,
      branch_bias, gelu_in_gemm):
    N = x.numel() // x.shape[-1]
    acc = compute_dtype(x.dtype)
    hidden_shape = (N, fc1_weight.shape[0]) if keep_hidden else (0,)
    return (x.new_empty(x.shape), x.new_empty((N,), dtype=acc),
            x.new_empty((N,), dtype=acc), x.new_empty(hidden_shape, dtype=fc1_weight.dtype))


@torch.library.custom_op("migt::residual_feed_forward_backward", mutates_args=())
def _feed_forward_backward_op(
    dout: torch.Tensor, x: torch.Tensor, branch: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
    hidden: torch.Tensor, seeds: torch.Tensor, p: float, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
    eps: float, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor, fc2_weight: torch.Tensor,
    branch_bias: Optional[torch.Tensor], gelu_in_gemm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    return feed_forward_bwd(dout, x, branch, mean, rstd, hidden, seeds, p, norm_weight, norm_bias, eps,
                            fc1_weight, fc1_bias, fc2_weight, branch_bias, gelu_in_gemm)


@_feed_forward_backward_op.register_fake
def _(dout, x, branch, mean, rstd, hidden, seeds, p, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight,
      branch_bias, gelu_in_gemm):
    D = x.shape[-1]
    C = fc1_weight.shape[0]
    return (x.new_empty(x.shape), branch.new_empty(branch.shape),
            mean.new_empty((D,)), mean.new_empty((D,)),
            # fc1's bias gradient is reduced in the hidden's compute dtype (gelu_dropout_bwd)
            fc1_weight.new_empty(fc1_weight.shape), mean.new_empty((C,), dtype=compute_dtype(fc1_weight.dtype)),
            fc2_weight.new_empty(fc2_weight.shape), mean.new_empty((D,)),
            mean.new_empty((D,) if branch_bias is not None else (0,)))


def _setup_context(ctx, inputs, output):
    (x, branch, seeds, p, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight, _, _, branch_bias,
     gelu_in_gemm) = inputs
    _, mean, rstd, hidden = output
    # mean, rstd and hidden are outputs only to be saved: no zero-filled
    # gradients for them (the hidden's would be an (N, d_ff) write)
    ctx.set_materialize_grads(False)
    ctx.p, ctx.eps, ctx.gelu_in_gemm = p, eps, gelu_in_gemm
    # x (kept anyway by the block's first node: the same storage) and the
    # branch in its GEMM dtype, not x_mid in the stream's: half the bytes in
    # a float32 stream
    ctx.save_for_backward(x, branch, mean, rstd, hidden, seeds, norm_weight, norm_bias, fc1_weight, fc1_bias,
                          fc2_weight, branch_bias)


def _backward(ctx, dout, _dmean, _drstd, _dhidden):
    (x, branch, mean, rstd, hidden, seeds, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight,
     branch_bias) = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(x)
    dx, dbranch, dnw, dnb, dw1, db1, dw2, db2, dbb = _feed_forward_backward_op(
        dout, x, branch, mean, rstd, hidden, seeds, ctx.p, norm_weight, norm_bias, ctx.eps,
        fc1_weight, fc1_bias, fc2_weight, branch_bias, ctx.gelu_in_gemm,
    )
    return (dx, dbranch, None, None,
            dnw.to(norm_weight.dtype), dnb.to(norm_bias.dtype), None,
            dw1, db1.to(fc1_weight.dtype), dw2, db2.to(fc2_weight.dtype), None,
            dbb.to(branch_bias.dtype) if branch_bias is not None else None, None)


_feed_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------ public function


def residual_feed_forward(x, branch, seeds, p, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                          eps: float = 1e-5, recompute_hidden: bool = False, branch_bias=None,
                          gelu_in_gemm: bool = False):
    """x_mid = x + dropout(branch (+ branch_bias)); out = x_mid + dropout(fc2(dropout(gelu(fc1(layer_norm(x_mid)))))).

    x, branch: (..., D) (made contiguous); seeds: int64 (3,) (empty when
    p == 0); weights and biases already in the GEMMs' dtype; branch_bias
    (D,) or None; gelu_in_gemm: feed_forward_fwd's. Returns out in x's dtype.
    """
    # without grad (inference) nothing is kept: the hidden is made a chunk at a time too
    keep_hidden = not recompute_hidden and torch.is_grad_enabled()
    out, _, _, _ = _feed_forward_op(
        x.contiguous(), branch.contiguous(), seeds.contiguous(), float(p), norm_weight, norm_bias, float(eps),
        fc1_weight, fc1_bias, fc2_weight, fc2_bias, keep_hidden,
        branch_bias.contiguous() if branch_bias is not None else None,  # the kernels read it as one row
        bool(gelu_in_gemm),
    )
    return out
