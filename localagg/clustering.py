"""k-means on the memory bank for Local Aggregation's close neighbours, and cluster statistics.

Local Aggregation's close neighbours C_i come from H k-means clusterings of the memory bank
(not of fresh features), each with m clusters:

    C_i = union over h = 1..H of { j : labels[h, j] == labels[h, i] }

Official recipe (TensorFlow reference and PyTorch port alike), followed by `run_kmeans`:
faiss k-means on the N x D bank rows, plain L2 (not spherical), 20 iterations, no
subsampling (`max_points_per_centroid` large enough that faiss never samples the training
set), seed 1234 + h for clustering h, on the GPU; then a nearest-centroid search (k = 1)
assigns every bank row. Paper sizes: ResNets 10 x 30,000, AlexNet 3 x 30,000, VGG16
6 x 10,000. Recomputed once per epoch and once at the start of the LA run.

Determinism: faiss's CPU k-means gives bit-identical centroids and labels for the same bank
and seed, whatever the number of OpenMP threads (checked with faiss-cpu 1.15.1 for 1, 2, 3,
4, 8 and 16 threads; as expected, since faiss's centroid update gives each thread its own
range of centroids, each summed over the points in order). So nothing here pins the thread
count; `tests/test_clustering.py` checks repeat and thread-count determinism. GPU k-means
was not checked and is not promised bit-identical across runs or with the CPU.

Under DDP the trainer runs `run_kmeans` on one rank and broadcasts the labels; this module
has no distributed code.

`cluster_statistics` summarises clusterings: cluster sizes, singletons and, when the true
classes are known, NMI and purity; `cluster_gallery` picks a few clusters for the report to
draw (members, size, purity).
"""

from __future__ import annotations

import statistics

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from localagg.errors import UserError
from localagg.progress import track


