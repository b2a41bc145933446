"""Functional API of the MIGT-TVDT kernels (see README.md / DESIGN.md).

Each function validates its arguments, picks a backend and runs it:
- "reference": plain PyTorch (kernels/reference.py), the truth for tests;
- "sdpa": torch's scaled_dot_product_attention for attention
  (kernels/sdpa.py); the norms have no SDPA form, so "sdpa" runs their
  plain-PyTorch path;
- "triton": the fused kernels (kernels/attention.py, revin.py, gated_norm.py;
  without triton installed the other backends still work).
"auto" (or env MIGT_BACKEND) picks Triton on CUDA for supported cases.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import _dispatch, _validate, philox, reference, sdpa
from ._dispatch import BACKENDS
from .param_cast import cast_together

__all__ = [
    "BACKENDS",
    "masked_attention",
    "masked_attention_qkvpacked",
    "revin_normalize",
    "revin_denormalize",
    "gated_residual_norm",
    "layer_norm",
    "layer_norm_linear",
    "residual_feed_forward",
    "gated_feed_forward",
    "dropout_seeds",
    "fused_block_backend",
    "dropout",
    "value_embedding",
    "norm_attention_pool",
    "cast_together",
]

# Triton implementation module of each op; each exposes
# `unsupported_reason(...) -> Optional[str]` and the op under the same name.
# Imported here, not on first use: torch.compile(fullgraph=True) cannot trace
# an import made inside the compiled region. (It costs ~0.15 s, mostly triton.)
try:
    from . import attention as _triton_attention
    from . import seeded_dropout as _triton_dropout
    from . import embedding as _triton_value_embedding
    from . import feed_forward as _triton_feed_forward
    from . import ffn_gated_norm as _triton_gated_feed_forward
    from . import gated_norm as _triton_gated_norm
    from . import norm_linear as _triton_norm_linear
    from . import pooling as _triton_pooling
    from . import revin as _triton_revin
except ImportError as err:
    if not (err.name or "").startswith("triton"):
        raise
    _TRITON_MODULES = {}
else:
    _TRITON_MODULES = {
        "masked_attention": _triton_attention,
        "revin_normalize": _triton_revin,
        "gated_residual_norm": _triton_gated_norm,
        "layer_norm": _triton_norm_linear,
        "layer_norm_linear": _triton_norm_linear,
        "residual_feed_forward": _triton_feed_forward,
        "gated_feed_forward": _triton_gated_feed_forward,
        "dropout": _triton_dropout,
        "value_embedding": _triton_value_embedding,
        "norm_attention_pool": _triton_pooling,
    }


def _triton_module(op: str):
    """The op's Triton module, or None when triton is missing or the op has no kernel."""
    return _TRITON_MODULES.get(op)


def _triton_reason(op: str, *args) -> Optional[str]:
    module = _triton_module(op)
    if module is None:
        return f"no Triton kernel for {op} in this build"
    return module.unsupported_reason(*args)


def masked_attention(q, k, v, mask, axis: str = "time", *, scale: Optional[float] = None, backend: str = "auto"):
    """Masked attention over the (B, V, T, H, Dh) activation layout.

    q, k, v: (B, V, T, H, Dh), any strides with stride(-1) == 1 (for example
        `unbind` views of a fused QKV projection viewed (B, V, T, 3, H, Dh)).
    mask: (B, T) bool, True = valid step.
    axis="time": for each (b, v, h), attention over the T steps; keys whose
        step is padding are excluded, query rows whose step is padding give 0.
    axis="variable": for each (b, t, h), attention over the V variables; rows
        (b, t) whose step is padding give 0.
    scale: softmax scale, default 1 / sqrt(Dh). The Triton kernels take a
        positive finite scale only ("auto" runs another one on sdpa).
    Returns (B, V, T, H, Dh) contiguous, dtype of q. A sample with no valid
    step gives zeros and zero gradients, never NaN. Values at padded
    positions (NaN and inf included) affect nothing.
    """
    return _attention(q, k, v, mask, axis, scale, backend,
                      lambda triton_impl: triton_impl.masked_attention(q, k, v, mask, axis, scale))


