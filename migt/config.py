"""MIGTConfig: the validated hyper-parameters of MIGT-TVDT.

Field names match ``configs/model_config.yaml``. Every check in
``__post_init__`` raises a ValueError naming the field, what was expected and
what was given, so a bad config fails at construction, not deep in forward.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

VARIABLE_ATTENTION_MODES = ("per_step", "pooled")
RESIDUAL_STREAMS = ("float32", "autocast")
BACKENDS = ("auto", "triton", "sdpa", "reference")

_DEFAULT_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


@dataclass
class MIGTConfig:
    """Hyper-parameters of MIGT-TVDT (defaults = the seed config).

    Attributes:
        d_model: width D of every activation; divisible by ``n_heads``.
        n_heads: attention heads H (head dim Dh = d_model / n_heads).
        d_ff: hidden width of the feed-forward sub-layers.
        dropout: dropout on residual branches, FFN hidden and output pool, in [0, 1).
        attn_dropout: dropout applied to the attention *output* (B, V, T, H, Dh),
            per head, before ``out_proj``. The flash kernels never materialise
            the attention probabilities, so classic dropout on probabilities is
            not available; this is its stand-in. In [0, 1).
        n_temporal_layers: blocks attending along time (>= 0).
        n_variable_layers: blocks attending along variables (>= 0).
        max_seq_len: longest accepted T.
        n_variables: V, the number of input features (last dim of ``features``).
        n_horizons, n_quantiles: output grid (B, n_horizons, n_quantiles).
        quantiles: the quantile levels, strictly increasing inside (0, 1).
        time_of_day_dim: sinusoidal time-of-day width (even: sin/cos pairs).
        day_of_week_dim: learned day-of-week embedding width.
        day_of_month_dim, day_of_year_dim: Time2Vec widths.
        variable_attention: "per_step" (variable blocks at every step, on
            (B, V, T, D)) or "pooled" (after aggregation, on (B, V, 1, D)).
        activation_checkpointing: recompute each block in backward when training.
        recompute_ffn_hidden: on the triton backend, keep not even the FFN's
            (..., d_ff) pre-activation for the backward and redo the first FFN
            GEMM there instead (selective recompute: less memory than the fused
            block alone, far less time than ``activation_checkpointing``).
            The other backends ignore it.
        ffn_gelu_in_gemm: on the triton backend, run the FFN's first GEMM
            (and the backward's d-hidden GEMM) as a Triton kernel that
            applies the GELU and the dropout in its epilogue, instead of
            cuBLAS and a separate pass over the (..., d_ff) hidden (less
            memory traffic; kernels/gelu_gemm.py). The same model either
            way; off until a GPU run shows it faster. 16-bit GEMMs only (under
            autocast): without autocast the cuBLAS path runs. The other
            backends ignore it.
        residual_stream: dtype of the residual stream x between blocks under
            autocast: "float32" (default; every residual add in float32) or
            "autocast" (autocast's dtype, e.g. bfloat16, as Megatron-LM's
            default: the stream and what the backward keeps of it take half
            the bytes). Without autocast the stream is in the parameters'
            dtype either way. Applies to every backend.
        backend: kernel backend passed to every ``kernels`` call.
        revin_eps: RevIN epsilon (enters squared: std = sqrt(var + eps**2)).
        bars_per_day: period of the time-of-day encoding in bars (288 five-minute
            bars); independent of ``max_seq_len``.
    """

    d_model: int = 256
    n_heads: int = 8
    d_ff: int = 1024
    dropout: float = 0.1
    attn_dropout: float = 0.0
    n_temporal_layers: int = 4
    n_variable_layers: int = 2
    max_seq_len: int = 288
    n_variables: int = 24
    n_horizons: int = 5
    n_quantiles: int = 7
    quantiles: Sequence[float] = field(default_factory=lambda: list(_DEFAULT_QUANTILES))
    time_of_day_dim: int = 32
    day_of_week_dim: int = 16
    day_of_month_dim: int = 16
    day_of_year_dim: int = 32
    variable_attention: str = "per_step"
    activation_checkpointing: bool = False
    recompute_ffn_hidden: bool = False
    ffn_gelu_in_gemm: bool = False
    residual_stream: str = "float32"
    backend: str = "auto"
    revin_eps: float = 1e-5
    bars_per_day: int = 288

    def __post_init__(self) -> None:
        positive = (
            "d_model", "n_heads", "d_ff", "max_seq_len", "n_variables", "n_horizons",
            "n_quantiles", "time_of_day_dim", "day_of_week_dim", "day_of_month_dim",
            "day_of_year_dim", "bars_per_day",
        )
        for name in positive:
            _check_int(name, getattr(self, name), minimum=1)
        # Zero layers is allowed (ablations): the stage is then skipped.
        for name in ("n_temporal_layers", "n_variable_layers"):
            _check_int(name, getattr(self, name), minimum=0)

        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model must be divisible by n_heads; got d_model={self.d_model}, "
                f"n_heads={self.n_heads} (remainder {self.d_model % self.n_heads})"
            )
        if self.time_of_day_dim % 2 != 0:
            raise ValueError(
                "time_of_day_dim must be even (sin/cos pairs of integer harmonics); "
                f"got {self.time_of_day_dim}"
            )
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value < 1.0):
                raise ValueError(f"{name} must be a float in [0, 1); got {value!r}")
            setattr(self, name, float(value))
        if (
            isinstance(self.revin_eps, bool)
            or not isinstance(self.revin_eps, (int, float))
            or not (self.revin_eps > 0 and math.isfinite(self.revin_eps))
        ):
            raise ValueError(f"revin_eps must be a positive finite float; got {self.revin_eps!r}")
        self.revin_eps = float(self.revin_eps)

        self.quantiles = _check_quantiles(self.quantiles, self.n_quantiles)

        if self.variable_attention not in VARIABLE_ATTENTION_MODES:
            raise ValueError(
                f"variable_attention must be one of {VARIABLE_ATTENTION_MODES}; "
                f"got {self.variable_attention!r}"
            )
        if self.residual_stream not in RESIDUAL_STREAMS:
            raise ValueError(f"residual_stream must be one of {RESIDUAL_STREAMS}; got {self.residual_stream!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {self.backend!r}")
        for name in ("activation_checkpointing", "recompute_ffn_hidden", "ffn_gelu_in_gemm"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool; got {value!r} ({type(value).__name__})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def positional_dim(self) -> int:
        """Width of the concatenated calendar encodings before the projection to D."""
        return self.time_of_day_dim + self.day_of_week_dim + self.day_of_month_dim + self.day_of_year_dim

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "MIGTConfig":
        """Build from a mapping; unknown keys are rejected by name."""
        if not isinstance(values, Mapping):
            raise ValueError(f"config must be a mapping of field names to values; got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown config key(s) {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**dict(values))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "MIGTConfig":
        """Load a YAML file holding a flat mapping of field names (see configs/)."""
        with open(path, "r", encoding="utf-8") as fh:
            values = yaml.safe_load(fh)
        if values is None:
            values = {}
        try:
            return cls.from_dict(values)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid config file {str(path)!r}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (YAML-serialisable); ``from_dict(to_dict())`` round-trips."""
        out = dataclasses.asdict(self)
        out["quantiles"] = list(self.quantiles)
        return out

    def to_yaml(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(self.to_dict(), fh, sort_keys=False)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}")


def _check_quantiles(quantiles: Any, n_quantiles: int) -> list[float]:
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Sequence):
        raise ValueError(f"quantiles must be a sequence of floats; got {quantiles!r}")
    levels = []
    for q in quantiles:
        if isinstance(q, bool) or not isinstance(q, (int, float)):
            raise ValueError(f"quantiles must hold floats; got element {q!r} in {list(quantiles)}")
        levels.append(float(q))
    if len(levels) != n_quantiles:
        raise ValueError(
            f"quantiles must have n_quantiles={n_quantiles} entries; got {len(levels)}: {levels}"
        )
    for q in levels:
        if not (0.0 < q < 1.0):
            raise ValueError(f"quantiles must lie strictly inside (0, 1); got {q} in {levels}")
    for a, b in zip(levels, levels[1:]):
        if not a < b:
            raise ValueError(f"quantiles must be strictly increasing; got {a} then {b} in {levels}")
    return levels
