"""Distributed training helpers (torchrun / DistributedDataParallel), harmless in a single process.

torchrun starts one process per GPU (or per CPU worker) and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init_distributed` reads them: with ``WORLD_SIZE`` > 1 it joins the
process group (NCCL on CUDA, gloo on CPU); otherwise it returns a single-process context and nothing else changes.
Only rank 0 logs, writes checkpoints and metrics.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job.

    Attributes:
        rank: global rank (0 .. world_size - 1).
        local_rank: rank on this machine (selects the GPU ``cuda:local_rank``).
        world_size: number of processes.
        backend: ``nccl``, ``gloo`` or ``None`` for a single process.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: "str | None" = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_distributed(use_cuda: bool) -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1.

    Args:
        use_cuda: pick NCCL and the GPU ``LOCAL_RANK``; otherwise gloo on CPU.

    Returns:
        The :class:`DistContext` of this process (rank 0 of 1 without torchrun).
    """
    world_size = env_world_size()
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    log.debug("rank %d/%d joined the %s process group", rank, world_size, backend)
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, backend=backend)


def cleanup_distributed(context: DistContext) -> None:
    """Leave the process group (no-op in a single process)."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum ``values`` over all processes (returned as a new tensor; unchanged in a single process)."""
    if not context.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(value, context: DistContext, src: int = 0):
    """Send a picklable value from rank ``src`` to every process; returns it everywhere."""
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]
