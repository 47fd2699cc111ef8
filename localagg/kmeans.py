"""k-means in torch, sharded over the ranks: Lloyd's algorithm with faiss's recipe.

The bank (N, D) is replicated on every rank; rank r assigns only its shard of rows
(`runtime.distributed.shard`), so a clustering costs every GPU N/W x m x D instead of one GPU
N x m x D while the others wait. One iteration, from centroids c_1..c_m:

    a_i = argmin_c ||x_i - c||^2 = argmax_c (x_i . c - ||c||^2 / 2)      i in this rank's shard
    S_c = sum_{a_i = c} x_i,  n_c = |{i : a_i = c}|                       all-reduced over ranks
    c <- S_c / n_c                                                        where n_c > 0

then every empty cluster is split off a populated one as faiss's `split_clusters` does: cluster
j is picked with probability (n_j - 1) / (N - m) by a scan from cluster 0, the empty one takes
its centroid, and the two are pushed apart by a relative 1/1024 on alternate coordinates (the
draws come from a generator seeded by `seed`, the same on every rank, and the counts are
global, so every rank splits alike). The initial centroids are m distinct bank rows, drawn by
a permutation seeded by `seed` (or given). After the last update every row is assigned to its
nearest final centroid (faiss's final search) and the labels are gathered on every rank.

Sums are accumulated in float64, so the centroids do not depend on how the rows were split
over the ranks beyond float64 rounding. On the CPU the result is deterministic; on CUDA
index_add_ adds in parallel, as faiss's GPU k-means does. Rows are processed in blocks of
`block_rows` so the (block, m) distance block stays bounded whatever N.
"""

from __future__ import annotations

import torch

from .runtime.distributed import DistInfo, all_reduce_sum, gather_rows

SPLIT_EPS = 1.0 / 1024  # faiss's perturbation of split centroids


def _block_rows(m: int, budget: int = 1 << 26) -> int:
    """Rows per distance block: (rows, m) floats within `budget` elements (256 MiB in float32)."""
    return max(256, budget // max(m, 1))


def _assign(x: torch.Tensor, centroids: torch.Tensor, block: int) -> torch.Tensor:
    """Nearest centroid (n,) of each row of x (n, D)."""
    half_norms = 0.5 * (centroids * centroids).sum(1)  # (m,)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], block):
        scores = x[s : s + block] @ centroids.T - half_norms  # (b, m): x.c - |c|^2 / 2
        out[s : s + block] = scores.argmax(1)
    return out


def _split_empty(centroids: torch.Tensor, counts: torch.Tensor, n: int, g: torch.Generator) -> int:
    """faiss's split of empty clusters (module docstring), in place; returns how many were split."""
    m = counts.shape[0]
    hassign = counts.double().cpu()
    empty = torch.nonzero(hassign == 0).flatten().tolist()
    for ci in empty:
        p = (hassign - 1.0) / float(max(n - m, 1))  # (m,) probability of splitting each cluster
        while True:
            hits = torch.nonzero(torch.rand(m, generator=g, dtype=torch.float64) < p).flatten()
            if hits.numel():
                cj = int(hits[0])
                break
        sign = torch.ones(centroids.shape[1], dtype=centroids.dtype, device=centroids.device)
        sign[1::2] = -1
        centroids[ci] = centroids[cj] * (1 + SPLIT_EPS * sign)
        centroids[cj] = centroids[cj] * (1 - SPLIT_EPS * sign)
        hassign[ci] = hassign[cj] / 2  # faiss assumes an even split
        hassign[cj] -= hassign[ci]
    return len(empty)


@torch.no_grad()
def kmeans(bank: torch.Tensor, num_clusters: int, iterations: int = 20, seed: int = 1234,
           dist: DistInfo | None = None, init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the rows of `bank` (N, D) (float32, on any device, the same on every rank).

    Returns (labels (N,) int64 on the bank's device, centroids (m, D) float32). `init` (m, D)
    replaces the drawn initial centroids (tests compare with faiss and a reference this way).
    """
    dist = dist or DistInfo(device=bank.device)
    x_all = bank.float()
    n, d = x_all.shape
    m = num_clusters
    g = torch.Generator().manual_seed(seed)
    if init is None:
        centroids = x_all[torch.randperm(n, generator=g)[:m].to(bank.device)].clone()  # (m, D)
    else:
        centroids = init.to(bank.device, torch.float32).clone()
    part = dist.shard(n)
    x = x_all[part.start : part.stop]  # (n_r, D): this rank's rows
    block = _block_rows(m)
    for _ in range(iterations):
        assign = _assign(x, centroids, block)  # (n_r,)
        sums = torch.zeros(m, d, dtype=torch.float64, device=bank.device)
        for s in range(0, x.shape[0], block):
            sums.index_add_(0, assign[s : s + block], x[s : s + block].double())
        counts = torch.bincount(assign, minlength=m).to(torch.float64)
        all_reduce_sum(sums)
        all_reduce_sum(counts)
        means = (sums / counts.clamp(min=1)[:, None]).float()  # (m, D)
        centroids = torch.where((counts > 0)[:, None], means, centroids)
        _split_empty(centroids, counts, n, g)
    labels = gather_rows(_assign(x, centroids, block), n)
    return labels, centroids
