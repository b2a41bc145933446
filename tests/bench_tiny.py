"""A tiny model config for the bench tests: the machinery, not the numbers.
Head dim 16, the smallest the Triton kernels take."""
from __future__ import annotations

from pathlib import Path

TINY_CONFIG = """\
d_model: 32
n_heads: 2
d_ff: 64
dropout: 0.1
n_temporal_layers: 1
n_variable_layers: 1
max_seq_len: 8
n_variables: 5
"""


def tiny_config_path(directory: Path) -> Path:
    path = Path(directory) / "tiny_config.yaml"
    path.write_text(TINY_CONFIG)
    return path