def masked_attention_qkvpacked(qkv, mask, axis: str = "time", *, scale: Optional[float] = None, bias=None,
                               backend: str = "auto"):
    """masked_attention(*qkv.unbind(3), mask, axis, ...) for a fused QKV tensor.

    qkv: (B, V, T, 3, H, Dh), any strides with stride(-1) == 1 (e.g. the QKV
        projection viewed (B, V, T, 3, H, Dh)); mask, axis, scale, backend and
        the result as in masked_attention. With the Triton backend the gradient
        of qkv is written as one tensor, saving the copy autograd makes to
        stack separate dq, dk, dv of unbind views.
    bias: optional (3 * H * Dh,), the QKV projection's bias: attention of
        qkv + bias, the sum rounded to qkv's dtype (a GEMM epilogue rounds
        the product and bias once; here the product was rounded already: up
        to one ulp apart). The Triton kernels add it themselves and sum
        its gradient from the tiles they write (the projection then runs
        without it, and no pass sums its (N, 3 * H * Dh) gradient); the
        other backends add it to qkv first.
    """
    _validate.tensor("qkv", qkv, ndim=6, dims="(B, V, T, 3, H, Dh)")
    if qkv.shape[3] != 3:
        raise ValueError(f"qkv must have size 3 in dim 3 (B, V, T, 3, H, Dh), got shape {tuple(qkv.shape)}")
    if bias is not None:
        _validate.qkv_bias(bias, qkv)
        bias = bias.to(qkv.dtype)
    q, k, v = qkv.unbind(3)
    return _attention(q, k, v, mask, axis, scale, backend,
                      lambda triton_impl: triton_impl.masked_attention_qkvpacked(qkv, mask, axis, scale, bias),
                      bias=bias)


def _attention(q, k, v, mask, axis, scale, backend, run_triton, bias=None):
    """Checks and backend choice shared by both attention entry points;
    `run_triton(module)` makes the Triton call in the entry point's own form.
    bias: a (3 * H * Dh,) QKV bias the other backends add to q, k, v first."""
    _validate.attention_inputs(q, k, v, mask, axis)
    choice = _dispatch.choose(
        "masked_attention", backend, q.device,
        lambda: _triton_reason("masked_attention", q, k, v, mask, axis, scale),
    )
    if choice == "triton":
        return run_triton(_triton_module("masked_attention"))
    if bias is not None:
        q, k, v = (t + b for t, b in zip((q, k, v), bias.view(3, *q.shape[-2:]).unbind(0)))
    impl = sdpa.attention if choice == "sdpa" else reference.attention
    return impl(q, k, v, mask, axis, scale)


def revin_normalize(x, mask, weight, bias, eps: float = 1e-5, *, backend: str = "auto"):
    """Masked reversible instance normalisation, with the transpose fused.

    x: (B, T, V); mask: (B, T) bool; weight, bias: (V,) affine per variable.
    Mean and biased variance per (b, v) over valid steps only;
    std = sqrt(var + eps**2) (eps squared, so a series whose std is near 1e-3,
    like 5-minute log returns, is not distorted, and a constant series has
    finite gradients); y = (x - mean) / std * weight + bias.
    Returns y (B, V, T) in x's dtype with padded steps 0, and mean, std
    (B, V) in float32 (float64 for float64 input). A sample with no valid step
    gets mean 0, std eps and y 0.
    """
    _validate.revin_inputs(x, mask, weight, bias)
    choice = _dispatch.choose(
        "revin_normalize", backend, x.device,
        lambda: _triton_reason("revin_normalize", x, mask, weight, bias),
    )
    if choice == "triton":
        return _triton_module("revin_normalize").revin_normalize(x, mask, weight, bias, eps)
    return reference.revin_normalize(x, mask, weight, bias, eps)


