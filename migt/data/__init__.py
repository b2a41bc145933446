"""Data for MIGT-TVDT: synthetic batches now, real-data feature engineering later."""

from .synthetic import synthetic_batch

__all__ = ["synthetic_batch"]
