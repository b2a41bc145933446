"""The "triton" backend of kernels.masked_attention: fused masked flash
attention over the (B, V, T, H, Dh) layout, forward and backward.

q, k, v are read as strided views (only the last dim contiguous), e.g. the
`unbind` views of a fused QKV projection; O, dq, dk, dv are written
contiguous (B, V, T, H, Dh). Nothing is permuted or copied on the way.

axis="time":     one program per (b, v, h) and block of query steps, the
                 blocks of one (b, v, h) adjacent in launch order (so the
                 keys they all read come from L2 after the first); key
                 blocks loop over [first valid step, last valid step] of the
                 sample only, branch-free so the loads are software
                 pipelined, and query blocks of padding only write zeros,
                 so work grows with the valid length, not with T.
axis="variable": one program per (b, h) and chunk of STEPS steps; each step
                 is one [BLOCK_V, Dh] tile (V padded to a power of two >= 16),
                 padded steps only write zeros.

Numerics: scores in fp32 as base-2 logits (log2(e) folded into the scale),
online softmax, log-sum-exp (base 2) kept for the backward, which recomputes
the probabilities. fp32 inputs use input_precision="ieee" dots (fp32 parity,
no tf32). Padded positions are never read (masked loads, other=0) and
never scored (tl.where), so NaN or inf stored there has no effect. Rows with
no valid key give output 0, LSE 0 and zero gradients.

The backward is deterministic (no atomics): FA2-style along time (one
kernel for dq looping over key blocks, which also writes the delta
preprocess, then one for dk/dv looping over query blocks); along variables
the whole row fits one tile, so one kernel gives dq, dk, dv.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ._launch import cdiv
from .attention_launch import time_blocks, var_blocks

# fp32 inputs: exact fp32 products (fp16/bf16 inputs ignore this option).
DOT_PRECISION = "ieee"


# --------------------------------------------------------------------- kernels


@triton.jit
def _any(flags):
    """True when any element of a [BLOCK] bool vector is set (a scalar)."""
    return tl.max(flags.to(tl.int32), axis=0) > 0


@triton.jit
def _softmax_step(q, k, v, key_ok, m_i, l_i, acc, qk_scale, PRECISION: tl.constexpr):
    """One online-softmax update of a query tile with one key tile.

    q [M, D], k/v [N, D] (padded keys loaded as 0), key_ok [N];
    m_i, l_i [M] running max (base 2) and sum, acc [M, D] fp32.
    """
    # Scores stay unscaled: the max is taken before scaling (qk_scale > 0, and
    # rounding is monotonic, so it is the max of the scaled scores), and
    # scale and shift are one FMA per score (a multiply and an add, before).
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [M, N]
    s = tl.where(key_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # [M], base 2
    # a row that has seen no valid key yet stays at -inf: shift by 0 instead
    # of -inf so that exp2 gives 0, not exp2(-inf + inf) = NaN
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_shift)  # [M]
    p = tl.exp2(tl.fma(s, qk_scale, -m_shift[:, None]))  # [M, N]
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _softmax_finish(m_i, l_i, acc, row_ok):
    """Output [M, D] fp32 and LSE [M] (base 2); 0 for invalid or keyless rows."""
    has_key = row_ok & (l_i > 0)
    l_safe = tl.where(has_key, l_i, 1.0)
    # one division per row, not per element (an IEEE division is ~8 instructions)
    out = tl.where(has_key[:, None], acc * (1.0 / l_safe)[:, None], 0.0)
    lse = tl.where(has_key, m_i + tl.log2(l_safe), 0.0)
    return out, lse


@triton.jit
def _probs_and_dscores(q, k, v, do, lse, delta, row_ok, key_ok, qk_scale, PRECISION: tl.constexpr):
    """Recomputed probabilities P and score gradients dS (without the softmax
    scale) of a query tile against a key tile, both [M, N] fp32, zero on every
    pair whose query row or key is invalid.

    q/do [M, D], k/v [N, D], lse/delta [M] (0 on invalid rows), row_ok [M], key_ok [N].
    """
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [M, N], unscaled
    pair_ok = row_ok[:, None] & key_ok[None, :]
    p = tl.where(pair_ok, tl.exp2(tl.fma(s, qk_scale, -lse[:, None])), 0.0)  # as _softmax_step: one FMA
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # [M, N]
    ds = p * (dp - delta[:, None])
    return p, ds


@triton.jit
def _bvh(pid, n_vars, n_heads):
    """(b, v, h), int64, of a time-kernel program id pid = (b * V + v) * H + h."""
    bv = pid // n_heads
    return (bv // n_vars).to(tl.int64), (bv % n_vars).to(tl.int64), (pid % n_heads).to(tl.int64)


@triton.jit
def _time_program(n_steps, BLOCK: tl.constexpr):
    """(pid_bvh, block start) of a 1-D time-kernel grid ordered with the
    blocks of one (b, v, h) adjacent: they run at the same time, so the keys
    (or queries) every block of that slice loops over are read from DRAM
    once and then hit L2. (With (b, v, h) fastest, the 5 blocks of a slice at
    T=288 ran B*V*H programs apart and each read them from DRAM again.)"""
    n_blocks = tl.cdiv(n_steps, BLOCK)
    pid = tl.program_id(0)
    return pid // n_blocks, (pid % n_blocks) * BLOCK


@triton.jit
def _slice_offset(i_b, i_x, i_h, s_b, s_x, s_h):
    """Element offset (int64: b * s_b passes 2**31 at B=128, V=24, T=4096 with
    packed QKV) of one (b, x, h) slice; x is v along time, t along variables."""
    return i_b * s_b + i_x * s_x + i_h * s_h


@triton.jit
def _row_tile(slice_off, rows, s_row, offs_d):
    """[R, HEAD_DIM] element offsets of rows `rows` [R] of a slice. rows * s_row
    is computed in rows' type: int32 along time (unsupported_reason keeps
    T * s_t under 2**31; int64 there costs registers at Dh=128), int64 along
    variables (s_row is the v stride, T * 3 * H * Dh)."""
    return slice_off + rows[:, None] * s_row + offs_d[None, :]


@triton.jit
def _load_rows(PTR, offs, row_ok):
    """A [R, HEAD_DIM] tile with invalid rows read as 0 (never their memory)."""
    return tl.load(PTR + offs, mask=row_ok[:, None], other=0.0)


@triton.jit
def _step_block(MASK, sm_b, sm_t, b, start, n_steps, BLOCK: tl.constexpr):
    """Steps start .. start + BLOCK of sample b: offsets, in range, valid; [BLOCK] each."""
    offs = start + tl.arange(0, BLOCK)
    in_range = offs < n_steps
    ok = tl.load(MASK + b * sm_b + offs * sm_t, mask=in_range, other=0) != 0
    return offs, in_range, ok


@triton.jit
def _valid_blocks(SPAN, b, BLOCK: tl.constexpr):
    """Loop bounds over the BLOCK-aligned blocks that can hold a valid step of
    sample b (an empty range for a sample with no valid step)."""
    first = tl.load(SPAN + 2 * b)
    end = tl.load(SPAN + 2 * b + 1)
    return (first // BLOCK) * BLOCK, end


@triton.jit
def _head_bias(BIAS, part, h, n_heads, offs_d):
    """[HEAD_DIM] fp32 bias of head h in part 0 (q), 1 (k) or 2 (v) of a
    (3, H, HEAD_DIM) QKV bias."""
    return tl.load(BIAS + (part * n_heads + h) * offs_d.shape[0] + offs_d).to(tl.float32)


@triton.jit
def _biased(x, bias):
    """Rows of x plus a [HEAD_DIM] bias, in x's dtype (as a GEMM epilogue rounds)."""
    return (x.to(tl.float32) + bias[None, :]).to(x.dtype)


