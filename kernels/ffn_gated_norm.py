"""The FFN half of a variable block and the gated residual norm after it, as
one autograd node (the "triton" backend of kernels.gated_feed_forward):

    update = residual_feed_forward(x, branch, ...)          kernels/feed_forward.py
    logits = x @ Wg.T + bg                                  cuBLAS GEMM
    out    = x + sigmoid(logits) * (layer_norm(update) - x)  kernels/gated_norm.py

Why one node: x reaches the output three ways (the FFN's residual, the
gate, the gated mix). As separate nodes each returns its own (N, D)
gradient of x and autograd adds them, and casts the gate's bf16 one to the
float32 stream: per variable block ~3.4 GB moved at the seed config (B=64)
for sums. Here the gated norm's backward writes its part of dx into the
op's dx, the gate's part (dg @ Wg) is added inside the FFN's norm-backward
pass, which writes dx anyway, and the gate bias's gradient is summed in the
gated norm's backward pass.

What the backward keeps: the FFN op's (x, branch, statistics, hidden,
seeds), the update and the gated norm's statistics. Not the gate logits:
the node's backward holds everything it keeps until it ends, through the
FFN half too, where the separate gated-norm node had freed its logits; the
logits are made again a chunk at a time (a cast of x, which the gate
weight's gradient needs anyway, and one GEMM), which also keeps 2 bytes
per element of the stream off what the step saves. Forward and backward
run a chunk of rows at a time, as the FFN does (kernels/chunking.py).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import feed_forward, gated_norm
from ._launch import INT32_LIMIT
from .chunking import CHUNK_ROW_MULTIPLE, ChunkGradients, mm_float32, row_chunks
from .reference import compute_dtype


def _chunks(N: int, D: int, C: int, itemsize: int) -> list[tuple[int, int]]:
    """The FFN's chunks of rows (kernels/chunking.py), split again where a
    chunk's (rows, D) tensors would pass int32 offsets: the gated norm's
    kernels index with int32 (only a very wide D with a narrow d_ff gets
    there). The pieces start at multiples of CHUNK_ROW_MULTIPLE and leave a
    row tile of margin, so even a masked lane's offset stays in int32."""
    rows = (INT32_LIMIT // max(D, 1) - gated_norm.MAX_BLOCK_M) // CHUNK_ROW_MULTIPLE * CHUNK_ROW_MULTIPLE
    step = max(CHUNK_ROW_MULTIPLE, rows)
    return [(s, min(end, s + step)) for start, end in row_chunks(N, C, itemsize)
            for s in range(start, max(end, start + 1), step)]


def _gate_logits(x_low, gate_weight, gate_bias):
    return torch.addmm(gate_bias, x_low, gate_weight.t())  # [rows, D], as nn.Linear in the gate's dtype


def gated_feed_forward_fwd(x, branch, seeds, p, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight,
                           fc2_bias, gate_weight, gate_bias, out_norm_weight, out_norm_bias, out_eps,
                           keep_hidden: bool, branch_bias=None, gelu_in_gemm: bool = False):
    """Returns out, and for the backward the update, the FFN's mean, rstd and
    hidden, and the gated norm's mean and rstd. gelu_in_gemm: the FFN's
    (feed_forward.feed_forward_fwd)."""
    D, C = x.shape[-1], fc1_weight.shape[0]
    x2 = x.reshape(-1, D)
    N = x2.shape[0]
    # the backward's chunks: a recomputed hidden is then the same GEMM's
    chunks = _chunks(N, D, C, fc1_weight.element_size())
    acc = compute_dtype(x.dtype)
    out = torch.empty_like(x2)
    out_mean = torch.empty((N,), dtype=acc, device=x.device)
    out_rstd = torch.empty((N,), dtype=acc, device=x.device)

    def gate_and_norm(rows, update_rows, x_low):
        # the gate reads x in its dtype as the FFN's norm pass wrote it for
        # these rows (a GPU kernel rounds to nearest, as the backward's .to()
        # does), not through a separate cast pass over x
        logits = _gate_logits(x2[rows] if x_low is None else x_low, gate_weight, gate_bias)
        gated_norm.gated_norm_fwd(x2[rows], update_rows, logits, out_norm_weight, out_norm_bias, out_eps,
                                  out=out[rows], stats=(out_mean[rows], out_rstd[rows]))

    update, mean, rstd, hidden = feed_forward.feed_forward_fwd(
        x, branch, seeds, p, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias, keep_hidden,
        chunks=chunks, after_chunk=gate_and_norm,
        x_low_dtype=gate_weight.dtype if gate_weight.dtype != x.dtype else None, branch_bias=branch_bias,
        gelu_in_gemm=gelu_in_gemm)
    return out.view(x.shape), update, mean, rstd, hidden, out_mean, out_rstd


def gated_feed_forward_bwd(dout, x, branch, mean, rstd, hidden, seeds, p, norm_weight, norm_bias, eps,
                           fc1_weight, fc1_bias, fc2_weight, update, gate_weight, gate_bias, out_norm_weight,
                           out_norm_bias, out_mean, out_rstd, branch_bias=None, gelu_in_gemm: bool = False):
    """Gradients of gated_feed_forward_fwd: dx, dbranch, then the FFN's
    parameters' (dnorm_w, dnorm_b, dW1, db1, dW2, db2), the gate's (dWg,
    dbg), the output norm's (dw, db) and the branch bias's (an empty tensor
    without one). A chunk of rows at a time; with several chunks the
    parameter gradients are summed in the compute dtype and rounded once
    (chunking.ChunkGradients)."""
    D, C = x.shape[-1], fc1_weight.shape[0]
    x2, branch2, update2 = x.reshape(-1, D), branch.reshape(-1, D), update.reshape(-1, D)
    dout2 = dout.reshape(-1, D).contiguous()
    dx, dbranch = torch.empty_like(x2), torch.empty_like(branch2)
    keep_hidden = hidden.dim() == 2  # else the (0,) placeholder of selective recompute
    chunks = _chunks(x2.shape[0], D, C, fc1_weight.element_size())
    several = len(chunks) > 1
    weight_grad = mm_float32 if several else torch.mm
    # the FFN's, then dWg (float32 from several chunks' GEMMs), dbg, the norm's dw, db (and the branch bias's)
    grads = ChunkGradients(len(chunks), mean.dtype,
                           feed_forward.grad_dtypes(fc1_weight, fc2_weight) + [gate_weight.dtype, None, None, None]
                           + ([None] if branch_bias is not None else []))
    for start, end in chunks:
        rows = slice(start, end)
        x_low = x2[rows].to(gate_weight.dtype)  # for the logits again and the gate weight's gradient
        logits = _gate_logits(x_low, gate_weight, gate_bias)
        # the gated mix: its own part of dx straight into dx, the update's
        # gradient (the FFN's output gradient), the logits' and the gate bias's
        _, dupdate, dlogits, dnorm_w, dnorm_b, dgate_b = gated_norm.gated_norm_bwd(
            dout2[rows], x2[rows], update2[rows], logits, out_norm_weight, out_norm_bias,
            out_mean[rows], out_rstd[rows], dx=dx[rows], gate_bias_grad=True)
        del logits
        dgate_w = weight_grad(dlogits.t(), x_low)
        del x_low
        dx_gate = dlogits @ gate_weight  # the gate's part of dx, as nn.Linear makes it
        del dlogits
        ffn_grads = feed_forward.feed_forward_bwd_rows(
            start, dupdate, x2[rows], branch2[rows], mean[rows], rstd[rows],
            hidden[rows] if keep_hidden else None, dx[rows], dbranch[rows], seeds, p,
            norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight, several,
            dx_add=dx_gate, accumulate_dx=True, branch_bias=branch_bias, gelu_in_gemm=gelu_in_gemm,
        )
        grads.add((*ffn_grads[:6], dgate_w, dgate_b, dnorm_w, dnorm_b, *ffn_grads[6:]))
    result = grads.result()
    dbb = result[10] if branch_bias is not None else mean.new_empty((0,))
    return (dx.view(x.shape), dbranch.view(branch.shape), *result[:10], dbb)


# ------------------------------------------------------ custom-op registration


@torch.library.custom_op("migt::gated_feed_forward", mutates_args=())
def _gated_feed_forward_op(
    x: torch.Tensor, branch: torch.Tensor, seeds: torch.Tensor, p: float,
    norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float,
    fc1_weight: torch.Tensor, fc1_bias: torch.Tensor, fc2_weight: torch.Tensor, fc2_bias: torch.Tensor,
    gate_weight: torch.Tensor, gate_bias: torch.Tensor, out_norm_weight: torch.Tensor, out_norm_bias: torch.Tensor,
    out_eps: float, keep_hidden: bool, branch_bias: Optional[torch.Tensor], gelu_in_gemm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return gated_feed_forward_fwd(x, branch, seeds, p, norm_weight, norm_bias, eps, fc1_weight, fc1_bias,
                                  fc2_weight, fc2_bias, gate_weight, gate_bias, out_norm_weight, out_norm_bias,
                                  out_eps, keep_hidden, branch_bias, gelu_in_gemm)


@_gated_feed_forward_op.register_fake
def _(x, branch, seeds, p, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
      gate_weight, gate_bias, out_norm_weight, out_norm_bias, out_eps, keep_hidden, branch_bias, gelu_in_gemm):
    D = x.shape[-1]
    N = x.numel() // D
    acc = compute_dtype(x.dtype)
    hidden_shape = (N, fc1_weight.shape[0]) if keep_hidden else (0,)
    stats = [x.new_empty((N,), dtype=acc) for _ in range(4)]
    return (x.new_empty(x.shape), x.new_empty(x.shape), stats[0], stats[1],
            x.new_empty(hidden_shape, dtype=fc1_weight.dtype), stats[2], stats[3])


@torch.library.custom_op("migt::gated_feed_forward_backward", mutates_args=())
def _gated_feed_forward_backward_op(
    dout: torch.Tensor, x: torch.Tensor, branch: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
    hidden: torch.Tensor, seeds: torch.Tensor, p: float, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
    eps: float, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor, fc2_weight: torch.Tensor,
    update: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor, out_norm_weight: torch.Tensor,
    out_norm_bias: torch.Tensor, out_mean: torch.Tensor, out_rstd: torch.Tensor, branch_bias: Optional[torch.Tensor],
    gelu_in_gemm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return gated_feed_forward_bwd(dout, x, branch, mean, rstd, hidden, seeds, p, norm_weight, norm_bias, eps,
                                  fc1_weight, fc1_bias, fc2_weight, update, gate_weight, gate_bias,
                                  out_norm_weight, out_norm_bias, out_mean, out_rstd, branch_bias, gelu_in_gemm)


@_gated_feed_forward_backward_op.register_fake
def _(dout, x, branch, mean, rstd, hidden, seeds, p, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight,
      update, gate_weight, gate_bias, out_norm_weight, out_norm_bias, out_mean, out_rstd, branch_bias, gelu_in_gemm):
    D, C = x.shape[-1], fc1_weight.shape[0]
    acc = mean.dtype
    return (x.new_empty(x.shape), branch.new_empty(branch.shape),
            mean.new_empty((D,)), mean.new_empty((D,)),
            # the bias gradients of the GEMMs are reduced in their compute dtype
            fc1_weight.new_empty(fc1_weight.shape), mean.new_empty((C,), dtype=compute_dtype(fc1_weight.dtype)),
            fc2_weight.new_empty(fc2_weight.shape), mean.new_empty((D,)),
            gate_weight.new_empty(gate_weight.shape), mean.new_empty((D,), dtype=acc),
            mean.new_empty((D,)), mean.new_empty((D,)), mean.new_empty((D,) if branch_bias is not None else (0,)))


def _setup_context(ctx, inputs, output):
    (x, branch, seeds, p, norm_weight, norm_bias, eps, fc1_weight, fc1_bias, fc2_weight, _,
     gate_weight, gate_bias, out_norm_weight, out_norm_bias, _, _, branch_bias, gelu_in_gemm) = inputs
    _, update, mean, rstd, hidden, out_mean, out_rstd = output
    ctx.set_materialize_grads(False)  # the outputs kept for the backward get no zero-filled gradients
    ctx.p, ctx.eps, ctx.gelu_in_gemm = p, eps, gelu_in_gemm
    ctx.dtypes = (norm_weight.dtype, norm_bias.dtype, fc1_bias.dtype, gate_bias.dtype,
                  out_norm_weight.dtype, out_norm_bias.dtype)
    ctx.save_for_backward(x, branch, mean, rstd, hidden, seeds, norm_weight, norm_bias, fc1_weight, fc1_bias,
                          fc2_weight, update, gate_weight, gate_bias, out_norm_weight, out_norm_bias, out_mean, out_rstd,
                          branch_bias)


def _backward(ctx, dout, *_saved_only):
    (x, branch, mean, rstd, hidden, seeds, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight,
     update, gate_weight, gate_bias, out_norm_weight, out_norm_bias, out_mean, out_rstd,
     branch_bias) = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(x)
    dx, dbranch, dnw, dnb, dw1, db1, dw2, db2, dgw, dgb, donw, donb, dbb = _gated_feed_forward_backward_op(
        dout, x, branch, mean, rstd, hidden, seeds, ctx.p, norm_weight, norm_bias, ctx.eps,
        fc1_weight, fc1_bias, fc2_weight, update, gate_weight, gate_bias, out_norm_weight, out_norm_bias,
        out_mean, out_rstd, branch_bias, ctx.gelu_in_gemm,
    )
    nw_dt, nb_dt, b1_dt, gb_dt, onw_dt, onb_dt = ctx.dtypes
    return (dx, dbranch, None, None, dnw.to(nw_dt), dnb.to(nb_dt), None,
            dw1, db1.to(b1_dt), dw2, db2.to(fc2_weight.dtype),
            dgw, dgb.to(gb_dt), donw.to(onw_dt), donb.to(onb_dt), None, None,
            dbb.to(branch_bias.dtype) if branch_bias is not None else None, None)


_gated_feed_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------ public function


def gated_feed_forward(x, branch, seeds, p, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                       gate_weight, gate_bias, out_norm_weight, out_norm_bias, eps: float = 1e-5,
                       out_eps: float = 1e-5, recompute_hidden: bool = False, branch_bias=None,
                       gelu_in_gemm: bool = False):
    """update = residual_feed_forward(x, branch, ...);
    out = x + sigmoid(x @ gate_weight.T + gate_bias) * (layer_norm(update; out_norm_weight, out_norm_bias) - x).

    x, branch: (..., D) (made contiguous); seeds: int64 (3,) (empty when
    p == 0); the GEMMs' weights and biases (FFN and gate) already in the
    GEMMs' dtype; branch_bias (D,) or None, added to the branch; gelu_in_gemm:
    residual_feed_forward's. Returns out in x's dtype.
    """
    keep_hidden = not recompute_hidden and torch.is_grad_enabled()
    out, *_ = _gated_feed_forward_op(
        x.contiguous(), branch.contiguous(), seeds.contiguous(), float(p), norm_weight, norm_bias, float(eps),
        fc1_weight, fc1_bias, fc2_weight, fc2_bias, gate_weight, gate_bias, out_norm_weight, out_norm_bias,
        float(out_eps), keep_hidden,
        branch_bias.contiguous() if branch_bias is not None else None,  # the kernels read it as one row
        bool(gelu_in_gemm),
    )
    return out


def unsupported_reason(x: torch.Tensor) -> Optional[str]:
    # the FFN's limits (D); the gated norm's int32 offsets hold a chunk at a time (_chunks)
    return feed_forward.unsupported_reason(x)
