"""Sharding a run under ``torchrun --nproc-per-node N`` (gloo on CPU, NCCL on GPUs): image ``i`` goes to rank ``i mod N``;
rank 0 plans, shares its plan and merges the records."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


class Quiet(Exception):
    """A failure another rank reports: exit with ``code`` without printing it again."""

    def __init__(self, code: int = 2) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Shard:
    """This process's place in a ``torchrun`` job (rank 0 of 1 otherwise)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def join_shard(device: str) -> Shard:
    """Join the ``torchrun`` process group when launched by it (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    import torch.distributed as dist

    shard = Shard(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        torch.cuda.set_device(shard.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return shard


def share(shard: Shard, value: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (a pickled broadcast); as is in a single process."""
    if not shard.distributed:
        return value
    import torch.distributed as dist

    box = [value if shard.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def finish_shard(shard: Shard) -> None:
    """Wait for every rank (so rank 0 can merge)."""
    if shard.distributed:
        import torch.distributed as dist

        dist.barrier()


def leave_shard(shard: Shard) -> None:
    if shard.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
