"""What a reader of this paper looks at besides accuracies, computed where the features are.

    retrieval        fixed query images of the validation split and their top-k neighbours
                     among the training images, by cosine similarity of the embeddings
    embedding_map    a 2-D t-SNE map (scikit-learn) of the validation embeddings

(LA's cluster gallery, made where the clusters are, is clustering.cluster_gallery.)

Each returns indices into the prepared splits (and coordinates), small enough for a stage's
record; the report draws them (localagg.report.figures).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def query_indices(labels: torch.Tensor, count: int) -> list[int]:
    """The first validation image of each class, in class order, then the second of each, ...
    until `count`: the same queries for every model."""
    labels = labels.cpu().numpy()
    by_class = [np.flatnonzero(labels == c).tolist() for c in np.unique(labels)]
    out: list[int] = []
    rank = 0
    while len(out) < count and any(rank < len(ids) for ids in by_class):
        out += [ids[rank] for ids in by_class if rank < len(ids)][: count - len(out)]
        rank += 1
    return out


@torch.no_grad()
def retrieval(train: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor, queries: int = 8,
              k: int = 8) -> dict:
    """{"queries": [val index], "neighbours": [[train index] * k]}: the k most similar training
    images (cosine similarity of `train` (N, D) and `val` (M, D) features) of each query."""
    chosen = query_indices(val_labels, queries)
    sims = F.normalize(val[chosen].float(), dim=1) @ F.normalize(train.float(), dim=1).T  # (Q, N)
    return {"queries": chosen, "neighbours": sims.topk(min(k, train.shape[0]), dim=1).indices.tolist()}


def embedding_map(features: torch.Tensor, max_points: int = 600, seed: int = 0) -> dict:
    """{"indices": [val index], "xy": [[x, y]]}: t-SNE (scikit-learn, PCA init, perplexity 30) of
    at most `max_points` evenly spaced validation embeddings, coordinates rounded to 1e-3."""
    from sklearn.manifold import TSNE

    n = features.shape[0]
    m = min(n, max_points)
    indices = [i * n // m for i in range(m)]
    x = F.normalize(features[indices].float(), dim=1).numpy().astype(np.float64)
    xy = TSNE(n_components=2, init="pca", perplexity=min(30.0, (m - 1) / 3), learning_rate="auto",
              random_state=seed).fit_transform(x)
    return {"indices": indices, "xy": np.round(xy, 3).tolist()}
