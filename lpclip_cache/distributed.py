"""Many processes, one store: ranks read from the launcher (torchrun), shards dealt round-robin.

A single process is world size 1. Under ``torchrun`` the variables ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` say who this process is. The process group is used only for barriers and for
exchanging small Python objects, so it is gloo's, on the CPU, whatever device encodes: NCCL would
move each object through the GPU that ``torch.cuda.current_device()`` names, cuda:0 on every rank
unless each set its own.

A decision that stops the job is taken once and shared, so that every rank stops with the same
one line and exit code: ranks that see different data or settings (``agree``), or rank 0 unable
to open the store (``on_main``). Such an error is marked ``every_rank``. torchrun sends SIGTERM
to the other ranks as soon as one exits; a rank already stopping on a shared error finishes
saying it instead of turning into "interrupted" (``stopping_together``, which the command
line's SIGTERM handler asks).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from .errors import LpclipError, StoreError


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

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (one process: ``value``)."""
        if not self.group:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, what: dict[str, Any], subject: str, advice: str) -> None:
        """Check that every rank holds the same ``what`` (a JSON-like object): where a rank's
        differs from rank 0's, every rank raises one StoreError naming the first such rank, its
        host and the dotted fields that differ."""
        if not self.group:
            return
        import socket

        from .store import manifest_diff

        everyone = self.gather((socket.gethostname(), what))
        for rank, (host, theirs) in enumerate(everyone[1:], 1):
            fields = manifest_diff(everyone[0][1], theirs)
            if fields:
                shown = ", ".join(fields[:6]) + (" ..." if len(fields) > 6 else "")
                self.stop_together(StoreError(f"rank {rank} of {self.world} (host {host}) sees other {subject} than "
                                              f"rank 0 (host {everyone[0][0]}): they differ in {shown}; {advice}"))

    def on_main(self, action: Callable[[], Any]) -> Any:
        """Run ``action`` on rank 0 only and return its result on every rank; when it fails with
        an LpclipError (the store held by another job, a store of another configuration), every
        rank raises that same error."""
        if not self.group:
            return action()
        outcome: tuple[Any, LpclipError | None] = (None, None)
        if self.is_main:
            try:
                outcome = (action(), None)
            except LpclipError as exc:
                outcome = (None, exc)
            except Exception as exc:  # a fault of rank 0's own: the others stop in one line, it shows its traceback
                self.share((None, StoreError(f"rank 0 stopped on {type(exc).__name__}: see its output above")))
                self.barrier()
                raise
        value, error = self.share(outcome)
        if error is not None:
            self.stop_together(error)
        return value

    def stop_together(self, error: LpclipError) -> NoReturn:
        """Raise ``error``, which every rank raises too, marked ``every_rank``; the barrier, passed
        while it is in flight, keeps any rank from exiting before every rank is stopping on it."""
        error.every_rank = True  # type: ignore[attr-defined]
        try:
            raise error
        finally:
            self.barrier()

    def close(self) -> None:
        """Leave the process group."""
        if self.group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.group = False


def stopping_together() -> bool:
    """True while this process stops on an error that every rank of its job shares (the error
    being handled, or the exit it led to)."""
    error = sys.exc_info()[1]
    while error is not None:
        if getattr(error, "every_rank", False):
            return True
        error = error.__context__
    return False


def from_environment() -> Ranks:
    """Ranks from torchrun's environment; joins the (gloo) process group when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
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
