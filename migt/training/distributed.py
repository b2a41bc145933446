"""Process-group setup for torchrun (several GPUs or hosts) and single-process runs.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; when
WORLD_SIZE > 1 a process group is started (nccl on CUDA, gloo on CPU).
Without them the run is a single process and nothing here talks to a network.
"""

from __future__ import annotations

import gc
import os
import warnings
import weakref
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto": this process's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's environment, pick the device and start the process group if needed."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        # torch.distributed.nn.functional binds the default group into its
        # functions' defaults when first imported (torch imports it lazily, e.g.
        # from torch.distributed._shard). Imported after the group exists, it
        # keeps the group alive past destroy_process_group, and gloo then tears
        # it down at interpreter exit, where it can abort the process
        # ("terminate called without an active exception"). Import it first.
        import torch.distributed.nn.functional  # noqa: F401
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown_distributed() -> None:
    """Destroy the process group and check that nothing still holds it.

    A group that outlives this call is torn down at interpreter exit, where gloo
    can abort the process after a run that otherwise succeeded; callers must drop
    their DDP wrappers first (``Trainer.release_distributed``).
    """
    if not dist.is_initialized():
        return
    group = weakref.ref(dist.group.WORLD)
    dist.destroy_process_group()
    gc.collect()
    if group() is not None:
        warnings.warn("the default process group is still referenced after destroy_process_group; "
                      "its threads will be torn down at interpreter exit", RuntimeWarning, stacklevel=2)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over ranks in place (a no-op for one process); returns the tensor."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's ``obj``, in rank order (a one-element list for one process)."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
