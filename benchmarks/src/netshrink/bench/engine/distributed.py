"""torchrun / DDP plumbing: read RANK, LOCAL_RANK and WORLD_SIZE, pick the backend and device.

Under ``torchrun --nproc_per_node=N`` every process calls ``DistEnv.from_environment()``; it
initialises the process group (NCCL on CUDA, gloo on CPU) and gives each rank its own GPU.
Without torchrun it is a single process with rank 0 and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str = "auto") -> DistEnv:
        """Set up from torchrun's variables (if any); ``device`` is auto, cpu or cuda."""
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={device!r} is not allowed; choose one of: auto, cpu, cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for, but torch sees no CUDA GPU")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cpu")
        if world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                    device_id=dev if use_cuda else None)
        return cls(rank=rank, local_rank=local, world_size=world, device=dev)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over all ranks (identity in a single process)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