@triton.jit
def _time_fwd_kernel(
    Q, K, V, O, LSE, MASK, SPAN, BIAS,
    sq_b, sq_v, sq_t, sq_h,
    sk_b, sk_v, sk_t, sk_h,
    sv_b, sv_v, sv_t, sv_h,
    so_b, so_v, so_t, so_h,
    sm_b, sm_t,
    n_vars, n_heads, n_steps, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    NUM_STAGES: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Output and LSE of one query block of one (b, v, h), looping over the sample's key blocks.

    HAS_BIAS: attention of q + bq, k + bk, v + bv. k's bias shifts a row's
    scores by one constant, which the softmax cancels, so it is never
    added; v's is added to each row with a key (its weights sum to 1); the
    LSE is that of the scores without bk, as the backward recomputes them."""
    pid_bvh, start_m = _time_program(n_steps, BLOCK_M)  # pid_bvh is also the LSE row
    b, var, h = _bvh(pid_bvh, n_vars, n_heads)
    offs_m, in_range, row_ok = _step_block(MASK, sm_b, sm_t, b, start_m, n_steps, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    o_ptrs = O + _row_tile(_slice_offset(b, var, h, so_b, so_v, so_h), offs_m, so_t, offs_d)
    lse_ptrs = LSE + pid_bvh.to(tl.int64) * n_steps + offs_m
    if not _any(row_ok):
        # a query block of padding only: zeros, no key is read
        tl.store(o_ptrs, tl.zeros([BLOCK_M, HEAD_DIM], dtype=O.dtype.element_ty), mask=in_range[:, None])
        tl.store(lse_ptrs, tl.zeros([BLOCK_M], dtype=tl.float32), mask=in_range)
        return

    q = _load_rows(Q, _row_tile(_slice_offset(b, var, h, sq_b, sq_v, sq_h), offs_m, sq_t, offs_d), row_ok)
    if HAS_BIAS:
        q = _biased(q, _head_bias(BIAS, 0, h, n_heads, offs_d))
    k_off = _slice_offset(b, var, h, sk_b, sk_v, sk_h)
    v_off = _slice_offset(b, var, h, sv_b, sv_v, sv_h)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lo, hi = _valid_blocks(SPAN, b, BLOCK_N)
    # Branch-free, so the loads of the next key blocks can be pipelined: a
    # block with no valid key (a gap inside the day) costs its dots, and its
    # keys are masked like any padded key (scores -inf, loads 0).
    for start_n in tl.range(lo, hi, BLOCK_N, num_stages=NUM_STAGES):
        offs_n, _, key_ok = _step_block(MASK, sm_b, sm_t, b, start_n, n_steps, BLOCK_N)
        k = _load_rows(K, _row_tile(k_off, offs_n, sk_t, offs_d), key_ok)  # [BLOCK_N, HEAD_DIM]
        v = _load_rows(V, _row_tile(v_off, offs_n, sv_t, offs_d), key_ok)
        m_i, l_i, acc = _softmax_step(q, k, v, key_ok, m_i, l_i, acc, qk_scale, PRECISION)

    out, lse = _softmax_finish(m_i, l_i, acc, row_ok)
    if HAS_BIAS:
        out = _with_value_bias(out, BIAS, h, n_heads, offs_d, row_ok & (l_i > 0))
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=in_range[:, None])
    tl.store(lse_ptrs, lse, mask=in_range)


@triton.jit
def _with_value_bias(out, BIAS, h, n_heads, offs_d, has_key):
    """out + bv on the rows with a key (0 stays 0 elsewhere)."""
    return tl.where(has_key[:, None], out + _head_bias(BIAS, 2, h, n_heads, offs_d)[None, :], 0.0)


@triton.jit
def _column_sums(PART, pid, tile, offs_d):
    """Store the [HEAD_DIM] column sums of a [R, HEAD_DIM] fp32 tile as row pid of PART."""
    tl.store(PART + pid.to(tl.int64) * offs_d.shape[0] + offs_d, tl.sum(tile, 0))


@triton.jit
def _time_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, MASK, SPAN, BIAS,
    sq_b, sq_v, sq_t, sq_h,
    sk_b, sk_v, sk_t, sk_h,
    sv_b, sv_v, sv_t, sv_h,
    sdo_b, sdo_v, sdo_t, sdo_h,
    sg_b, sg_v, sg_t, sg_h,
    sm_b, sm_t,
    n_vars, n_heads, n_steps, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    NUM_STAGES: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """dk, dv of one key block, looping over the sample's query blocks
    (HAS_BIAS: dk against q + bq; the biases of k and v change neither)."""
    pid_bvh, start_n = _time_program(n_steps, BLOCK_N)
    b, var, h = _bvh(pid_bvh, n_vars, n_heads)
    offs_n, in_range, key_ok = _step_block(MASK, sm_b, sm_t, b, start_n, n_steps, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    g_off = _row_tile(_slice_offset(b, var, h, sg_b, sg_v, sg_h), offs_n, sg_t, offs_d)  # [BLOCK_N, HEAD_DIM]
    if not _any(key_ok):
        zeros = tl.zeros([BLOCK_N, HEAD_DIM], dtype=DK.dtype.element_ty)
        tl.store(DK + g_off, zeros, mask=in_range[:, None])
        tl.store(DV + g_off, zeros, mask=in_range[:, None])
        return

    k = _load_rows(K, _row_tile(_slice_offset(b, var, h, sk_b, sk_v, sk_h), offs_n, sk_t, offs_d), key_ok)
    v = _load_rows(V, _row_tile(_slice_offset(b, var, h, sv_b, sv_v, sv_h), offs_n, sv_t, offs_d), key_ok)
    q_off = _slice_offset(b, var, h, sq_b, sq_v, sq_h)
    do_off = _slice_offset(b, var, h, sdo_b, sdo_v, sdo_h)
    row_base = pid_bvh.to(tl.int64) * n_steps
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lo, hi = _valid_blocks(SPAN, b, BLOCK_M)
    if HAS_BIAS:
        q_bias = _head_bias(BIAS, 0, h, n_heads, offs_d)
    # branch-free like the forward: a query block with no valid row adds 0
    for start_m in tl.range(lo, hi, BLOCK_M, num_stages=NUM_STAGES):
        offs_m, _, row_ok = _step_block(MASK, sm_b, sm_t, b, start_m, n_steps, BLOCK_M)
        q = _load_rows(Q, _row_tile(q_off, offs_m, sq_t, offs_d), row_ok)  # [BLOCK_M, HEAD_DIM]
        if HAS_BIAS:
            q = _biased(q, q_bias)  # padded rows too: their ds is 0
        do = _load_rows(DO, _row_tile(do_off, offs_m, sdo_t, offs_d), row_ok)
        lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0)  # [BLOCK_M]
        delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
        p, ds = _probs_and_dscores(q, k, v, do, lse, delta, row_ok, key_ok, qk_scale, PRECISION)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)  # [BLOCK_N, HEAD_DIM]
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

    tl.store(DK + g_off, (dk * scale).to(DK.dtype.element_ty), mask=in_range[:, None])
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=in_range[:, None])


@triton.jit
def _time_bwd_dq_kernel(
    Q, K, V, O, DO, LSE, DELTA, DQ, MASK, SPAN, BIAS, DBQ_PART, DBV_PART,
    sq_b, sq_v, sq_t, sq_h,
    sk_b, sk_v, sk_t, sk_h,
    sv_b, sv_v, sv_t, sv_h,
    so_b, so_v, so_t, so_h,
    sdo_b, sdo_v, sdo_t, sdo_h,
    sg_b, sg_v, sg_t, sg_h,
    sm_b, sm_t,
    n_vars, n_heads, n_steps, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    NUM_STAGES: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """dq of one query block, looping over the sample's key blocks; also
    writes delta = rowsum(dO * O) of the block (fp32, laid out like the LSE,
    0 on padded rows) for the dk/dv kernel, which runs after it. Folding
    the delta preprocess in here saves a launch and a second read of dO.

    HAS_BIAS: q + bq; the scores keep k's and v's biases out (the softmax
    cancels both shifts), so delta is rowsum(dO * (O - bv)); and the block's
    column sums of dq and of dO (the gradients of bq and bv: a row's weights
    sum to 1) go to row pid of DBQ_PART and DBV_PART (bk's is 0)."""
    pid_bvh, start_m = _time_program(n_steps, BLOCK_M)
    b, var, h = _bvh(pid_bvh, n_vars, n_heads)
    offs_m, in_range, row_ok = _step_block(MASK, sm_b, sm_t, b, start_m, n_steps, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    dq_ptrs = DQ + _row_tile(_slice_offset(b, var, h, sg_b, sg_v, sg_h), offs_m, sg_t, offs_d)
    row_base = pid_bvh.to(tl.int64) * n_steps
    if not _any(row_ok):
        tl.store(dq_ptrs, tl.zeros([BLOCK_M, HEAD_DIM], dtype=DQ.dtype.element_ty), mask=in_range[:, None])
        tl.store(DELTA + row_base + offs_m, tl.zeros([BLOCK_M], dtype=tl.float32), mask=in_range)
        if HAS_BIAS:
            zeros = tl.zeros([1, HEAD_DIM], dtype=tl.float32)
            _column_sums(DBQ_PART, tl.program_id(0), zeros, offs_d)
            _column_sums(DBV_PART, tl.program_id(0), zeros, offs_d)
        return

    q = _load_rows(Q, _row_tile(_slice_offset(b, var, h, sq_b, sq_v, sq_h), offs_m, sq_t, offs_d), row_ok)
    do = _load_rows(DO, _row_tile(_slice_offset(b, var, h, sdo_b, sdo_v, sdo_h), offs_m, sdo_t, offs_d), row_ok)
    o = _load_rows(O, _row_tile(_slice_offset(b, var, h, so_b, so_v, so_h), offs_m, so_t, offs_d), row_ok)
    o = o.to(tl.float32)
    if HAS_BIAS:
        q = _biased(q, _head_bias(BIAS, 0, h, n_heads, offs_d))
        # O - bv on valid rows (all have a key: their own step); padded rows stay 0
        o = tl.where(row_ok[:, None], o - _head_bias(BIAS, 2, h, n_heads, offs_d)[None, :], 0.0)
        _column_sums(DBV_PART, tl.program_id(0), do.to(tl.float32), offs_d)  # padded rows load 0
    delta = tl.sum(o * do.to(tl.float32), 1)  # [BLOCK_M]
    tl.store(DELTA + row_base + offs_m, delta, mask=in_range)
    lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0)  # [BLOCK_M]
    k_off = _slice_offset(b, var, h, sk_b, sk_v, sk_h)
    v_off = _slice_offset(b, var, h, sv_b, sv_v, sv_h)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    lo, hi = _valid_blocks(SPAN, b, BLOCK_N)
    for start_n in tl.range(lo, hi, BLOCK_N, num_stages=NUM_STAGES):  # branch-free like the forward
        offs_n, _, key_ok = _step_block(MASK, sm_b, sm_t, b, start_n, n_steps, BLOCK_N)
        k = _load_rows(K, _row_tile(k_off, offs_n, sk_t, offs_d), key_ok)  # [BLOCK_N, HEAD_DIM]
        v = _load_rows(V, _row_tile(v_off, offs_n, sv_t, offs_d), key_ok)
        _probs, ds = _probs_and_dscores(q, k, v, do, lse, delta, row_ok, key_ok, qk_scale, PRECISION)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)  # [BLOCK_M, HEAD_DIM]

    dq = dq * scale
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=in_range[:, None])
    if HAS_BIAS:
        _column_sums(DBQ_PART, tl.program_id(0), dq, offs_d)  # 0 on padded rows (their ds is)


