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
