"""Things the suites share: dtype names, the default config, backend availability."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Optional

import torch

from bench.harness import REPO_ROOT

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_CONFIG = REPO_ROOT / "configs" / "model_config.yaml"


@dataclasses.dataclass
class RunSettings:
    """What every suite needs to know about the run."""

    device: torch.device
    batch_sizes: tuple
    dtypes: tuple  # names from DTYPES
    backends: tuple  # backend names the user asked for (each suite keeps the ones it knows)
    seq_len: int  # T of the attention and norms suites
    model_seq_len: int  # T of the model suite (shorter in a CPU --quick run)
    config_path: Path = DEFAULT_CONFIG
    # backend name -> reason it is left out of this run (e.g. compile in --quick on a CPU)
    left_out: dict = dataclasses.field(default_factory=dict)
    # model suite: also measure saved-activation bytes (one more forward per train_step case)
    measure_saved: bool = True


def load_config(settings: RunSettings, **changes):
    import migt

    config = migt.MIGTConfig.from_yaml(settings.config_path)
    return dataclasses.replace(config, **changes) if changes else config


def triton_skip_reason(device: torch.device, ops: Iterable[str]) -> Optional[str]:
    """Why backend='triton' cannot run these kernel ops here, or None."""
    import kernels
    from kernels import _dispatch

    reason = _dispatch.device_reason(device)
    if reason is not None:
        return reason
    for op in ops:
        if kernels._triton_module(op) is None:
            return f"no Triton kernel for {op} in this build"
    return None


def skip_unless_runnable(settings, backend: str, triton_ops: Iterable[str] = ()) -> None:
    """Raise Skip when this run leaves the backend out, or when it is
    "triton" and a kernel it needs cannot run on this device."""
    from bench.harness import Skip

    if backend in settings.left_out:
        raise Skip(settings.left_out[backend])
    if backend == "triton" and triton_ops:
        reason = triton_skip_reason(settings.device, triton_ops)
        if reason:
            raise Skip(reason)


def flex_attention_module():
    """torch.nn.attention.flex_attention, or Skip when this torch lacks it."""
    from bench.harness import Skip

    try:
        from torch.nn.attention import flex_attention
    except ImportError as err:
        raise Skip(f"torch {torch.__version__} has no torch.nn.attention.flex_attention ({err})") from None
    return flex_attention


def day_masks(batch: int, steps: int, n_variables: int, device, *, seed: int = 0) -> torch.Tensor:
    """(B, T) key-padding masks drawn like real days (full days, short
    sessions, days with gaps), the same generator the model suite's inputs use."""
    import migt

    config = migt.MIGTConfig(n_variables=n_variables, max_seq_len=max(steps, 1))
    return migt.data.synthetic_batch(batch, config, seed=seed, seq_len=steps)["attention_mask"].to(device)