@triton.jit
def _var_kernel(
    Q, K, V, O, LSE, DO, DQ, DK, DV, MASK, BIAS, DBQ_PART, DBV_PART,
    sq_b, sq_v, sq_t, sq_h,
    sk_b, sk_v, sk_t, sk_h,
    sv_b, sv_v, sv_t, sv_h,
    so_b, so_v, so_t, so_h,
    sdo_b, sdo_v, sdo_t, sdo_h,
    sg_b, sg_v, sg_t, sg_h,
    sm_b, sm_t,
    n_vars, n_heads, n_steps, qk_scale, scale,
    BACKWARD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_V: tl.constexpr, STEPS: tl.constexpr,
    PRECISION: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    """Attention over the variables of STEPS consecutive steps of one (b, h).

    Forward (BACKWARD=False): writes O and LSE (laid out (B, T, H, V)).
    Backward: reads O, dO, LSE and writes dq, dk, dv (one set of strides, sg).
    Each step is one [BLOCK_V, HEAD_DIM] tile; padded steps write zeros only.
    HAS_BIAS: as the time kernels (q + bq, O + bv, k's bias cancelled; each
    step's column sums of dq and dO to its (b, t, h) row of DBQ_PART,
    DBV_PART, so no sums are carried through the loop).
    """
    pid_bh = tl.program_id(0)
    h = (pid_bh % n_heads).to(tl.int64)
    b = (pid_bh // n_heads).to(tl.int64)
    offs_v = tl.arange(0, BLOCK_V).to(tl.int64)  # [BLOCK_V]; int64: offs_v * s_v can pass 2**31
    offs_d = tl.arange(0, HEAD_DIM)
    var_ok = offs_v < n_vars
    tile_ok = var_ok[:, None]  # [BLOCK_V, 1]
    if HAS_BIAS:
        q_bias = _head_bias(BIAS, 0, h, n_heads, offs_d)
        v_bias = _head_bias(BIAS, 2, h, n_heads, offs_d)
    for i in range(STEPS):
        t = (tl.program_id(1) * STEPS + i).to(tl.int64)
        if t < n_steps:
            step_ok = tl.load(MASK + b * sm_b + t * sm_t) != 0
            o_off = _row_tile(_slice_offset(b, t, h, so_b, so_t, so_h), offs_v, so_v, offs_d)  # [BLOCK_V, HEAD_DIM]
            g_off = _row_tile(_slice_offset(b, t, h, sg_b, sg_t, sg_h), offs_v, sg_v, offs_d)
            lse_ptrs = LSE + ((b * n_steps + t) * n_heads + h) * n_vars + offs_v  # [BLOCK_V]
            # this step's row of the bias gradients' column sums, laid out (B, T, H, HEAD_DIM)
            part_ptrs = ((b * n_steps + t) * n_heads + h) * HEAD_DIM + offs_d
            if step_ok:
                q = _load_rows(Q, _row_tile(_slice_offset(b, t, h, sq_b, sq_t, sq_h), offs_v, sq_v, offs_d), var_ok)
                if HAS_BIAS:
                    q = _biased(q, q_bias)
                k = _load_rows(K, _row_tile(_slice_offset(b, t, h, sk_b, sk_t, sk_h), offs_v, sk_v, offs_d), var_ok)
                v = _load_rows(V, _row_tile(_slice_offset(b, t, h, sv_b, sv_t, sv_h), offs_v, sv_v, offs_d), var_ok)
                if BACKWARD:
                    o = _load_rows(O, o_off, var_ok).to(tl.float32)
                    do = _load_rows(DO, _row_tile(_slice_offset(b, t, h, sdo_b, sdo_t, sdo_h), offs_v, sdo_v, offs_d),
                                    var_ok)
                    if HAS_BIAS:  # O - bv on the variables (every one has keys), as the time kernels
                        o = tl.where(tile_ok, o - v_bias[None, :], 0.0)
                        tl.store(DBV_PART + part_ptrs, tl.sum(do.to(tl.float32), 0))
                    lse = tl.load(lse_ptrs, mask=var_ok, other=0.0)  # [BLOCK_V]
                    delta = tl.sum(o * do.to(tl.float32), 1)
                    p, ds = _probs_and_dscores(q, k, v, do, lse, delta, var_ok, var_ok, qk_scale, PRECISION)
                    dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)  # [BLOCK_V, HEAD_DIM]
                    dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * scale
                    dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION) * scale
                    if HAS_BIAS:
                        tl.store(DBQ_PART + part_ptrs, tl.sum(dq, 0))
                    tl.store(DQ + g_off, dq.to(DQ.dtype.element_ty), mask=tile_ok)
                    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=tile_ok)
                    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=tile_ok)
                else:
                    m_i = tl.full([BLOCK_V], float("-inf"), dtype=tl.float32)
                    l_i = tl.zeros([BLOCK_V], dtype=tl.float32)
                    acc = tl.zeros([BLOCK_V, HEAD_DIM], dtype=tl.float32)
                    m_i, l_i, acc = _softmax_step(q, k, v, var_ok, m_i, l_i, acc, qk_scale, PRECISION)
                    out, lse = _softmax_finish(m_i, l_i, acc, var_ok)
                    if HAS_BIAS:
                        out = tl.where(tile_ok, out + v_bias[None, :], 0.0)
                    tl.store(O + o_off, out.to(O.dtype.element_ty), mask=tile_ok)
                    tl.store(lse_ptrs, lse, mask=var_ok)
            else:
                if BACKWARD:
                    zeros = tl.zeros([BLOCK_V, HEAD_DIM], dtype=DQ.dtype.element_ty)
                    tl.store(DQ + g_off, zeros, mask=tile_ok)
                    tl.store(DK + g_off, zeros, mask=tile_ok)
                    tl.store(DV + g_off, zeros, mask=tile_ok)
                    if HAS_BIAS:
                        tl.store(DBQ_PART + part_ptrs, tl.zeros([HEAD_DIM], dtype=tl.float32))
                        tl.store(DBV_PART + part_ptrs, tl.zeros([HEAD_DIM], dtype=tl.float32))
                else:
                    tl.store(O + o_off, tl.zeros([BLOCK_V, HEAD_DIM], dtype=O.dtype.element_ty), mask=tile_ok)
                    tl.store(lse_ptrs, tl.zeros([BLOCK_V], dtype=tl.float32), mask=var_ok)


