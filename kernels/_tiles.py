"""Triton helpers shared by the fused transformer-block kernels
(kernels/norm_linear.py, kernels/feed_forward.py): row tiles, the inline
dropout keep bits, and the LayerNorm forward/backward of a row tile.

Offsets are int64: the FFN hidden of a large batch, (B*V*T, d_ff), passes
2**31 elements (B=512 at the seed config).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .philox import DRAWS_PER_CALL

# Kernels can read module globals only as constexprs.
_DRAWS_PER_CALL = tl.constexpr(DRAWS_PER_CALL)


@triton.jit
def tile_offsets(rows, cols, n_cols):
    """[BLOCK_M, BLOCK_N] flat int64 offsets of a row-major (N, n_cols) tensor;
    also the Philox counters of its dropout draws."""
    return rows.to(tl.int64)[:, None] * n_cols + cols[None, :]


@triton.jit
def keep_tile(seed_ptr, SITE: tl.constexpr, rows, col_start, n_cols, cut, BLOCK_N: tl.constexpr):
    """[BLOCK_M, BLOCK_N] dropout keep mask of rows ``rows`` (int [BLOCK_M])
    and columns col_start + arange(BLOCK_N) of an (N, n_cols) tensor, for the
    seed of dropout site SITE: the bits of kernels.philox.keep_mask, forward
    and backward. col_start is a multiple of 8 and BLOCK_N >= 8: one Philox
    call gives the draws of eight neighbouring columns."""
    tl.static_assert(BLOCK_N % 8 == 0)  # eight draws per call (_DRAWS_PER_CALL)
    seed = tl.load(seed_ptr + SITE)
    groups_per_row = tl.cdiv(n_cols, _DRAWS_PER_CALL)
    group_cols = col_start // _DRAWS_PER_CALL + tl.arange(0, BLOCK_N // _DRAWS_PER_CALL)  # [BLOCK_N // 8]
    groups = rows.to(tl.int64)[:, None] * groups_per_row + group_cols[None, :]
    w0, w1, w2, w3 = tl.randint4x(seed, groups)
    words = tl.interleave(tl.interleave(w0, w2), tl.interleave(w1, w3))  # [BLOCK_M, BLOCK_N // 2]: word 4j + w
    # column 8j + 2w + h takes half h (low half first) of word w of group j
    draws = tl.interleave((words & 0xFFFF).to(tl.int32), (words >> 16).to(tl.int32))
    return draws >= cut


@triton.jit
def branch_rows(branch_ptr, branch_bias_ptr, offs, ok, cols, col_ok, HAS_BRANCH_BIAS: tl.constexpr,
                ACC: tl.constexpr):
    """A tile of a residual branch in ACC, plus its (D,) bias when it has one
    (the bias of the Linear that made it, added here, not in its GEMM, so
    that the pass that writes the branch's gradient can sum it)."""
    branch = tl.load(branch_ptr + offs, mask=ok, other=0.0).to(ACC)
    if HAS_BRANCH_BIAS:
        branch += tl.load(branch_bias_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
    return branch


@triton.jit
def split_scalar(hi, lo, ACC: tl.constexpr):
    """A float argument passed as two float32 halves (kernels._launch.split_float32),
    joined in the accumulation dtype: a GPU launch passes a Python float as
    float32, which would round it in a float64 kernel (the interpreter does not)."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def layer_norm_rows(x, ok, w, b, n_cols, eps_hi, eps_lo):
    """LayerNorm of a [BLOCK_M, BLOCK_D] tile whose masked-out entries are 0:
    returns (normalised, mean [BLOCK_M], rstd [BLOCK_M]). eps comes as two
    float32 halves, added to the variance one at a time so a float64 tile
    sees it unrounded."""
    mean = tl.sum(x, 1) / n_cols
    centred = tl.where(ok, x - mean[:, None], 0.0)
    var = tl.sum(centred * centred, 1) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps_hi + eps_lo)
    return centred * rstd[:, None] * w[None, :] + b[None, :], mean, rstd


@triton.jit
def layer_norm_rows_bwd(dy, xhat, w, rstd, n_cols):
    """Input gradient of LayerNorm for a row tile, given xhat = (x - mean) * rstd
    (0 outside the tile) and the output gradient dy (0 outside the tile)."""
    dxhat = dy * w[None, :]
    mean_dxhat = tl.sum(dxhat, 1) / n_cols  # [BLOCK_M]
    mean_dxhat_xhat = tl.sum(dxhat * xhat, 1) / n_cols
    return rstd[:, None] * (dxhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None])


@triton.jit
def cast_for(x, ptr):
    """x converted to the element type of ``ptr``, through float32 when that
    type is 16-bit: a float64 tile has no direct conversion to bf16/fp16 on
    every target (the interpreter gives garbage). Float32 math is unchanged;
    float64 math may round twice (1 ulp, rarely)."""
    if ptr.dtype.element_ty.primitive_bitwidth == 16:
        x = x.to(tl.float32)
    return x.to(ptr.dtype.element_ty)