def revin_denormalize(y, mean, std, weight, bias, eps: float = 1e-5):
    """Inverse of revin_normalize: y (B, V, ...) back to the input scale.

    x = (y - bias) / weight * std + mean, broadcast over the trailing dims of
    y; mean, std: (B, V); weight, bias: (V,). |weight| is kept >= eps**2 so
    the division is always finite. Returns y's dtype.
    """
    _validate.revin_denorm_inputs(y, mean, std, weight, bias)
    return reference.revin_denormalize(y, mean, std, weight, bias, eps)


def gated_residual_norm(x, update, gate_logits, weight, bias, eps: float = 1e-5, *, backend: str = "auto"):
    """x + sigmoid(gate_logits) * (layer_norm(update; weight, bias) - x).

    x, update, gate_logits: (..., D), same shape; weight, bias: (D,).
    LayerNorm over the last dim in float32 at least. Returns x's dtype.
    """
    _validate.gated_norm_inputs(x, update, gate_logits, weight, bias)
    choice = _dispatch.choose(
        "gated_residual_norm", backend, x.device,
        lambda: _triton_reason("gated_residual_norm", x, update, gate_logits, weight, bias),
    )
    if choice == "triton":
        return _triton_module("gated_residual_norm").gated_residual_norm(x, update, gate_logits, weight, bias, eps)
    return reference.gated_residual_norm(x, update, gate_logits, weight, bias, eps)


# ------------------------------------------------ the transformer block's fused work