# ------------------------------------------------------------ host functions

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
MAX_STEPS = 4096
MAX_VARS = 128
LOG2E = 1.4426950408889634


def unsupported_reason(q, k, v, mask, axis, scale: Optional[float] = None) -> Optional[str]:
    """Why the Triton kernel cannot take this case, or None when it can."""
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        # the online softmax takes each row's max before scaling (_softmax_step)
        return f"softmax scale {scale} is not a positive finite number"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not supported (float16, bfloat16 or float32)"
    head_dim = q.shape[-1]
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return f"head dim Dh={head_dim} is not supported (one of {SUPPORTED_HEAD_DIMS})"
    if q.shape[2] > MAX_STEPS:
        return f"T={q.shape[2]} is over {MAX_STEPS}"
    if axis == "variable" and q.shape[1] > MAX_VARS:
        return f"V={q.shape[1]} is over {MAX_VARS}"
    if axis == "variable" and q.dtype == torch.float32 and q.shape[1] > 64 and head_dim > 64:
        # the fp32 backward's 128 x 128 tiles need 320 KiB of shared memory (sm_90 has 227)
        return f"float32 along variables with V={q.shape[1]} > 64 and Dh={head_dim} > 64 does not fit shared memory"
    if axis == "time":
        stride_t = max(t.stride(2) for t in (q, k, v))
        if _time_row_offsets_overflow(q.shape[2], stride_t):
            return f"time stride {stride_t} is too large for T={q.shape[2]} (int32 row offsets)"
    return None


