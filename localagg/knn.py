"""Weighted kNN classifier of Instance Discrimination (Wu et al. 2018), used by LA too: the
pretraining monitors and the transfer evaluation both stand on it.

For a query q (L2-normalised) and a labelled bank {(v_j, y_j)}:
    N_k(q) = the k bank rows of largest q·v_j
    score_c(q) = sum_{j in N_k(q), y_j = c} exp(q·v_j / tau)
    prediction = argmax_c score_c(q)        (k = 200, tau = 0.07)

The bank never has to be in memory at once: `TopK` keeps, for fixed queries, the k largest
similarities seen so far and their bank indices, and takes the bank in chunks (a tensor's
rows, or features computed batch by batch from a dataset), so memory is O(Q k + Q chunk)
whatever N. Under torch.distributed each rank can scan its own shard of the bank and
`merge` combines the ranks' top-k into the global one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

BANK_CHUNK = 65536   # bank rows per similarity block
QUERY_CHUNK = 1024   # queries per similarity block


class TopK:
    """Running top-k of q·v over bank rows seen in chunks, for fixed queries (Q, D)."""

    def __init__(self, queries: torch.Tensor, k: int, query_chunk: int = QUERY_CHUNK):
        self.queries, self.k, self.query_chunk = queries, k, query_chunk
        Q = queries.shape[0]
        self.values = queries.new_empty((Q, 0))  # (Q, <= k) similarities, largest first
        self.indices = torch.empty((Q, 0), dtype=torch.long, device=queries.device)  # bank rows
        self._buffer: list[torch.Tensor] = []  # rows fed but not yet added, contiguous from _buffer_start
        self._buffer_start = self._buffered = 0

    @torch.no_grad()
    def add(self, rows: torch.Tensor, first_index: int = 0) -> None:
        """Bank rows (n, D) with indices first_index .. first_index + n - 1."""
        rows = rows.to(self.queries.device, self.queries.dtype)
        for start in range(0, rows.shape[0], BANK_CHUNK):
            block = rows[start : start + BANK_CHUNK]
            ids = torch.arange(first_index + start, first_index + start + block.shape[0], device=self.queries.device)
            self._add_block(block, ids)

    def feed(self, rows: torch.Tensor, first_index: int) -> None:
        """Rows of a bank computed batch by batch, contiguous with the rows fed before: they
        are added in blocks of BANK_CHUNK rows (`flush` adds the rest), so the similarities
        are the same as `add` of the whole bank at once."""
        if self._buffered and first_index != self._buffer_start + self._buffered:
            self.flush()
        if not self._buffered:
            self._buffer_start = first_index
        self._buffer.append(rows.to(self.queries.device, self.queries.dtype))
        self._buffered += rows.shape[0]
        if self._buffered >= BANK_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._buffered:
            self.add(torch.cat(self._buffer), self._buffer_start)
        self._buffer, self._buffered = [], 0

    def _add_block(self, block: torch.Tensor, ids: torch.Tensor) -> None:
        values, indices = [], []
        for q0 in range(0, self.queries.shape[0], self.query_chunk):
            sims = self.queries[q0 : q0 + self.query_chunk] @ block.T  # (q, n)
            cand_v = torch.cat([self.values[q0 : q0 + self.query_chunk], sims], dim=1)  # (q, k' + n)
            cand_i = torch.cat([self.indices[q0 : q0 + self.query_chunk], ids.expand(sims.shape[0], -1)], dim=1)
            top_v, pos = cand_v.topk(min(self.k, cand_v.shape[1]), dim=1)
            values.append(top_v)
            indices.append(cand_i.gather(1, pos))
        self.values, self.indices = torch.cat(values), torch.cat(indices)

    @torch.no_grad()
    def merge(self) -> None:
        """Under torch.distributed: the top-k over every rank's rows, on every rank (each rank
        must have seen at least k rows)."""
        self.flush()
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        world = dist.get_world_size()
        values = [torch.empty_like(self.values) for _ in range(world)]
        indices = [torch.empty_like(self.indices) for _ in range(world)]
        dist.all_gather(values, self.values.contiguous())
        dist.all_gather(indices, self.indices.contiguous())
        cand_v, cand_i = torch.cat(values, dim=1), torch.cat(indices, dim=1)  # (Q, W k), rank order
        top_v, pos = cand_v.topk(min(self.k, cand_v.shape[1]), dim=1)
        self.values, self.indices = top_v, cand_i.gather(1, pos)

    def scores(self, bank_labels: torch.Tensor, num_classes: int, temperature: float) -> torch.Tensor:
        """Class scores (Q, C): sum of exp(sim / tau) over the neighbours of each class."""
        self.flush()
        labels = bank_labels.to(self.indices.device)[self.indices]  # (Q, k)
        weights = (self.values / temperature).exp()
        out = torch.zeros(self.values.shape[0], num_classes, device=self.values.device, dtype=weights.dtype)
        return out.scatter_add_(1, labels, weights)


@torch.no_grad()
def knn_scores(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
               k: int = 200, temperature: float = 0.07, chunk: int = QUERY_CHUNK) -> torch.Tensor:
    """Class scores (Q, C) of `queries` (Q, D) against `bank` (N, D) with labels (N,), on the
    bank's device (computed there in blocks of `chunk` queries x BANK_CHUNK rows)."""
    top = TopK(queries.to(bank.device, bank.dtype), min(k, bank.shape[0]), query_chunk=chunk)
    top.add(bank)
    return top.scores(bank_labels, num_classes, temperature).cpu()


def correct_count(scores: torch.Tensor, labels: torch.Tensor) -> int:
    """How many rows of `scores` (Q, C) have their largest score at `labels` (Q,)."""
    return int((scores.argmax(1) == labels.to(scores.device)).sum().item())


def knn_top1(queries, query_labels, bank, bank_labels, num_classes, k=200, temperature=0.07) -> float:
    """Top-1 accuracy (percent) of the weighted kNN classifier."""
    pred = knn_scores(queries, bank, bank_labels, num_classes, k, temperature).argmax(1)
    return 100.0 * (pred == query_labels.cpu()).double().mean().item()