def _gemm_dtype(x, weight) -> torch.dtype:
    """The dtype the block's GEMMs run in: autocast's when it is on (as
    nn.Linear would), else the weight's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype


def _in_gemm_dtype(dtype: torch.dtype, *tensors):
    return tuple(t.to(dtype) if t is not None else None for t in tensors)


def fused_block_backend(backend: str, x) -> str:
    """The backend the fused transformer-block ops (layer_norm_linear,
    residual_feed_forward, gated_feed_forward) resolve to for residual
    stream x: "triton", or "sdpa"/"reference", whose models keep the plain
    modules."""
    return _dispatch.choose("residual_feed_forward", backend, x.device,
                            lambda: _triton_reason("residual_feed_forward", x))


def dropout_seeds(device, n: int = 3):
    """Fresh int64 seeds for the fused dropout sites, drawn from torch's
    generator of ``device`` (so torch.manual_seed reproduces them, and
    activation checkpointing, which restores the RNG state, redraws them)."""
    return philox.new_seeds(n, device)


def layer_norm_linear(x, norm_weight, norm_bias, weight, bias, eps: float = 1e-5, *, return_residual: bool = False,
                      backend: str = "auto"):
    """layer_norm(x; norm_weight, norm_bias) @ weight.T + bias, the pre-norm
    of a transformer block fused with the GEMM it feeds.

    x: (..., D); norm_weight, norm_bias: (D,); weight: (D_out, D); bias:
    (D_out,) or None. Returns (..., D_out) in the GEMM's dtype (autocast's when it is
    on, else weight's). The norm runs in float32 at least. With the Triton
    backend the backward keeps only x and two floats per row, recomputing the
    normalised rows instead of storing them.

    return_residual=True also returns x for the block's other uses of it
    (the residual add): on the Triton backend a copy the norm pass writes,
    whose gradient the backward adds inside its norm pass, instead of
    autograd summing x's two gradients in a separate (N, D) pass; elsewhere
    x itself.
    """
    _validate.layer_norm_linear_inputs(x, norm_weight, norm_bias, weight, bias)
    choice = _dispatch.choose("layer_norm_linear", backend, x.device,
                              lambda: _triton_reason("layer_norm_linear", x))
    weight, bias = _in_gemm_dtype(_gemm_dtype(x, weight), weight, bias)  # bias may be None
    if choice == "triton":
        return _triton_module("layer_norm_linear").layer_norm_linear(x, norm_weight, norm_bias, weight, bias, eps,
                                                                     return_residual)
    y = reference.layer_norm_linear(x, norm_weight, norm_bias, weight, bias, eps)
    return (y, x) if return_residual else y


def layer_norm(x, weight, bias, eps: float = 1e-5, *, backend: str = "auto"):
    """layer_norm(x; weight, bias) over the last dim, computed in float32 at
    least and written in the dtype the next product reads: autocast's when
    it is on, else x's (nn.LayerNorm under autocast writes float32, and a
    cast follows).

    x: (..., D); weight, bias: (D,). With the Triton backend one pass, and
    the backward keeps x and two floats per row.
    """
    _validate.layer_norm_inputs(x, weight, bias)
    choice = _dispatch.choose("layer_norm", backend, x.device, lambda: _triton_reason("layer_norm", x))
    out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    impl = _triton_module("layer_norm") if choice == "triton" else reference
    return impl.layer_norm(x, weight, bias, eps, out_dtype)


def residual_feed_forward(x, branch, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                          dropout_p: float = 0.0, eps: float = 1e-5, *, seeds=None,
                          recompute_hidden: bool = False, branch_bias=None, gelu_in_gemm: bool = False,
                          backend: str = "auto"):
    """The second half of a pre-norm transformer block, with the residual add
    of the first half:

        x_mid = x + dropout(branch + branch_bias)
        out   = x_mid + dropout(fc2(dropout(gelu(fc1(layer_norm(x_mid))))))

    x, branch: (..., D) (x is the residual stream, branch e.g. the attention
    output projection); norm_weight, norm_bias: (D,); fc1_weight (d_ff, D),
    fc1_bias (d_ff,), fc2_weight (D, d_ff), fc2_bias (D,). GELU is the erf
    form, nn.GELU()'s (on the triton backend, a 16-bit hidden takes its normal
    CDF from kernels/gelu.py's polynomial, within 3.2e-6). Returns out in x's dtype; the GEMMs run in autocast's dtype
    when it is on, else fc1_weight's; everything else in float32 at least.

    Dropout (probability dropout_p, at three sites) draws its keep bits from
    ``seeds`` (int64 (3,), default: fresh ones from torch's generator), never
    from a stored mask: the backward redraws them. The same seeds give the
    same masks on every backend (kernels/philox.py). recompute_hidden=True
    also drops the FFN's (..., d_ff) pre-activation from what the backward
    keeps, at the cost of redoing the first GEMM there.

    branch_bias: optional (D,), the bias of the Linear that made the branch
    (e.g. attention's out_proj run without it), added in float32 at least:
    the Triton backward sums its gradient in the pass that writes dbranch,
    with no pass of its own over the (..., D) gradient.

    gelu_in_gemm=True (triton backend, GEMMs in a 16-bit dtype; float32 and
    float64 GEMMs keep cuBLAS):
    the first GEMM runs as a Triton kernel whose epilogue applies the GELU
    and the dropout, and so does the backward's d-hidden GEMM
    (kernels/gelu_gemm.py), instead of cuBLAS GEMMs and separate passes over
    the (..., d_ff) hidden. The same function; the other backends ignore it.
    """
    _validate.feed_forward_inputs(x, branch, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                  dropout_p, seeds, branch_bias)
    if seeds is None:
        seeds = dropout_seeds(x.device) if dropout_p > 0 else torch.empty((0,), dtype=torch.int64, device=x.device)
    choice = _dispatch.choose("residual_feed_forward", backend, x.device,
                              lambda: _triton_reason("residual_feed_forward", x))
    fc1_weight, fc1_bias, fc2_weight, fc2_bias = _in_gemm_dtype(
        _gemm_dtype(x, fc1_weight), fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    args = (x, branch, seeds, float(dropout_p), norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
            eps, recompute_hidden)
    if choice == "triton":
        return _triton_module("residual_feed_forward").residual_feed_forward(
            *args, branch_bias=branch_bias, gelu_in_gemm=gelu_in_gemm)
    return reference.residual_feed_forward(*args, branch_bias=branch_bias)


def gated_feed_forward(x, branch, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                       gate_weight, gate_bias, out_norm_weight, out_norm_bias, dropout_p: float = 0.0,
                       eps: float = 1e-5, out_eps: float = 1e-5, *, seeds=None, recompute_hidden: bool = False,
                       branch_bias=None, gelu_in_gemm: bool = False, backend: str = "auto"):
    """residual_feed_forward followed by the gated residual norm whose gate is
    a Linear of x, the tail of a variable block:

        update = residual_feed_forward(x, branch, norm_weight, ..., fc2_bias, dropout_p, eps)
        out    = gated_residual_norm(x, update, x @ gate_weight.T + gate_bias,
                                     out_norm_weight, out_norm_bias, out_eps)

    x, branch and the FFN's arguments (dropout, seeds, recompute_hidden,
    branch_bias, gelu_in_gemm included) as in residual_feed_forward; gate_weight (D, D), gate_bias,
    out_norm_weight, out_norm_bias (D,). The gate's GEMM runs in the FFN
    GEMMs' dtype. Returns out in x's dtype. With the Triton backend one
    autograd node: the three gradients of x (the FFN's residual, the gate,
    the gated mix) are summed inside its passes, not by autograd.
    """
    _validate.gated_feed_forward_inputs(x, branch, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight,
                                        fc2_bias, gate_weight, gate_bias, out_norm_weight, out_norm_bias,
                                        dropout_p, seeds, branch_bias)
    if seeds is None:
        seeds = dropout_seeds(x.device) if dropout_p > 0 else torch.empty((0,), dtype=torch.int64, device=x.device)
    choice = _dispatch.choose("gated_feed_forward", backend, x.device,
                              lambda: _triton_reason("gated_feed_forward", x))
    fc1_weight, fc1_bias, fc2_weight, fc2_bias, gate_weight, gate_bias = _in_gemm_dtype(
        _gemm_dtype(x, fc1_weight), fc1_weight, fc1_bias, fc2_weight, fc2_bias, gate_weight, gate_bias)
    args = (x, branch, seeds, float(dropout_p), norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
            gate_weight, gate_bias, out_norm_weight, out_norm_bias, eps, out_eps, recompute_hidden)
    if choice == "triton":
        return _triton_module("gated_feed_forward").gated_feed_forward(
            *args, branch_bias=branch_bias, gelu_in_gemm=gelu_in_gemm)
    return reference.gated_feed_forward(*args, branch_bias=branch_bias)


def dropout(x, p: float, *, seeds=None, backend: str = "auto"):
    """Inverted dropout of x whose mask is never stored: element kept with
    probability 1 - p and scaled by 1/(1-p), else 0.

    x: (..., D), any float dtype, seen as rows of its last dim (D up to 8192
    on the triton backend). p in [0, 1). The keep bits come from ``seeds[0]``
    (seeds: int64, 1-D, at least one element; default: a fresh one from
    torch's generator of x's device, so torch.manual_seed reproduces it), by
    the Philox generator of the fused blocks' dropout: the same seeds give the
    same mask on every backend (kernels/philox.py). The triton backward keeps
    only the seed and redraws the mask. Returns x's dtype and shape; with
    p == 0, x itself (as nn.Dropout). ("sdpa" runs the reference.)
    """
    _validate.dropout_inputs(x, p, seeds)
    choice = _dispatch.choose("dropout", backend, x.device, lambda: _triton_reason("dropout", x))
    if p == 0:  # no node, no copy: autograd passes the gradient straight through
        return x
    if seeds is None:
        seeds = dropout_seeds(x.device, 1)
    if choice == "triton":
        return _triton_module("dropout").dropout(x, seeds, float(p))
    return reference.dropout(x, seeds, float(p))


def value_embedding(y, weight, bias, pos, dropout_p: float = 0.0, *, seeds=None, out_dtype=None,
                    backend: str = "auto"):
    """The model's input embedding in one pass:

        x[b, v, t, :] = dropout(y[b, v, t] * weight[v] + bias[v] + pos[b, t])

    y: (B, V, T) (RevIN's output); weight, bias: (V, D) (a Linear(1, D) per
    variable); pos: (B, T, D) (the calendar encoding, broadcast over V).
    Computed in float32 at least; returned (B, V, T, D) in out_dtype
    (default: weight's and pos's promoted dtype). Dropout (probability
    dropout_p) draws from ``seeds[0]`` (int64 1-D; default a fresh seed from
    torch's generator of y's device), with the mask of ``kernels.dropout``
    over the (B*V*T, D) rows: the same seeds give the same mask on every
    backend. With the Triton backend the backward keeps y, the weight and
    the seed: no (B, V, T, D) tensor and no mask.
    """
    _validate.value_embedding_inputs(y, weight, bias, pos, dropout_p, seeds)
    choice = _dispatch.choose("value_embedding", backend, y.device,
                              lambda: _triton_reason("value_embedding", y, weight))
    if out_dtype is None:
        out_dtype = torch.promote_types(weight.dtype, pos.dtype)
    if seeds is None:
        seeds = dropout_seeds(y.device, 1) if dropout_p > 0 else torch.empty((0,), dtype=torch.int64, device=y.device)
    impl = _triton_module("value_embedding") if choice == "triton" else reference
    return impl.value_embedding(y, weight, bias.to(weight.dtype), pos, seeds, float(dropout_p), out_dtype)


def norm_attention_pool(x, mask, norm_weight, norm_bias, key_weight, key_bias, query, eps: float = 1e-5, *,
                        scale: Optional[float] = None, backend: str = "auto"):
    """The model's aggregation over time, final LayerNorm included:

        h      = layer_norm(x; norm_weight, norm_bias)               (B, V, T, D)
        score  = (h @ key_weight.T + key_bias) @ query * scale       (B, V, T)
        a      = softmax of score over the valid steps of mask       0 at padded steps
        pooled = sum_t a[..., t] h[..., t, :]                        (B, V, D)

    x: (B, V, T, D); mask: (B, T) bool, True = valid step; norm_weight,
    norm_bias, key_bias, query: (D,); key_weight: (D, D); scale: default
    1 / sqrt(D). The key projection enters only through key_weight.T @ query
    (a (D,) vector, made in float32 at least), and key_bias only through a
    constant shift of every score, which the softmax cancels: its gradient
    is 0 (exactly on the triton backend, rounding noise on the reference).
    Computed in float32 at least; returned in autocast's dtype when it is
    on, else x's. A series with no valid step pools to 0 with zero
    gradients; values at padded steps (NaN included) affect nothing. With
    the Triton backend one pass over x forward and one backward, keeping x
    and, per series, the softmax's max and sum and the float pooled vector:
    no normalised copy of x is written or kept. ("sdpa" runs the reference.)
    """
    _validate.norm_attention_pool_inputs(x, mask, norm_weight, norm_bias, key_weight, key_bias, query)
    choice = _dispatch.choose("norm_attention_pool", backend, x.device,
                              lambda: _triton_reason("norm_attention_pool", x))
    device_type = x.device.type
    out_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    dt = reference.compute_dtype(x.dtype)
    scale = 1.0 / math.sqrt(x.shape[-1]) if scale is None else float(scale)
    with torch.autocast(device_type, enabled=False):  # two (D,) products, in the compute dtype
        query = query.to(dt)
        key_query = (key_weight.to(dt).t() @ query) * scale
        score_bias = (key_bias.to(dt) @ query) * scale
    impl = _triton_module("norm_attention_pool") if choice == "triton" else reference
    return impl.norm_attention_pool(x, mask, norm_weight, norm_bias, eps, key_query, score_bias, out_dtype)
