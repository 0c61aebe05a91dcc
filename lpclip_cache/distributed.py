"""Many processes, one store: ranks read from the launcher (torchrun), shards dealt round-robin.

A single process is world size 1. Under ``torchrun`` the variables ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` say who this process is; the process group (gloo on the CPU, NCCL on CUDA) is used
only for barriers and for gathering small Python objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Ranks:
    """This process's place among the extraction processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 creates the store, writes its metadata and finishes it."""
        return self.rank == 0

    def owns(self, shard: int) -> bool:
        """Shards are dealt round-robin: shard s belongs to rank s mod world."""
        return shard % self.world == self.rank

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.group:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (one process: ``[value]``)."""
        if not self.group:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        """Leave the process group."""
        if self.group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.group = False


def from_environment(device_type: str) -> Ranks:
    """Ranks from torchrun's environment; joins the process group when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Ranks(rank=rank, world=world, local_rank=local_rank, group=True)


def pick_device(device: str = "auto") -> Any:
    """The torch device a command runs on: ``auto`` means CUDA when present, else the CPU; an
    unknown name, or CUDA asked for where none is visible, is a ModelError naming the fix."""
    import torch

    from .errors import ModelError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N") from exc
    if chosen.type not in ("cpu", "cuda"):
        raise ModelError(f"device '{device}' is not supported (lpclip-cache runs on the CPU or CUDA): use auto, cpu, "
                         "cuda or cuda:N")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device '{device}' asked for, but no CUDA device is visible: use --device cpu")
    return chosen
