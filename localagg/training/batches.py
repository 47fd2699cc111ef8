"""The order of the training images: global batches, each rank's slice, seeded loader workers.

Every epoch's order is a permutation keyed by (seed, epoch), cut into global batches of B
images (the last incomplete one dropped); with W processes rank r takes the contiguous
slice [r b, (r + 1) b) of every batch, b = B / W. One process and W processes therefore see
the same global batches, and a run resumed at step s starts from batch s of the same order.
File datasets get their crops from the sampler too (EpochSampler), so a resumed run decodes
the same crops.
"""

from __future__ import annotations

import signal

import numpy as np
import torch

from ..data import augment, decode
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


class EpochSampler(torch.utils.data.Sampler):
    """This rank's batches of one epoch from a start step, for a DataLoader over files that lives
    for the whole run (persistent workers): `start(batches, step)` before each epoch.

    With `crops` (scale, ratio) each item is (index, its RandomResizedCrop uniforms): the crops
    of global batch s are drawn from the generator of (seed, epoch, s) for all B images and
    sliced, so they do not depend on the process or worker count."""

    def __init__(self, seed: int, crops: bool):
        self.seed, self.crops = seed, crops
        self.batches: GlobalBatches | None = None
        self.first = self.epoch = 0

    def start(self, batches: GlobalBatches, epoch: int, step: int) -> None:
        self.batches, self.epoch, self.first = batches, epoch, step

    def __iter__(self):
        b, rank = self.batches.b, self.batches.rank
        for s in range(self.first, self.batches.steps):
            idx = self.batches.local(s).tolist()
            if not self.crops:
                yield idx
                continue
            draws = decode.draw_crops(self.batches.B, augment.step_generator(self.seed, self.epoch, s, 3))
            yield list(zip(idx, draws[rank * b : (rank + 1) * b]))

    def __len__(self):
        return self.batches.steps - self.first


def init_worker(seed: int, rank: int, worker_id: int) -> None:
    """Seed a loader worker from (seed, rank, worker): nothing a worker draws changes the
    training stream (crops come from the sampler), this only keeps libraries reproducible."""
    value = augment.step_generator(seed, rank, worker_id).initial_seed()
    torch.manual_seed(value)
    np.random.seed(value % (2**32))
    # a preemption signals every process of the job: the worker leaves it to the training
    # process, which stops at the next step with a checkpoint and then ends its workers
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