def faiss_has_gpu() -> bool:
    """True when faiss was built with GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def run_kmeans(
    bank: np.ndarray,
    num_clusters: int,
    num_kmeans: int = 1,
    iterations: int = 20,
    seed: int = 1234,
    use_gpu: bool | None = None,
    verbose: bool = False,
) -> np.ndarray:
    """Cluster the bank rows `num_kmeans` times; returns labels (H, N) int64 in [0, m).

    Args:
        bank: (N, D) memory bank rows; copied to contiguous float32 if needed.
        num_clusters: m, clusters per clustering (must be <= N).
        num_kmeans: H, the number of clusterings; clustering h uses seed `seed + h`.
        iterations: Lloyd iterations per clustering (official: 20).
        seed: seed of clustering 0 (official: 1234).
        use_gpu: None = GPU when faiss has GPU support and sees a GPU; True requires one.
            On GPU, faiss shares the work over every GPU it sees.
        verbose: let faiss print its per-iteration log.
    """
    x = np.ascontiguousarray(bank, dtype=np.float32)
    if x.ndim != 2:
        raise UserError(f"k-means needs a 2-D (N, D) bank, got an array of shape {x.shape}")
    n, d = x.shape
    if num_clusters < 1 or num_kmeans < 1 or iterations < 1:
        raise UserError(
            f"k-means needs num_clusters, num_kmeans and iterations >= 1, "
            f"got {num_clusters}, {num_kmeans}, {iterations}"
        )
    if num_clusters > n:
        raise UserError(
            f"k-means: m = {num_clusters} clusters > N = {n} rows: lower num_clusters to at most {n}"
        )
    if use_gpu is None:
        use_gpu = faiss_has_gpu()
    elif use_gpu and not faiss_has_gpu():
        raise UserError(
            "k-means: use_gpu=True but faiss has no GPU support or sees no GPU: "
            "install faiss-gpu-cu12 on a GPU machine, or pass use_gpu=False"
        )

    labels = np.empty((num_kmeans, n), dtype=np.int64)  # (H, N)
    for h in track(range(num_kmeans), desc=f"k-means (m={num_clusters})", total=num_kmeans):
        kmeans = faiss.Kmeans(
            d,
            num_clusters,
            niter=iterations,
            seed=seed + h,
            # faiss samples max_points_per_centroid * m rows when N is larger; N per centroid
            # is never exceeded, so the whole bank is used (no subsampling).
            max_points_per_centroid=n,
            # only warns when N < m * min_points_per_centroid; N >= m is checked above.
            min_points_per_centroid=1,
            gpu=bool(use_gpu),
            verbose=verbose,
        )
        kmeans.train(x)
        _, nearest = kmeans.index.search(x, 1)  # (N, 1), the index holds the final centroids
        labels[h] = nearest[:, 0]
    return labels


def _purity(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of points whose cluster's most frequent true class is their own class."""
    _, true_ids = np.unique(true, return_inverse=True)
    num_classes = int(true_ids.max()) + 1
    # one key per (cluster, class) pair; counts (P,) of the P distinct pairs
    pairs, counts = np.unique(pred * num_classes + true_ids, return_counts=True)
    majority = np.zeros(int(pred.max()) + 1, dtype=np.int64)  # (m,) largest class count
    np.maximum.at(majority, pairs // num_classes, counts)
    return float(majority.sum() / pred.size)


def _one_clustering(pred: np.ndarray, true: np.ndarray | None) -> dict:
    sizes = np.bincount(pred)
    sizes = sizes[sizes > 0]  # non-empty clusters only
    stats = {
        "num_nonempty_clusters": float(sizes.size),
        "size_min": float(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_mean": float(sizes.mean()),
        "size_max": float(sizes.max()),
        "singleton_fraction": float(np.mean(sizes == 1)),
    }
    if true is not None:
        stats["nmi"] = float(normalized_mutual_info_score(true, pred))
        stats["purity"] = _purity(pred, true)
    return stats


def cluster_statistics(labels: np.ndarray, true_labels: np.ndarray | None = None) -> dict:
    """Statistics of H clusterings, per clustering and averaged over the H.

    Args:
        labels: (H, N) non-negative cluster ids, as from `run_kmeans`.
        true_labels: optional (N,) true classes; adds "nmi" (sklearn's
            normalized_mutual_info_score, arithmetic mean) and "purity".

    Returns a JSON-able dict of floats: "num_clusterings", "num_points", then the mean over
    the H clusterings of "num_nonempty_clusters", "size_min", "size_median", "size_mean",
    "size_max" (sizes of non-empty clusters), "singleton_fraction" (share of non-empty
    clusters with one point) and, with true labels, "nmi" and "purity"; "per_clustering"
    holds the same keys for each clustering.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] == 0:
        raise UserError(f"cluster_statistics needs (H, N) labels with N > 0, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise UserError("cluster_statistics needs non-negative integer cluster ids")
    labels = labels.astype(np.int64, copy=False)
    if true_labels is not None:
        true_labels = np.asarray(true_labels)
        if true_labels.shape != (labels.shape[1],):
            raise UserError(
                f"true_labels has shape {true_labels.shape}, expected ({labels.shape[1]},) to match labels"
            )
    return _summary([_one_clustering(pred, true_labels) for pred in labels], labels.shape[1])


def _summary(per_clustering: list[dict], num_points: int) -> dict:
    result: dict = {"num_clusterings": float(len(per_clustering)), "num_points": float(num_points)}
    for key in per_clustering[0]:
        result[key] = statistics.fmean(stats[key] for stats in per_clustering)
    result["per_clustering"] = per_clustering
    return result


def sharded_statistics(labels, true_labels: np.ndarray | None, dist) -> dict:
    """`cluster_statistics` of (H, N) labels (a tensor, the same on every rank), clustering h
    computed on rank h mod W and the results gathered on every rank (`dist`: a DistInfo)."""
    import torch.distributed as tdist

    labels = labels.cpu().numpy().astype(np.int64, copy=False)
    mine = {h: _one_clustering(labels[h], true_labels) for h in range(dist.rank, labels.shape[0], dist.world_size)}
    if dist.enabled:
        parts: list = [None] * dist.world_size
        tdist.all_gather_object(parts, mine)
        mine = {h: stats for part in parts for h, stats in part.items()}
    return _summary([mine[h] for h in range(labels.shape[0])], labels.shape[1])




def cluster_gallery(cluster_labels: np.ndarray, true_labels: np.ndarray, clusters: int = 6, members: int = 8,
                    min_size: int = 8) -> list[dict]:
    """Half the `clusters` purest and half the least pure clusters of one clustering (with at
    least `min_size` images), each {"cluster", "size", "purity" (%), "majority" (class),
    "members": the first `members` image indices}."""
    found = []
    for c in np.unique(cluster_labels):
        ids = np.flatnonzero(cluster_labels == c)
        if len(ids) < min_size:
            continue
        counts = np.bincount(true_labels[ids])
        found.append({"cluster": int(c), "size": int(len(ids)), "purity": float(100.0 * counts.max() / len(ids)),
                      "majority": int(counts.argmax()), "members": ids[:members].tolist()})
    found.sort(key=lambda d: (-d["purity"], d["cluster"]))
    top = clusters - clusters // 2
    return found[:top] + found[max(top, len(found) - clusters // 2):]
