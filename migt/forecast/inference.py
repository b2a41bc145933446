"""Batched quantile forecasts of a model over day samples, on a CPU or a GPU."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.dataset import BarDayDataset, collate_days
from ..training.trainer import autocast_context


@torch.no_grad()
def predict_quantiles(
    model: torch.nn.Module,
    dataset: BarDayDataset,
    *,
    target_scale: float,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    amp: str = "off",
    progress: bool = True,
) -> np.ndarray:
    """(N, H, Q) float64 quantiles of the forward log return of every sample, in order.

    model: a MIGT_TVDT (or its torch.compile wrapper) already on ``device``;
    its outputs are log returns x ``target_scale`` (the training units).
    amp: as in training ("auto" = bf16 autocast on CUDA).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    if len(dataset) == 0:
        raise ValueError("the dataset holds no sessions to forecast")
    device = torch.device(device)
    autocast = autocast_context(amp, device)
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_days,
                        pin_memory=device.type == "cuda")
    if progress:
        from tqdm.auto import tqdm
        loader = tqdm(loader, desc="predict", unit="batch", dynamic_ncols=True)
    out = []
    for batch in loader:
        temporal = {k: v.to(device) for k, v in batch["temporal_info"].items()}
        with autocast():
            q = model(batch["features"].to(device), batch["attention_mask"].to(device), temporal)["quantiles"]
        out.append(q.float().cpu().to(torch.float64) / target_scale)  # [B, H, Q]
    return torch.cat(out).numpy()
