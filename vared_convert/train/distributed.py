"""One process or many: torchrun's environment, process groups (NCCL on GPUs, gloo on the CPU), reductions."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import VaredError
from ..timing import resolve_device

__all__ = ["Runtime", "setup_runtime", "teardown_runtime"]


@dataclass
class Runtime:
    """Where this process runs: its device, rank and world size."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum floats across ranks (identity in a single process)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def average_buffers(self, model: nn.Module) -> None:
        """Average the floating-point buffers (BatchNorm running statistics) across ranks, so that every rank
        holds the same model: DDP broadcasts buffers before each forward, but each rank's last forward updates
        its own copy."""
        if not self.distributed:
            return
        for buffer in model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer.div_(self.world_size)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_runtime(device: str = "auto") -> Runtime:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; join the process group when there are several."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size == 1:
        return Runtime(resolve_device(device))
    target = resolve_device(device)
    if target.type == "cuda":
        if target.index is None:
            target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, rank=rank, world_size=world_size)
        except (RuntimeError, ValueError) as exc:
            raise VaredError(f"could not join the {backend} process group: {exc}") from exc
    return Runtime(target, rank, world_size, local_rank)


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
