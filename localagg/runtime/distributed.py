"""torch.distributed in a few small helpers (torchrun: NCCL on GPU, gloo on CPU).

Every collective runs under the process group's timeout (`init_distributed(timeout_s=...)`,
from params), so a rank that never arrives stops the job with an error instead of a hang; the
work between two collectives is kept short by sharding it: `shard(n)` gives each rank a
contiguous slice of n items, `gather_rows` puts the slices back together in order on every
rank. The memory bank is replicated on every rank; `all_gather_cat` collects every rank's
(indices, embeddings) in rank order so each replica applies the same update.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> range:
        """This rank's contiguous slice of range(n): the first n % W ranks get one item more."""
        return shard(n, self.rank, self.world_size)


def shard(n: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s contiguous slice of range(n) among `world_size` ranks."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when available (modulo the visible devices), else cpu."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # a scheduler that binds one GPU to each task shows each process one device
        count = torch.cuda.device_count()
        return torch.device("cuda", local_rank % count if count else local_rank)
    return torch.device(device)


def init_distributed(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); every
    collective then fails after `timeout_s` seconds of waiting (NCCL's watchdog, gloo's
    timeout) instead of hanging."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local_rank, dev)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` (the same shape on every rank) along dim 0, in rank order (no gradient)."""
    if not _active():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def gather_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """The rows of range(n) on every rank, from each rank's `shard(n)` rows `t` (n_r, ...):
    the slices are padded to one size for the all-gather and cut back, in order."""
    if not _active():
        return t
    world = dist.get_world_size()
    longest = -(-n // world)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: len(shard(n, r, world))] for r, part in enumerate(parts)])


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the ranks, in place (returned for chaining)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if _active():
        dist.broadcast(t, src)
    return t


def barrier() -> None:
    if _active():
        dist.barrier()
