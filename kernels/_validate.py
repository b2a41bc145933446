"""Argument checks shared by the public kernel functions.

Every check raises before any kernel runs, with a message that names the
argument, what was expected and what was given: a shape error deep inside a
Triton launch is much harder to read.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
AXES = ("time", "variable")


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def tensor(name: str, t, *, ndim: int | None = None, dims: str = "") -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims {dims}, got shape {_shape(t)}")


def floating(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


def mask(name: str, m, batch: int, steps: int) -> None:
    tensor(name, m)
    if m.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = valid step), got {m.dtype}")
    if tuple(m.shape) != (batch, steps):
        raise ValueError(f"{name} must have shape (B, T) = ({batch}, {steps}), got {_shape(m)}")


def attention_inputs(q, k, v, m, axis: str) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        tensor(name, t, ndim=5, dims="(B, V, T, H, Dh)")
        floating(name, t)
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have the shape of q {_shape(q)}, got {_shape(t)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(
                f"{name} must be contiguous in its last dim (stride(-1) == 1), got strides {tuple(t.stride())}"
            )
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    mask("mask", m, q.shape[0], q.shape[2])
    same_device(q=q, k=k, v=v, mask=m)


def per_variable(name: str, t, n_vars: int) -> None:
    tensor(name, t, ndim=1, dims="(V,)")
    if t.shape[0] != n_vars:
        raise ValueError(f"{name} must have shape (V,) = ({n_vars},), got {_shape(t)}")
    floating(name, t)


def revin_inputs(x, m, weight, bias) -> None:
    tensor("x", x, ndim=3, dims="(B, T, V)")
    floating("x", x)
    batch, steps, n_vars = x.shape
    mask("mask", m, batch, steps)
    per_variable("weight", weight, n_vars)
    per_variable("bias", bias, n_vars)
    same_device(x=x, mask=m, weight=weight, bias=bias)


def revin_denorm_inputs(y, mean, std, weight, bias) -> None:
    tensor("y", y)
    if y.dim() < 2:
        raise ValueError(f"y must have shape (B, V, ...), got {_shape(y)}")
    floating("y", y)
    batch, n_vars = y.shape[:2]
    for name, t in (("mean", mean), ("std", std)):
        tensor(name, t, ndim=2, dims="(B, V)")
        if tuple(t.shape) != (batch, n_vars):
            raise ValueError(f"{name} must have shape (B, V) = ({batch}, {n_vars}), got {_shape(t)}")
    per_variable("weight", weight, n_vars)
    per_variable("bias", bias, n_vars)
    same_device(y=y, mean=mean, std=std, weight=weight, bias=bias)


def gated_norm_inputs(x, update, gate_logits, weight, bias) -> None:
    tensor("x", x)
    if x.dim() < 1:
        raise ValueError("x must have at least one dim (..., D)")
    floating("x", x)
    for name, t in (("update", update), ("gate_logits", gate_logits)):
        tensor(name, t)
        floating(name, t)
        if t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {_shape(x)}, got {_shape(t)}")
    d = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        tensor(name, t, ndim=1, dims="(D,)")
        if t.shape[0] != d:
            raise ValueError(f"{name} must have shape (D,) = ({d},), got {_shape(t)}")
        floating(name, t)
    same_device(x=x, update=update, gate_logits=gate_logits, weight=weight, bias=bias)


def _matrix(name: str, t, rows: int, cols: int, dims: str) -> None:
    tensor(name, t, ndim=2, dims=dims)
    if tuple(t.shape) != (rows, cols):
        raise ValueError(f"{name} must have shape {dims} = ({rows}, {cols}), got {_shape(t)}")
    floating(name, t)


def _vector(name: str, t, size: int, dims: str) -> None:
    tensor(name, t, ndim=1, dims=dims)
    if t.shape[0] != size:
        raise ValueError(f"{name} must have shape {dims} = ({size},), got {_shape(t)}")
    floating(name, t)


def _residual_rows(x) -> int:
    tensor("x", x)
    if x.dim() < 1:
        raise ValueError("x must have at least one dim (..., D)")
    floating("x", x)
    return x.shape[-1]


def dropout_probability(p) -> None:
    if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {p!r}")


def layer_norm_linear_inputs(x, norm_weight, norm_bias, weight, bias) -> None:
    d = _residual_rows(x)
    _vector("norm_weight", norm_weight, d, "(D,)")
    _vector("norm_bias", norm_bias, d, "(D,)")
    tensor("weight", weight, ndim=2, dims="(D_out, D)")  # before reading D_out off its shape
    _matrix("weight", weight, weight.shape[0], d, "(D_out, D)")
    tensors = dict(x=x, norm_weight=norm_weight, norm_bias=norm_bias, weight=weight)
    if bias is not None:  # None: a GEMM without bias (the attention kernels add the QKV bias)
        _vector("bias", bias, weight.shape[0], "(D_out,)")
        tensors["bias"] = bias
    same_device(**tensors)


def feed_forward_inputs(x, branch, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, p,
                        seeds, branch_bias=None) -> None:
    d = _residual_rows(x)
    tensor("branch", branch)
    floating("branch", branch)
    if branch.shape != x.shape:
        raise ValueError(f"branch must have the shape of x {_shape(x)}, got {_shape(branch)}")
    _vector("norm_weight", norm_weight, d, "(D,)")
    _vector("norm_bias", norm_bias, d, "(D,)")
    tensor("fc1_weight", fc1_weight, ndim=2, dims="(d_ff, D)")  # before reading d_ff off its shape
    c = fc1_weight.shape[0]
    _matrix("fc1_weight", fc1_weight, c, d, "(d_ff, D)")
    _vector("fc1_bias", fc1_bias, c, "(d_ff,)")
    _matrix("fc2_weight", fc2_weight, d, c, "(D, d_ff)")
    _vector("fc2_bias", fc2_bias, d, "(D,)")
    dropout_probability(p)
    tensors = dict(x=x, branch=branch, norm_weight=norm_weight, norm_bias=norm_bias, fc1_weight=fc1_weight,
                   fc1_bias=fc1_bias, fc2_weight=fc2_weight, fc2_bias=fc2_bias)
    if branch_bias is not None:
        _vector("branch_bias", branch_bias, d, "(D,)")
        tensors["branch_bias"] = branch_bias
    if seeds is not None:
        tensor("seeds", seeds, ndim=1, dims="(3,)")
        if seeds.dtype != torch.int64 or seeds.shape[0] != 3:
            raise ValueError(f"seeds must be an int64 tensor of shape (3,), got {seeds.dtype} {_shape(seeds)}")
        tensors["seeds"] = seeds  # the kernels read them on the device
    same_device(**tensors)


def gated_feed_forward_inputs(x, branch, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                              gate_weight, gate_bias, out_norm_weight, out_norm_bias, p, seeds,
                              branch_bias=None) -> None:
    feed_forward_inputs(x, branch, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, p, seeds,
                        branch_bias)
    d = x.shape[-1]
    _matrix("gate_weight", gate_weight, d, d, "(D, D)")
    _vector("gate_bias", gate_bias, d, "(D,)")
    _vector("out_norm_weight", out_norm_weight, d, "(D,)")
    _vector("out_norm_bias", out_norm_bias, d, "(D,)")
    same_device(x=x, gate_weight=gate_weight, gate_bias=gate_bias, out_norm_weight=out_norm_weight,
                out_norm_bias=out_norm_bias)


def dropout_inputs(x, p, seeds) -> None:
    """kernels.dropout: x a float tensor with a last dim (its rows), p in
    [0, 1), seeds (when given, and p > 0) int64 1-D with at least one element
    on x's device."""
    _residual_rows(x)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"p must be a float in [0, 1), got {p!r}")
    if seeds is None:
        return
    tensor("seeds", seeds)
    if seeds.dtype != torch.int64 or seeds.dim() != 1 or (p > 0 and seeds.shape[0] < 1):
        need = "at least 1 element" if p > 0 else "any length"
        raise ValueError(f"seeds must be a 1-D int64 tensor with {need} (seeds[0] is used), "
                         f"got {seeds.dtype} of shape {_shape(seeds)}")
    same_device(x=x, seeds=seeds)


