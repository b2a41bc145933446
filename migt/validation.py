"""Input checks for MIGT_TVDT.forward: fail early, naming expected and actual."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Mapping

import torch

from .config import MIGTConfig

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)

# per-sample calendar field -> inclusive (low, high)
_CALENDAR_RANGES = {
    "day_of_week": (0, 6),
    "day_of_month": (1, 31),
    "day_of_year": (1, 366),
}


_VALUES_CHECKED = contextvars.ContextVar("migt_input_values_checked", default=False)


@contextlib.contextmanager
def input_values_checked() -> Iterator[None]:
    """Within this context validate_inputs (so MIGT_TVDT.forward) skips its
    value-range checks; shapes, dtypes and devices are still checked.

    For a caller that has already run validate_inputs on the batch's host
    copy, as the trainer does before moving it to the GPU. On GPU tensors
    those checks are a host read: the host waits for every queued kernel
    (the previous step's included) and the GPU then idles while the host
    queues the forward's first kernels, every step. Without the read the
    host runs ahead of the GPU, across steps.
    """
    token = _VALUES_CHECKED.set(True)
    try:
        yield
    finally:
        _VALUES_CHECKED.reset(token)


def validate_inputs(
    config: MIGTConfig,
    features: torch.Tensor,
    attention_mask: torch.Tensor,
    temporal_info: Mapping[str, torch.Tensor],
) -> None:
    """Raise ValueError (TypeError for non-tensors) on malformed model input.

    Shape and dtype checks always run. Value-range checks read the values
    (a host sync on GPU tensors); they are skipped while torch.compile traces
    and inside input_values_checked().
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor (B, T, V); got {type(features).__name__}")
    if features.dim() != 3:
        raise ValueError(
            f"features must be 3-D (B, T, V); got {features.dim()}-D with shape {tuple(features.shape)}"
        )
    if not features.is_floating_point():
        raise ValueError(f"features must be a floating-point tensor; got dtype {features.dtype}")
    B, T, V = features.shape
    if V != config.n_variables:
        raise ValueError(
            f"features has {V} variables (last dim) but the model was built for "
            f"n_variables={config.n_variables}"
        )
    if T > config.max_seq_len:
        raise ValueError(
            f"features has T={T} steps (dim 1) but the model accepts at most "
            f"max_seq_len={config.max_seq_len}"
        )
    if T < 1 or B < 1:
        raise ValueError(f"features must have B >= 1 and T >= 1; got shape {tuple(features.shape)}")

    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor (B, T) bool; got {type(attention_mask).__name__}")
    if attention_mask.dtype != torch.bool:
        raise ValueError(f"attention_mask must have dtype torch.bool; got {attention_mask.dtype}")
    if tuple(attention_mask.shape) != (B, T):
        raise ValueError(
            f"attention_mask must have shape (B, T) = {(B, T)} to match features; "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask.device != features.device:
        raise ValueError(
            f"attention_mask is on {attention_mask.device} but features on {features.device}"
        )

    if not isinstance(temporal_info, Mapping):
        raise TypeError(f"temporal_info must be a dict of tensors; got {type(temporal_info).__name__}")
    expected_shapes = {
        "bar_in_day": (B, T),
        "day_of_week": (B,),
        "day_of_month": (B,),
        "day_of_year": (B,),
    }
    missing = [k for k in expected_shapes if k not in temporal_info]
    if missing:
        raise ValueError(
            f"temporal_info is missing key(s) {missing}; expected keys {list(expected_shapes)}"
        )
    for key, shape in expected_shapes.items():
        value = temporal_info[key]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"temporal_info[{key!r}] must be a torch.Tensor; got {type(value).__name__}")
        if value.dtype not in _INT_DTYPES:
            raise ValueError(f"temporal_info[{key!r}] must have an integer dtype; got {value.dtype}")
        if tuple(value.shape) != shape:
            raise ValueError(
                f"temporal_info[{key!r}] must have shape {shape}; got {tuple(value.shape)}"
            )
        if value.device != features.device:
            raise ValueError(f"temporal_info[{key!r}] is on {value.device} but features on {features.device}")

    if torch.compiler.is_compiling() or _VALUES_CHECKED.get():
        return
    # Every range check reduces on the device and all are read back together:
    # one host sync per forward (each read is one), the messages built only
    # on failure.
    bar = temporal_info["bar_in_day"]
    # Padded positions may hold anything: only valid steps are checked.
    bad_bar = attention_mask & ((bar < 0) | (bar >= config.bars_per_day))
    bad = {key: (temporal_info[key] < low) | (temporal_info[key] > high)
           for key, (low, high) in _CALENDAR_RANGES.items()}
    if not any(torch.stack([b.any() for b in (*bad.values(), bad_bar)]).tolist()):
        return
    for key, (low, high) in _CALENDAR_RANGES.items():
        if bool(bad[key].any()):
            idx = int(bad[key].nonzero()[0, 0])
            raise ValueError(
                f"temporal_info[{key!r}] must lie in [{low}, {high}]; got {int(temporal_info[key][idx])} "
                f"at sample {idx}"
            )
    b, t = (int(i) for i in bad_bar.nonzero()[0])
    raise ValueError(
        f"temporal_info['bar_in_day'] must lie in [0, {config.bars_per_day - 1}] "
        f"(bars_per_day={config.bars_per_day}) at valid steps; got {int(bar[b, t])} at (sample {b}, step {t})"
    )
