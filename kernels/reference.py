"""Plain-PyTorch reference of every op: the truth for parity tests and the
slowest fallback.

Written in the obvious form, in float32 at least (float64 stays float64).
Padded positions are removed with torch.where before any arithmetic, so NaN
or inf stored there cannot reach an output or a gradient (0 * NaN is NaN,
so a multiply by the mask would not do).
"""
from __future__ import annotations

import math

import torch

from . import philox


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def attention(q, k, v, mask, axis: str, scale: float | None = None) -> torch.Tensor:
    """Masked attention over the (B, V, T, H, Dh) layout.

    q, k, v: (B, V, T, H, Dh); mask: (B, T) bool, True = valid step.
    axis="time": per (b, v, h) over T, padded keys excluded, padded query rows 0.
    axis="variable": per (b, t, h) over V, rows of padded steps 0.
    Returns (B, V, T, H, Dh) contiguous in q's dtype.
    """
    if torch.is_autocast_enabled(q.device.type):
        # autocast would run the products in bf16/fp16, where the float32-min
        # fill below overflows: the reference computes in its own dtype
        with torch.autocast(q.device.type, enabled=False):
            return attention(q, k, v, mask, axis, scale)
    out_dtype = q.dtype
    dt = compute_dtype(q.dtype)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    step_ok = mask[:, None, :, None, None]  # [B, 1, T, 1, 1]
    q, k, v = (torch.where(step_ok, t.to(dt), 0.0) for t in (q, k, v))
    if axis == "time":
        # (B, V, H, T, Dh): rows are time steps
        qh, kh, vh = (t.permute(0, 1, 3, 2, 4) for t in (q, k, v))
        scores = qh @ kh.transpose(-1, -2) * scale  # [B, V, H, T, T]
        key_ok = mask[:, None, None, None, :]  # [B, 1, 1, 1, T]
        # A finite fill keeps a row with no valid key finite (uniform weights
        # over zeroed values, then zeroed below) instead of 0/0.
        scores = scores.masked_fill(~key_ok, torch.finfo(dt).min)
        out = (scores.softmax(-1) @ vh).permute(0, 1, 3, 2, 4)
    elif axis == "variable":
        # (B, T, H, V, Dh): rows are variables; every variable is a valid key
        qh, kh, vh = (t.permute(0, 2, 3, 1, 4) for t in (q, k, v))
        scores = qh @ kh.transpose(-1, -2) * scale  # [B, T, H, V, V]
        out = (scores.softmax(-1) @ vh).permute(0, 3, 1, 2, 4)
    else:
        raise ValueError(f"axis must be 'time' or 'variable', got {axis!r}")
    out = torch.where(step_ok, out, 0.0)
    return out.to(out_dtype).contiguous()


def masked_moments(x, mask, eps: float):
    """Mean, biased variance and std = sqrt(var + eps**2) over valid steps.

    x: (B, T, V); mask: (B, T). Returns x with padded steps zeroed (B, T, V)
    and mean, std (B, V), all in the compute dtype. A sample with no valid
    step gets mean 0, std eps.
    """
    dt = compute_dtype(x.dtype)
    valid = mask[:, :, None]  # [B, T, 1]
    xs = torch.where(valid, x.to(dt), 0.0)
    count = mask.sum(1, keepdim=True).to(dt).clamp_min(1.0)  # [B, 1]
    mean = xs.sum(1) / count
    centred = torch.where(valid, xs - mean[:, None, :], 0.0)
    var = (centred * centred).sum(1) / count
    std = torch.sqrt(var + eps * eps)
    return xs, mean, std


def revin_normalize(x, mask, weight, bias, eps: float = 1e-5):
    """x (B, T, V) -> y (B, V, T), mean (B, V), std (B, V); padded y are 0."""
    # the zeroed x, not x: NaN at a padded step would reach the gradient of
    # std through (x - mean) even where y is masked out afterwards
    xs, mean, std = masked_moments(x, mask, eps)
    dt = mean.dtype
    z = (xs - mean[:, None, :]) / std[:, None, :]
    y = z * weight.to(dt) + bias.to(dt)
    y = torch.where(mask[:, :, None], y, 0.0)
    return y.transpose(1, 2).to(x.dtype).contiguous(), mean, std