def layer_norm_inputs(x, weight, bias) -> None:
    d = _residual_rows(x)
    _vector("weight", weight, d, "(D,)")
    _vector("bias", bias, d, "(D,)")
    same_device(x=x, weight=weight, bias=bias)


def value_embedding_inputs(y, weight, bias, pos, p, seeds) -> None:
    tensor("y", y, ndim=3, dims="(B, V, T)")
    floating("y", y)
    B, V, T = y.shape
    tensor("weight", weight, ndim=2, dims="(V, D)")  # before reading D off its shape
    _matrix("weight", weight, V, weight.shape[1], "(V, D)")
    D = weight.shape[1]
    _matrix("bias", bias, V, D, "(V, D)")
    tensor("pos", pos, ndim=3, dims="(B, T, D)")
    if tuple(pos.shape) != (B, T, D):
        raise ValueError(f"pos must have shape (B, T, D) = ({B}, {T}, {D}), got {_shape(pos)}")
    floating("pos", pos)
    dropout_probability(p)
    if seeds is not None:
        tensor("seeds", seeds)
        if seeds.dtype != torch.int64 or seeds.dim() != 1 or (p > 0 and seeds.shape[0] < 1):
            raise ValueError(f"seeds must be a 1-D int64 tensor with at least 1 element (seeds[0] is used), "
                             f"got {seeds.dtype} of shape {_shape(seeds)}")
        same_device(y=y, seeds=seeds)
    same_device(y=y, weight=weight, bias=bias, pos=pos)


def norm_attention_pool_inputs(x, m, norm_weight, norm_bias, key_weight, key_bias, query) -> None:
    tensor("x", x, ndim=4, dims="(B, V, T, D)")
    floating("x", x)
    B, _, T, D = x.shape
    if T == 0:
        raise ValueError(f"x must have at least one step (T >= 1) to pool over, got shape {_shape(x)}")
    mask("mask", m, B, T)
    _vector("norm_weight", norm_weight, D, "(D,)")
    _vector("norm_bias", norm_bias, D, "(D,)")
    _matrix("key_weight", key_weight, D, D, "(D, D)")
    _vector("key_bias", key_bias, D, "(D,)")
    _vector("query", query, D, "(D,)")
    same_device(x=x, mask=m, norm_weight=norm_weight, norm_bias=norm_bias, key_weight=key_weight,
                key_bias=key_bias, query=query)


def qkv_bias(bias, qkv) -> None:
    """A (3 * H * Dh,) bias of a (B, V, T, 3, H, Dh) fused QKV tensor."""
    size = 3 * qkv.shape[4] * qkv.shape[5]
    _vector("bias", bias, size, "(3 * H * Dh,)")
    same_device(qkv=qkv, bias=bias)
