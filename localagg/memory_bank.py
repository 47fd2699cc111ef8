"""The memory bank of Instance Recognition and Local Aggregation: one embedding per image.

The bank holds a row v_j (dimension D, 128 in the paper) for each of the N training images.
It is not trained: after each step the rows of the images in the batch move towards their
fresh embeddings v_i (Wu et al. 2018; Zhuang et al. 2019, momentum m = 0.5):

    bank[i] <- normalize(m * bank[i] + (1 - m) * v_i)

Initialisation (lemniscate.pytorch and both LA codes): uniform in [-s, s] with
s = 1 / sqrt(D / 3), so each coordinate has variance 1 / D and rows have norm about 1.
The PyTorch port of LA then L2-normalises every row; the TensorFlow code, the reference,
does not. Hence `normalize_init=False` by default; pass True to follow the port.

Under DDP the bank is replicated on every rank. The trainer all-gathers (indices,
embeddings) from all ranks and calls `update` with the gathered tensors, in rank order, on
every rank, so the replicas stay identical; `update` itself has no collective.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class MemoryBank(torch.nn.Module):
    """N x D bank of L2-normalised embeddings, updated with momentum, carried in checkpoints.

    Args:
        num_items: N, the number of training images (one row each).
        dim: D, the embedding dimension.
        momentum: m in bank[i] <- normalize(m * bank[i] + (1 - m) * v_i).
        normalize_init: L2-normalise the rows after the uniform init (PyTorch port: True;
            TensorFlow reference: False).
        generator: torch.Generator for the init; the rows are drawn on the generator's
            device and then moved to `device`, so a seeded CPU generator gives the same bank
            on every device.
        device: where the bank lives.

    The rows are the buffer `memory` (N, D) float32, so `state_dict` / `load_state_dict`
    save and restore it with the model.
    """

    memory: torch.Tensor

    def __init__(
        self,
        num_items: int,
        dim: int = 128,
        momentum: float = 0.5,
        normalize_init: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if num_items < 1:
            raise ValueError(f"MemoryBank needs num_items >= 1, got {num_items}")
        if dim < 1:
            raise ValueError(f"MemoryBank needs dim >= 1, got {dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MemoryBank momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        bound = 1.0 / math.sqrt(dim / 3.0)
        draw_device = generator.device if generator is not None else device
        memory = torch.empty(num_items, dim, dtype=torch.float32, device=draw_device)
        memory.uniform_(-bound, bound, generator=generator)  # (N, D)
        if normalize_init:
            memory = F.normalize(memory, dim=1)
        self.register_buffer("memory", memory.to(device) if device is not None else memory)

    @property
    def num_items(self) -> int:
        return self.memory.shape[0]

    @property
    def dim(self) -> int:
        return self.memory.shape[1]

    @torch.no_grad()
    def update(self, indices: torch.Tensor, embeddings: torch.Tensor, distinct: bool = False) -> None:
        """bank[i] <- normalize(m * bank[i] + (1 - m) * v_i) for each (i, v_i) of the batch.

        indices: (B,) integer rows of the bank; embeddings: (B, D), detached here and cast
        to the bank's dtype. Rows not in `indices` are untouched. If an index occurs more
        than once, its last occurrence in the batch wins: that row becomes
        normalize(m * old_row + (1 - m) * v_last), computed from the row as it was before
        the call (never from an earlier occurrence's result). This is deterministic on every
        device, and under DDP (gathered in rank order) the same on every rank.

        `distinct=True` promises that no index repeats (a training batch is a slice of a
        permutation): the rows are then written directly, without `torch.unique`, which
        waits for the GPU to know its output size.
        """
        if indices.dim() != 1 or indices.dtype.is_floating_point or indices.dtype.is_complex:
            raise ValueError(
                f"MemoryBank.update: indices must be a 1-D integer tensor, got shape "
                f"{tuple(indices.shape)} dtype {indices.dtype}"
            )
        if embeddings.dim() != 2 or embeddings.shape != (indices.shape[0], self.dim):
            raise ValueError(
                f"MemoryBank.update: embeddings must have shape (B, D) = "
                f"({indices.shape[0]}, {self.dim}), got {tuple(embeddings.shape)}"
            )
        if indices.numel() == 0:
            return
        indices = indices.to(device=self.memory.device, dtype=torch.long)
        embeddings = embeddings.detach().to(device=self.memory.device, dtype=self.memory.dtype)
        if distinct:
            mixed = self.momentum * self.memory.index_select(0, indices) + (1.0 - self.momentum) * embeddings  # (B, D)
            self.memory.index_copy_(0, indices, F.normalize(mixed, dim=1))
            return
        # Position of the last occurrence of every distinct index (max is order-free, so
        # the scatter is deterministic).
        unique, inverse = torch.unique(indices, return_inverse=True)  # (U,), (B,)
        positions = torch.arange(indices.numel(), device=indices.device)  # (B,)
        last = torch.full_like(unique, -1).scatter_reduce_(0, inverse, positions, reduce="amax")
        rows = self.memory.index_select(0, unique)  # (U, D)
        mixed = self.momentum * rows + (1.0 - self.momentum) * embeddings[last]  # (U, D)
        self.memory.index_copy_(0, unique, F.normalize(mixed, dim=1))

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, dim={self.dim}, momentum={self.momentum}"
