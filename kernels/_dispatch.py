"""Backend choice shared by every public kernel function.

"auto" (or the env var MIGT_BACKEND, which overrides "auto") picks Triton on
CUDA when the case is supported and falls back to "sdpa" otherwise; an
explicit "triton" on an unsupported case raises with the reason.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

BACKENDS = ("auto", "triton", "sdpa", "reference")
ENV_VAR = "MIGT_BACKEND"


def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def device_reason(device: torch.device) -> Optional[str]:
    """Why Triton cannot run on this device, or None when it can."""
    if not triton_importable():
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreter_on():
        return None
    return f"tensors are on {device.type} (Triton needs CUDA, or TRITON_INTERPRET=1 for CPU tensors)"


def choose(
    op: str,
    backend: str,
    device: torch.device,
    triton_reason: Callable[[], Optional[str]],
) -> str:
    """Resolve `backend` to "triton", "sdpa" or "reference".

    `triton_reason()` returns why the Triton kernel cannot take this case
    (shape, dtype, ...) or None; it is only called when Triton is wanted.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"env {ENV_VAR} must be one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "auto":
        if device.type == "cuda" and device_reason(device) is None and triton_reason() is None:
            return "triton"
        return "sdpa"
    if backend == "triton":
        reason = device_reason(device) or triton_reason()
        if reason is not None:
            raise ValueError(f"{op}: backend='triton' cannot run this case: {reason}")
    return backend