def safe_weight(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RevIN's affine weight with |w| kept >= eps**2, so the inverse never
    divides by zero; any realistic weight passes through unchanged."""
    tiny = eps * eps
    return torch.where(weight.abs() < tiny, torch.full_like(weight, tiny).copysign(weight), weight)


def revin_denormalize(y, mean, std, weight, bias, eps: float = 1e-5):
    """Inverse of revin_normalize: y (B, V, ...) -> x in the input's scale."""
    dt = compute_dtype(y.dtype)
    extra = (1,) * (y.dim() - 2)
    w = safe_weight(weight.to(dt), eps).view(1, -1, *extra)
    b = bias.to(dt).view(1, -1, *extra)
    m = mean.to(dt).view(*mean.shape, *extra)
    s = std.to(dt).view(*std.shape, *extra)
    return ((y.to(dt) - b) / w * s + m).to(y.dtype)


def gated_residual_norm(x, update, gate_logits, weight, bias, eps: float = 1e-5):
    """x + sigmoid(gate_logits) * (layer_norm(update; weight, bias) - x), over the last dim."""
    dt = compute_dtype(x.dtype)
    normed = torch.nn.functional.layer_norm(
        update.to(dt), (update.shape[-1],), weight.to(dt), bias.to(dt), eps
    )
    xs = x.to(dt)
    out = xs + torch.sigmoid(gate_logits.to(dt)) * (normed - xs)
    return out.to(x.dtype)


def layer_norm_linear(x, norm_weight, norm_bias, weight, bias, eps: float = 1e-5):
    """layer_norm(x; norm_weight, norm_bias) @ weight.T + bias; the norm in
    float32 at least, the product in weight's dtype."""
    dt = compute_dtype(x.dtype)
    h = torch.nn.functional.layer_norm(x.to(dt), (x.shape[-1],), norm_weight.to(dt), norm_bias.to(dt), eps)
    return torch.nn.functional.linear(h.to(weight.dtype), weight, bias)


def layer_norm(x, weight, bias, eps: float = 1e-5, out_dtype=None):
    """layer_norm(x; weight, bias) in float32 at least, returned in out_dtype (default x's)."""
    dt = compute_dtype(x.dtype)
    h = torch.nn.functional.layer_norm(x.to(dt), (x.shape[-1],), weight.to(dt), bias.to(dt), eps)
    return h.to(out_dtype or x.dtype)


def residual_feed_forward(x, branch, seeds, p, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                          eps: float = 1e-5, recompute_hidden: bool = False, branch_bias=None):
    """x_mid = x + dropout(branch (+ branch_bias)); out = x_mid + dropout(fc2(dropout(gelu(fc1(layer_norm(x_mid)))))).

    The three dropouts use the kernels' masks (kernels.philox.keep_mask of
    seeds[0], seeds[1], seeds[2]); the GEMMs run in fc1_weight's dtype, the
    rest in float32 at least. recompute_hidden changes memory, not values.
    """
    dt = compute_dtype(x.dtype)
    gemm_dt = fc1_weight.dtype

    def dropout(t, site):
        if p == 0.0 or seeds.numel() == 0:
            return t
        keep = philox.keep_mask(seeds[site], t.shape, p)
        return torch.where(keep, t / (1.0 - p), 0.0)

    # the stream keeps x_mid in x's dtype, and everything after reads that value
    branch = branch.to(dt) if branch_bias is None else branch.to(dt) + branch_bias.to(dt)
    x_mid = (x.to(dt) + dropout(branch, 0)).to(x.dtype).to(dt)
    h = torch.nn.functional.layer_norm(x_mid, (x.shape[-1],), norm_weight.to(dt), norm_bias.to(dt), eps)
    hidden = torch.nn.functional.linear(h.to(gemm_dt), fc1_weight, fc1_bias)
    g = dropout(torch.nn.functional.gelu(hidden.to(dt)), 1).to(gemm_dt)
    f = torch.nn.functional.linear(g, fc2_weight, fc2_bias)
    return (x_mid + dropout(f.to(dt), 2)).to(x.dtype)


def gated_feed_forward(x, branch, seeds, p, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                       gate_weight, gate_bias, out_norm_weight, out_norm_bias, eps: float = 1e-5,
                       out_eps: float = 1e-5, recompute_hidden: bool = False, branch_bias=None):
    """The variable block's tail: residual_feed_forward, then the gated
    residual norm whose gate is a Linear of x (run in gate_weight's dtype)."""
    update = residual_feed_forward(x, branch, seeds, p, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight,
                                   fc2_bias, eps, recompute_hidden, branch_bias)
    logits = torch.nn.functional.linear(x.to(gate_weight.dtype), gate_weight, gate_bias)
    return gated_residual_norm(x, update, logits, out_norm_weight, out_norm_bias, out_eps)


def dropout(x, seeds, p: float):
    """dropout(x) with the kernels' mask: philox.keep_mask of seeds[0] over
    the rows of x's last dim, kept elements times 1/(1-p) (the kernel's
    multiply), in float32 at least; returns x's dtype. p == 0 or empty
    seeds: x itself."""
    if p == 0.0 or seeds.numel() == 0:
        return x
    keep = philox.keep_mask(seeds[0], x.shape, p)
    return torch.where(keep, x.to(compute_dtype(x.dtype)) * (1.0 / (1.0 - p)), 0.0).to(x.dtype)


def value_embedding(y, weight, bias, pos, seeds, p: float, out_dtype):
    """dropout(y[b, v, t] * weight[v] + bias[v] + pos[b, t]) as (B, V, T, D),
    in float32 at least, with the kernels' mask (philox.keep_mask of
    seeds[0] over the (B*V*T, D) rows); returns out_dtype."""
    dt = compute_dtype(torch.promote_types(weight.dtype, pos.dtype))
    x = y.to(dt).unsqueeze(-1) * weight.to(dt)[:, None, :] + bias.to(dt)[:, None, :] + pos.to(dt)[:, None, :, :]
    if p > 0.0 and seeds.numel() > 0:
        keep = philox.keep_mask(seeds[0], x.shape, p)
        x = torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)
    return x.to(out_dtype)


