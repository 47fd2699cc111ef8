"""Weighted kNN classifier of Instance Discrimination (Wu et al. 2018), used by LA too: the
pretraining monitors and the transfer evaluation both stand on it.

For a query q (L2-normalised) and a labelled bank {(v_j, y_j)}:
    N_k(q) = the k bank rows of largest q·v_j
    score_c(q) = sum_{j in N_k(q), y_j = c} exp(q·v_j / tau)
    prediction = argmax_c score_c(q)        (k = 200, tau = 0.07)
"""

from __future__ import annotations

import torch


@torch.no_grad()
def knn_scores(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
               k: int = 200, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores (Q, C) of `queries` (Q, D) against `bank` (N, D) with labels (N,)."""
    k = min(k, bank.shape[0])
    out = []
    bank_labels = bank_labels.to(bank.device)
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk].to(bank.device, bank.dtype)
        sims, idx = (q @ bank.T).topk(k, dim=1)  # (q, k)
        weights = (sims / temperature).exp()
        scores = torch.zeros(q.shape[0], num_classes, device=bank.device, dtype=weights.dtype)
        scores.scatter_add_(1, bank_labels[idx], weights)
        out.append(scores)
    return torch.cat(out).cpu()


def knn_top1(queries, query_labels, bank, bank_labels, num_classes, k=200, temperature=0.07) -> float:
    """Top-1 accuracy (percent) of the weighted kNN classifier."""
    pred = knn_scores(queries, bank, bank_labels, num_classes, k, temperature).argmax(1)
    return 100.0 * (pred == query_labels.cpu()).double().mean().item()