def _time_row_offsets_overflow(steps: int, stride_t: int) -> bool:
    """The time kernels compute row offsets (step * stride_t) in int32."""
    return (steps + 64) * stride_t >= 2**31


def _new_buffer(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """Every buffer a kernel writes is allocated here, uninitialised; the tests
    patch it to fill with NaN, so an element a kernel leaves unwritten fails."""
    return torch.empty(shape, device=like.device, dtype=like.dtype if dtype is None else dtype)


def _strides4(t: torch.Tensor):
    """(b, v, t, h) strides; the last dim is contiguous (checked by callers)."""
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _mask_args(mask: torch.Tensor):
    """A zero-copy uint8 view of the bool mask and its (b, t) strides."""
    m = mask.view(torch.uint8)
    return m, m.stride(0), m.stride(1)


def _valid_span(mask: torch.Tensor) -> torch.Tensor:
    """(B, 2) int32: first valid step and last valid step + 1 of each sample
    ((T, 0), an empty range, for a sample with no valid step)."""
    steps = mask.shape[1]
    idx = torch.arange(steps, device=mask.device, dtype=torch.int32)
    first = torch.where(mask, idx, steps).amin(1)
    end = torch.where(mask, idx + 1, 0).amax(1)
    return torch.stack([first, end], 1).to(torch.int32).contiguous()


def attention_fwd(q, k, v, mask, axis: str, scale: float, bias=None):
    """out (B, V, T, H, Dh) contiguous and LSE (base 2, fp32): (B, V, H, T)
    along time, (B, T, H, V) along variables. bias: None, or a contiguous
    (3, H, Dh) QKV bias added to q, k and v (k's, which the softmax cancels,
    is never read)."""
    B, V, T, H, Dh = q.shape
    out = _new_buffer((B, V, T, H, Dh), q)
    has_bias = bias is not None
    bias = bias if has_bias else q  # an unread placeholder pointer
    m, sm_b, sm_t = _mask_args(mask)
    qk_scale = scale * LOG2E
    strides = (*_strides4(q), *_strides4(k), *_strides4(v), *_strides4(out))
    if axis == "time":
        lse = _new_buffer((B, V, H, T), q, torch.float32)
        block_m, block_n, warps, stages = time_blocks(Dh, "fwd", q.dtype)
        _time_fwd_kernel[(B * V * H * cdiv(T, block_m),)](
            q, k, v, out, lse, m, _valid_span(mask), bias, *strides, sm_b, sm_t, V, H, T, qk_scale,
            HEAD_DIM=Dh, BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=DOT_PRECISION, NUM_STAGES=stages,
            HAS_BIAS=has_bias, num_warps=warps,
        )
    else:
        lse = _new_buffer((B, T, H, V), q, torch.float32)
        block_v, steps, warps = var_blocks(V, Dh, "var_fwd", q.dtype)
        grid = (B * H, cdiv(T, steps))
        _var_kernel[grid](
            q, k, v, out, lse, out, out, out, out, m, bias, out, out, *strides, *_strides4(out), *_strides4(out),
            sm_b, sm_t, V, H, T, qk_scale, scale,
            BACKWARD=False, HEAD_DIM=Dh, BLOCK_V=block_v, STEPS=steps, PRECISION=DOT_PRECISION, HAS_BIAS=has_bias,
            num_warps=warps,
        )
    return out, lse


def attention_bwd(grad_out, q, k, v, out, lse, mask, axis: str, scale: float, grads=None, bias=None):
    """dq, dk, dv (B, V, T, H, Dh) in q's dtype: new contiguous tensors, or
    written into `grads`, three views with one set of strides (e.g. the
    unbind views of one (B, V, T, 3, H, Dh) gradient). With the forward's
    (3, H, Dh) bias, also its gradient (3, H, Dh) in float32: the column
    sums of dq and of dO (rows with a key) from the kernels' per-program
    partial rows, and 0 for k's."""
    B, V, T, H, Dh = q.shape
    if grad_out.stride(-1) != 1 or _time_row_offsets_overflow(T, grad_out.stride(2)):
        grad_out = grad_out.contiguous()  # e.g. the expanded gradient of out.sum(); not the model's case
    if grads is None:
        grads = tuple(_new_buffer((B, V, T, H, Dh), q) for _ in range(3))
    dq, dk, dv = grads
    assert dq.stride() == dk.stride() == dv.stride() and dq.stride(-1) == 1, "gradients share one layout"
    m, sm_b, sm_t = _mask_args(mask)
    qk_scale = scale * LOG2E
    qkv_strides = (*_strides4(q), *_strides4(k), *_strides4(v))
    has_bias = bias is not None
    if axis == "time":
        span = _valid_span(mask)
        block_m, block_n, warps, stages = time_blocks(Dh, "dq", q.dtype)
        programs = B * V * H * cdiv(T, block_m)  # of the dq kernel, ordered (b, v, h, block)
        parts = _new_buffer((2, programs, Dh) if has_bias else (2, 0), q, torch.float32)  # dbq's, dbv's
        delta = _new_buffer(lse.shape, lse)
        tail = (*_strides4(grad_out), *_strides4(dq), sm_b, sm_t, V, H, T, qk_scale, scale)
        # dq first: it writes the delta the dk/dv kernel reads
        _time_bwd_dq_kernel[(programs,)](
            q, k, v, out, grad_out, lse, delta, dq, m, span, bias if has_bias else q, parts[0], parts[1],
            *qkv_strides, *_strides4(out), *tail, HEAD_DIM=Dh, BLOCK_M=block_m, BLOCK_N=block_n,
            PRECISION=DOT_PRECISION, NUM_STAGES=stages, HAS_BIAS=has_bias, num_warps=warps)
        kv_block_m, kv_block_n, kv_warps, kv_stages = time_blocks(Dh, "dkdv", q.dtype)
        _time_bwd_dkdv_kernel[(B * V * H * cdiv(T, kv_block_n),)](
            q, k, v, grad_out, lse, delta, dk, dv, m, span, bias if has_bias else q, *qkv_strides, *tail,
            HEAD_DIM=Dh, BLOCK_M=kv_block_m, BLOCK_N=kv_block_n, PRECISION=DOT_PRECISION, NUM_STAGES=kv_stages,
            HAS_BIAS=has_bias, num_warps=kv_warps)
        # each program's row belongs to head (program // blocks) % H
        sums = parts.view(2, B * V, H, cdiv(T, block_m), Dh).sum((1, 3)) if has_bias else None
    else:
        block_v, steps, warps = var_blocks(V, Dh, "var_bwd", q.dtype)
        grid = (B * H, cdiv(T, steps))
        parts = _new_buffer((2, B * T * H, Dh) if has_bias else (2, 0), q, torch.float32)
        _var_kernel[grid](
            q, k, v, out, lse, grad_out, dq, dk, dv, m, bias if has_bias else q, parts[0], parts[1],
            *qkv_strides, *_strides4(out), *_strides4(grad_out), *_strides4(dq), sm_b, sm_t, V, H, T, qk_scale, scale,
            BACKWARD=True, HEAD_DIM=Dh, BLOCK_V=block_v, STEPS=steps, PRECISION=DOT_PRECISION, HAS_BIAS=has_bias,
            num_warps=warps,
        )
        # step (b, t) of head h wrote row (b * T + t) * H + h
        sums = parts.view(2, B * T, H, Dh).sum(1) if has_bias else None
    if not has_bias:
        return dq, dk, dv
    dbias = sums.new_zeros((3, H, Dh))  # k's stays 0
    dbias[0::2] = sums
    return dq, dk, dv, dbias


# ------------------------------------------------------- custom-op registration


def _lse_shape(q: torch.Tensor, axis: str):
    B, V, T, H, _ = q.shape
    return (B, V, H, T) if axis == "time" else (B, T, H, V)


@torch.library.custom_op("migt::masked_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, axis: str,
            scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_fwd(q, k, v, mask, axis, scale)


@_fwd_op.register_fake
def _fwd_fake(q, k, v, mask, axis, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(_lse_shape(q, axis),
                                                                                  dtype=torch.float32)


@torch.library.custom_op("migt::masked_attention_bwd", mutates_args=())
def _bwd_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, mask: torch.Tensor, axis: str,
            scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_bwd(grad_out, q, k, v, out, lse, mask, axis, scale)


@_bwd_op.register_fake
def _bwd_fake(grad_out, q, k, v, out, lse, mask, axis, scale):
    return tuple(torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, mask, axis, scale = inputs
    out, lse = output
    ctx.set_materialize_grads(False)  # the LSE is only saved: no zero-filled gradient for it
    ctx.save_for_backward(q, k, v, out, lse, mask)
    ctx.axis, ctx.scale = axis, scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, mask = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = _bwd_op(grad_out, q, k, v, out, lse, mask, ctx.axis, ctx.scale)
    return dq, dk, dv, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# The packed variant takes the fused QKV tensor itself, so its backward writes
# one (B, V, T, 3, H, Dh) gradient: with q, k, v as unbind views, autograd
# would stack three separate gradients into a new tensor (a full extra copy).


@torch.library.custom_op("migt::masked_attention_qkvpacked_fwd", mutates_args=())
def _packed_fwd_op(qkv: torch.Tensor, bias: Optional[torch.Tensor], mask: torch.Tensor, axis: str,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_fwd(*qkv.unbind(3), mask, axis, scale, bias=_bias3(bias, qkv))


@_packed_fwd_op.register_fake
def _packed_fwd_fake(qkv, bias, mask, axis, scale):
    q = qkv.select(3, 0)
    return _fwd_fake(q, q, q, mask, axis, scale)


def _bias3(bias: Optional[torch.Tensor], qkv: torch.Tensor) -> Optional[torch.Tensor]:
    """The (3 * H * Dh,) QKV bias as the kernels read it: (3, H, Dh) contiguous."""
    return None if bias is None else bias.contiguous().view(3, qkv.shape[4], qkv.shape[5])


@torch.library.custom_op("migt::masked_attention_qkvpacked_bwd", mutates_args=())
def _packed_bwd_op(grad_out: torch.Tensor, qkv: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
                   lse: torch.Tensor, mask: torch.Tensor, axis: str,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    grad_qkv = _new_buffer(qkv.shape, qkv)  # [B, V, T, 3, H, Dh] contiguous
    grads = attention_bwd(grad_out, *qkv.unbind(3), out, lse, mask, axis, scale, grads=grad_qkv.unbind(3),
                          bias=_bias3(bias, qkv))
    # the bias's gradient in its dtype, summed in float32 (an empty tensor without a bias)
    grad_bias = grads[3].view(-1).to(bias.dtype) if bias is not None else qkv.new_empty((0,))
    return grad_qkv, grad_bias


@_packed_bwd_op.register_fake
def _packed_bwd_fake(grad_out, qkv, bias, out, lse, mask, axis, scale):
    return (torch.empty_like(qkv, memory_format=torch.contiguous_format),
            torch.empty_like(bias) if bias is not None else qkv.new_empty((0,)))


def _packed_setup_context(ctx, inputs, output):
    qkv, bias, mask, axis, scale = inputs
    out, lse = output
    ctx.set_materialize_grads(False)  # the LSE is only saved: no zero-filled gradient for it
    ctx.save_for_backward(qkv, bias, out, lse, mask)
    ctx.axis, ctx.scale = axis, scale


def _packed_backward(ctx, grad_out, grad_lse):
    qkv, bias, out, lse, mask = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    grad_qkv, grad_bias = _packed_bwd_op(grad_out, qkv, bias, out, lse, mask, ctx.axis, ctx.scale)
    return grad_qkv, (grad_bias if bias is not None else None), None, None, None


_packed_fwd_op.register_autograd(_packed_backward, setup_context=_packed_setup_context)


# ------------------------------------------------------------- public function


def masked_attention(q, k, v, mask, axis: str = "time", scale: Optional[float] = None) -> torch.Tensor:
    """Fused masked attention (the "triton" backend of kernels.masked_attention).

    q, k, v: (B, V, T, H, Dh), float16/bfloat16/float32, any strides with
        stride(-1) == 1 (e.g. unbind views of a (B, V, T, 3, H, Dh) QKV tensor).
    mask: (B, T) bool, True = valid step.
    axis="time": per (b, v, h) over T, padded keys excluded, padded query rows 0.
    axis="variable": per (b, t, h) over V, rows of padded steps 0.
    scale: softmax scale, default 1 / sqrt(Dh).
    Returns (B, V, T, H, Dh) contiguous in q's dtype; differentiable in q, k, v
    (gradients (B, V, T, H, Dh) contiguous). Inputs are assumed validated
    (kernels._validate) and supported (unsupported_reason returns None).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, _ = _fwd_op(q, k, v, mask, axis, scale)
    return out


def masked_attention_qkvpacked(qkv, mask, axis: str = "time", scale: Optional[float] = None,
                               bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """masked_attention(*qkv.unbind(3), mask, axis, scale) for a fused QKV
    tensor qkv (B, V, T, 3, H, Dh) (any strides with stride(-1) == 1).

    Same output (B, V, T, H, Dh) contiguous, bit for bit; the gradient of qkv
    is written as one (B, V, T, 3, H, Dh) contiguous tensor, which saves the
    copy autograd makes to stack three separate dq, dk, dv. bias (3 * H * Dh,):
    attention of qkv + bias, the bias added inside the kernels and its
    gradient summed there (no pass over the (N, 3 * H * Dh) gradient).
    """
    scale = 1.0 / math.sqrt(qkv.shape[-1]) if scale is None else float(scale)
    out, _ = _packed_fwd_op(qkv, bias, mask, axis, scale)
    return out
