"""Training of MIGT-TVDT: Trainer, options, metrics, schedule, distributed setup.

The command line is ``python -m migt.train`` (see docs/training.md).
"""

from .distributed import DistContext, barrier, init_distributed, shutdown_distributed
from .metrics import QuantileMetrics
from .schedule import warmup_cosine, warmup_cosine_factor
from .trainer import Trainer, TrainOptions

__all__ = [
    "DistContext", "barrier", "init_distributed", "shutdown_distributed", "QuantileMetrics",
    "warmup_cosine", "warmup_cosine_factor", "Trainer", "TrainOptions",
]