def masked_softmax(scores, mask):
    """Softmax of scores (B, V, T) over the valid steps of mask (B, T): 0 at
    padded steps, and all 0 for a series with no valid step. Padded scores
    (NaN included) never reach an exp, so they affect nothing."""
    valid = mask[:, None, :]  # [B, 1, T]
    # Shift by the max over valid steps (softmax is shift-invariant, so
    # detaching it changes no gradient); an empty row shifts by 0.
    row_max = torch.where(valid, scores, float("-inf")).amax(-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
    shifted = torch.where(valid, scores - row_max, 0.0)
    expd = torch.where(valid, torch.exp(shifted), 0.0)  # [B, V, T]
    denom = expd.sum(-1, keepdim=True)
    return expd / torch.where(denom > 0, denom, 1.0)


def norm_attention_pool(x, mask, norm_weight, norm_bias, eps: float, key_query, score_bias, out_dtype):
    """sum_t softmax_t(h_t . key_query + score_bias) h_t over the valid steps,
    h = layer_norm(x; norm_weight, norm_bias): x (B, V, T, D) -> (B, V, D) in
    out_dtype, computed in float32 at least (the softmax scale is in
    key_query and score_bias)."""
    if torch.is_autocast_enabled(x.device.type):  # the products in the compute dtype, not autocast's
        with torch.autocast(x.device.type, enabled=False):
            return norm_attention_pool(x, mask, norm_weight, norm_bias, eps, key_query, score_bias, out_dtype)
    dt = compute_dtype(x.dtype)
    valid = mask[:, None, :, None]  # [B, 1, T, 1]
    # padded rows zeroed before the norm too: a NaN there would reach the
    # norm's gradients through its (ignored) output
    xs = torch.where(valid, x.to(dt), 0.0)
    h = torch.nn.functional.layer_norm(xs, (x.shape[-1],), norm_weight.to(dt), norm_bias.to(dt), eps)
    h = torch.where(valid, h, 0.0)  # [B, V, T, D]
    weights = masked_softmax(h @ key_query.to(dt) + score_bias.to(dt), mask)  # [B, V, T]
    return (weights.unsqueeze(-2) @ h).squeeze(-2).to(out_dtype)
