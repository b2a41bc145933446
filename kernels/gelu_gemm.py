"""The FFN's GELU + dropout in the epilogue of a Triton GEMM (the fused
FFN's ``gelu_in_gemm`` path, kernels/feed_forward.py):

    forward   hidden = h @ W1.T + b1                 one kernel: the GEMM's tile, then
              g      = dropout(gelu(hidden))         the GELU + dropout of its rows
    backward  dhidden = dropout'(df @ W2) * gelu'(hidden)   one kernel, which also
              g       = dropout(gelu(hidden))               writes g again (for dW2)
                                                             and the column sums of dhidden (db1);
                                                             under selective recompute it makes the
                                                             hidden again itself (h @ W1.T + b1)

What it saves against cuBLAS GEMMs and a separate GELU pass (kernels/feed_forward.py's
gelu_dropout_fwd / _bwd): forward, the pass's read of the hidden (and with
selective recompute the hidden is never written, nor read back: the
backward recomputes its tiles in registers, from the same code and tiles as
the forward, so the same bits); backward, the write and the read of
dg = df @ W2. At the seed config (B=64: 442k rows, d_ff=1024,
bf16) that is 0.9 + 1.8 GB per FFN, about 0.63 ms per FFN on the H200's
copy bandwidth (bench/roofline.py), if the GEMM keeps cuBLAS's pace on
these shapes (K = d_model = 256: a short main loop, the epilogue is most of
the work). Not measured on a GPU yet: off by default (``ffn_gelu_in_gemm``
in the model config), timed against the cuBLAS path by bench.kernel_times
and the model suite's train_step_gelu_in_gemm.

The epilogue takes its values from the hidden rounded to its dtype, as the
pass reads it from memory, and uses the pass's helpers (gelu, keep_tile), so
g and the dropout bits are the cuBLAS path's for the same hidden (bit for
bit but the sign of a zero, below). dg stays
in float32 (cuBLAS rounds it to 16 bits before the pass reads it).
16-bit GEMM dtypes only (the model under autocast): float32 and float64
GEMMs take the cuBLAS path (``applies``); a float32 tl.dot is TF32 or,
exact, far slower than cuBLAS's SGEMM.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import cdiv
from ._tiles import cast_for, keep_tile, split_scalar, tile_offsets
from .gelu import gelu, gelu_and_grad
from .norm_linear import dropout_args

# Output tiles of 128 rows x 64 columns over K in steps of 64, 8 warps,
# three stages of operands in shared memory. The backward's epilogue holds
# the product, the hidden, g and the slope at once: at 128 x 128 it took 255
# registers and spilled (bench.compile_check, sm_90). The forward uses the
# same tile, so that the backward's recompute of the hidden runs the same
# MMAs in the same order: the same bits. Chosen by reasoning and
# bench.compile_check, not measured: bench.kernel_times times the path
# against cuBLAS + the pass.
TILE = (128, 64)
BLOCK_K, NUM_WARPS, NUM_STAGES = 64, 8, 3
GEMM_DTYPES = (torch.float16, torch.bfloat16)


def applies(weight: torch.Tensor) -> bool:
    """Whether the GEMM-epilogue path runs for GEMMs in weight's dtype."""
    return weight.dtype in GEMM_DTYPES


# ------------------------------------------------------------------ kernels


