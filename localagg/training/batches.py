"""The order of the training images: global batches, each rank's slice, seeded loader workers.

Every epoch's order is a permutation keyed by (seed, epoch), cut into global batches of B
images (the last incomplete one dropped); with W processes rank r takes the contiguous
slice [r b, (r + 1) b) of every batch, b = B / W. One process and W processes therefore see
the same global batches, and a run resumed at step s starts from batch s of the same order.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import augment
from ..runtime.distributed import DistInfo


class GlobalBatches:
    """Global-batch order for one epoch; each rank takes its contiguous slice of every batch."""

    def __init__(self, n: int, seed: int, batch_size: int, epoch: int, dist: DistInfo):
        self.perm = torch.randperm(n, generator=augment.step_generator(seed, epoch))
        self.B = batch_size
        self.b = batch_size // dist.world_size
        self.rank = dist.rank
        self.steps = n // self.B  # drop the last incomplete batch

    def local(self, step: int) -> torch.Tensor:
        """This rank's image indices (b,) of global batch `step`."""
        start = step * self.B + self.rank * self.b
        return self.perm[start : start + self.b]


class BatchSampler(torch.utils.data.Sampler):
    """This rank's slices of `batches` from `start_step` on, for a DataLoader over files."""

    def __init__(self, batches: GlobalBatches, start_step: int):
        self.batches, self.start = batches, start_step

    def __iter__(self):
        for s in range(self.start, self.batches.steps):
            yield self.batches.local(s).tolist()

    def __len__(self):
        return self.batches.steps - self.start


def init_worker(seed: int, epoch: int, rank: int, start_step: int, worker_id: int) -> None:
    """Seed a loader worker from (seed, epoch, rank, start step, worker): the crops of file datasets."""
    value = augment.step_generator(seed, epoch, rank, start_step, worker_id).initial_seed()
    torch.manual_seed(value)
    np.random.seed(value % (2**32))