@triton.jit
def _tile_position(C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(row block, first column, rows, cols) of this program's output tile.
    A row block's column tiles are neighbouring programs, so its rows of the
    left operand are read from HBM once and from L2 by the others."""
    col_blocks = tl.cdiv(C, BLOCK_N)
    row_block = tl.program_id(0) // col_blocks
    col_start = (tl.program_id(0) % col_blocks) * BLOCK_N
    return row_block, col_start, row_block * BLOCK_M + tl.arange(0, BLOCK_M), col_start + tl.arange(0, BLOCK_N)


@triton.jit
def _matmul_tile(a_ptr, b_ptr, rows, cols, M, N, K, stride_bk, stride_bn,
                 EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """float32 [BLOCK_M, BLOCK_N] tile (rows, cols) of A @ B, A (M, K)
    row-major, B (K, N) with strides (stride_bk, stride_bn). Rows and
    columns past the ends read row or column 0 (their results are never
    stored), so only K needs a mask, and none when K is a multiple of BLOCK_K."""
    ks = tl.arange(0, BLOCK_K)
    a_rows = tl.where(rows < M, rows, 0).to(tl.int64)
    b_cols = tl.where(cols < N, cols, 0)
    a_ptrs = a_ptr + a_rows[:, None] * K + ks[None, :]
    b_ptrs = b_ptr + ks[:, None] * stride_bk + b_cols[None, :] * stride_bn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_ok = ks < K - k0
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk
    return acc


@triton.jit
def _fc1_tile(h_ptr, w_ptr, bias_ptr, rows, cols, col_ok, M, C, K,
              EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """float32 h @ W1.T + b1 of a tile, W1 (C, K) row-major: one code for the
    forward and the backward's recompute, so that both round the same values."""
    acc = _matmul_tile(h_ptr, w_ptr, rows, cols, M, C, K, 1, K, EVEN_K, BLOCK_M, BLOCK_N, BLOCK_K)
    return acc + tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _fc1_gelu_gemm_kernel(
    h_ptr, w_ptr, bias_ptr, seed_ptr, hidden_ptr, g_ptr, M, C, K, row0, cut, scale_hi, scale_lo,
    WRITE_HIDDEN: tl.constexpr, HAS_DROPOUT: tl.constexpr, SITE: tl.constexpr,
    EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # hidden = h @ W1.T + b1; g = dropout(gelu(hidden)) from the hidden
    # rounded to its dtype, as the separate pass reads it
    row_block, col_start, rows, cols = _tile_position(C, BLOCK_M, BLOCK_N)
    col_ok = cols < C
    hidden = _fc1_tile(h_ptr, w_ptr, bias_ptr, rows, cols, col_ok, M, C, K, EVEN_K, BLOCK_M, BLOCK_N,
                       BLOCK_K).to(g_ptr.dtype.element_ty)
    ok = (rows < M)[:, None] & col_ok[None, :]
    offs = tile_offsets(rows, cols, C)
    if WRITE_HIDDEN:
        tl.store(hidden_ptr + offs, hidden, mask=ok)
    g = gelu(hidden.to(tl.float32), True)  # 16-bit: kernels/gelu.py's tail polynomial
    if HAS_DROPOUT:
        kept = keep_tile(seed_ptr, SITE, row0 + rows, col_start, C, cut, BLOCK_N)
        g = tl.where(kept, g * split_scalar(scale_hi, scale_lo, tl.float32), 0.0)
    tl.store(g_ptr + offs, cast_for(g, g_ptr), mask=ok)


@triton.jit
def _dhidden_gelu_gemm_kernel(
    df_ptr, w_ptr, hidden_ptr, h_ptr, w1_ptr, b1_ptr, seed_ptr, dhidden_ptr, g_ptr, db_part_ptr,
    M, C, K, row0, cut, scale_hi, scale_lo,
    RECOMPUTE: tl.constexpr, HAS_DROPOUT: tl.constexpr, SITE: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # dg = df @ W2, W2 (K, C) row-major, kept in float32; then the GELU +
    # dropout backward of _gelu_dropout_bwd_kernel (feed_forward.py) on it:
    # dhidden, g again, and this row block's column sums of dhidden. With
    # RECOMPUTE the hidden is h @ W1.T + b1 made here, as the forward made it.
    row_block, col_start, rows, cols = _tile_position(C, BLOCK_M, BLOCK_N)
    col_ok = cols < C
    ok = (rows < M)[:, None] & col_ok[None, :]
    offs = tile_offsets(rows, cols, C)
    if RECOMPUTE:
        hidden = _fc1_tile(h_ptr, w1_ptr, b1_ptr, rows, cols, col_ok, M, C, K, EVEN_K, BLOCK_M, BLOCK_N,
                           BLOCK_K).to(g_ptr.dtype.element_ty)
    else:  # issued first: its latency hides under the K loop
        hidden = tl.load(hidden_ptr + offs, mask=ok, other=0.0)
    dg = _matmul_tile(df_ptr, w_ptr, rows, cols, M, C, K, C, 1, EVEN_K, BLOCK_M, BLOCK_N, BLOCK_K)
    # "+ dg * 0" ties f to the product's (MMA) layout: without it the compiler
    # made the normal CDF twice, in the load's layout for g and in the
    # product's for the slope (sm_90 SASS 3008 -> 2528 instructions, MUFU
    # 97 -> 65). It changes no finite value but a hidden of -0.0 (g is then
    # +0.0 here, -0.0 in the forward: equal values). dg, a float32 product of
    # 16-bit values, is non-finite only where df or W2 is; then f is NaN and
    # so is dhidden at dropped elements too (the cuBLAS path gives 0 there),
    # in a step whose gradients are non-finite anyway (GradScaler skips it).
    f = hidden.to(tl.float32) + dg * 0.0
    g, slope = gelu_and_grad(f, True)
    if HAS_DROPOUT:
        scale = split_scalar(scale_hi, scale_lo, tl.float32)
        kept = keep_tile(seed_ptr, SITE, row0 + rows, col_start, C, cut, BLOCK_N)
        dg = tl.where(kept, dg * scale, 0.0)
        g = tl.where(kept, g * scale, 0.0)
    tl.store(g_ptr + offs, cast_for(g, g_ptr), mask=ok)
    dhidden = tl.where(ok, dg * slope, 0.0)  # the rows past M computed row 0's products
    tl.store(dhidden_ptr + offs, cast_for(dhidden, dhidden_ptr), mask=ok)
    tl.store(db_part_ptr + row_block * C + cols, tl.sum(dhidden, 0), mask=col_ok)


# --------------------------------------------------------------- host side


def _check_dtypes(**tensors: torch.Tensor) -> None:
    """The callers ask applies() first; a direct call gets a clear error, not a kernel's."""
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1 or not dtypes <= set(GEMM_DTYPES):
        got = ", ".join(f"{name} {t.dtype}" for name, t in tensors.items())
        raise TypeError(f"gelu_gemm: expected one dtype of float16 or bfloat16 for all of them; got {got}")


def _launch(kernel, M: int, C: int, K: int, *args, **constants) -> None:
    block_m, block_n = TILE
    kernel[(cdiv(M, block_m) * cdiv(C, block_n),)](
        *args, EVEN_K=K % BLOCK_K == 0, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=BLOCK_K,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES, **constants)


def fc1_gelu(h, weight, bias, seeds, p: float, site: int, row0: int = 0, hidden=None):
    """hidden = h @ weight.T + bias and g = dropout(gelu(hidden)) (dropout
    site ``site``) for contiguous h (M, K), weight (C, K), bias (C,), all in
    one 16-bit dtype (``applies``). hidden is written into ``hidden`` (M, C)
    when given, else not at all; returns g (M, C). row0: the index of h's
    first row in the whole batch (the dropout bits count rows from there)."""
    _check_dtypes(h=h, weight=weight, bias=bias, **({"hidden": hidden} if hidden is not None else {}))
    M, K = h.shape
    C = weight.shape[0]
    weight, bias = weight.contiguous(), bias.contiguous()
    g = torch.empty((M, C), dtype=weight.dtype, device=h.device)
    if M == 0:
        return g
    has_dropout, cut, scale_hi, scale_lo = dropout_args(seeds, p)
    _launch(_fc1_gelu_gemm_kernel, M, C, K, h, weight, bias, seeds if has_dropout else bias,
            hidden if hidden is not None else g, g, M, C, K, row0, cut, scale_hi, scale_lo,
            WRITE_HIDDEN=hidden is not None, HAS_DROPOUT=has_dropout, SITE=site)
    return g


def dhidden_gelu(df, weight, hidden, seeds, p: float, site: int, row0: int = 0, recompute=None):
    """For contiguous df (M, K), weight (K, C) (fc2's) and the hidden (M, C),
    in one 16-bit dtype: dhidden (M, C) in that dtype, its column sums (C,)
    in float32 (db1) and g = dropout(gelu(hidden)) (M, C) as fc1_gelu made it.
    hidden None and recompute=(h, fc1_weight, fc1_bias), fc1_gelu's inputs:
    the kernel makes the hidden's tiles again as fc1_gelu made them (the same
    bits), and no (M, C) hidden exists."""
    if hidden is None:
        h, w1, b1 = (t.contiguous() for t in recompute)
        _check_dtypes(df=df, weight=weight, h=h, fc1_weight=w1, fc1_bias=b1)
        # one K loop length for both products: h and df are (M, K), W1 is W2's transpose's shape
        if h.shape != df.shape or w1.shape != weight.t().shape or b1.shape != (weight.shape[1],):
            raise ValueError(f"gelu_gemm: recompute needs h {tuple(df.shape)}, fc1_weight "
                             f"{tuple(weight.t().shape)} and fc1_bias ({weight.shape[1]},) to match df and fc2's "
                             f"weight; got h {tuple(h.shape)}, fc1_weight {tuple(w1.shape)}, "
                             f"fc1_bias {tuple(b1.shape)}")
    else:
        _check_dtypes(df=df, weight=weight, hidden=hidden)
        h, w1, b1 = df, weight, weight  # unread
    M, K = df.shape
    C = weight.shape[1]
    weight = weight.contiguous()
    dhidden, g = (torch.empty((M, C), dtype=weight.dtype, device=df.device) for _ in range(2))
    if M == 0:
        return dhidden, torch.zeros((C,), dtype=torch.float32, device=df.device), g
    has_dropout, cut, scale_hi, scale_lo = dropout_args(seeds, p)
    db_part = torch.empty((cdiv(M, TILE[0]), C), dtype=torch.float32, device=df.device)
    _launch(_dhidden_gelu_gemm_kernel, M, C, K, df, weight, hidden if hidden is not None else df, h, w1, b1,
            seeds if has_dropout else df, dhidden, g, db_part, M, C, K, row0, cut, scale_hi, scale_lo,
            RECOMPUTE=hidden is None, HAS_DROPOUT=has_dropout, SITE=site)
    return dhidden, db_part.sum(0), g
