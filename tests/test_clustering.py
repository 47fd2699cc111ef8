"""k-means on the memory bank (faiss, official recipe) and cluster statistics."""

from __future__ import annotations

import json
import math

import faiss
import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from localagg.clustering import cluster_statistics, faiss_has_gpu, run_kmeans
from localagg.errors import UserError


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("LOCALAGG_NO_PROGRESS", "1")


def _blobs(num_blobs: int, per_blob: int = 100, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance Gaussian blobs centred on the vertices of a simplex, 20 apart per axis."""
    rng = np.random.default_rng(seed)
    centres = 20.0 * np.eye(num_blobs, dim)  # (num_blobs, dim)
    points = centres[:, None, :] + rng.standard_normal((num_blobs, per_blob, dim))
    return points.reshape(-1, dim).astype(np.float32), np.repeat(np.arange(num_blobs), per_blob)


def _ambiguous_bank(num_points: int = 4000, dim: int = 32, seed: int = 0) -> np.ndarray:
    """L2-normalised Gaussian rows, like a memory bank: no cluster structure to find."""
    x = np.random.default_rng(seed).standard_normal((num_points, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _nearest_cluster_mean(x: np.ndarray, pred: np.ndarray, num_clusters: int) -> np.ndarray:
    """For each row, the cluster whose mean over all its rows is nearest (L2)."""
    means = np.stack([x[pred == c].mean(axis=0) for c in range(num_clusters)])  # (m, dim)
    return np.argmin(((x[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)


def test_two_well_separated_blobs_are_recovered_with_every_row_at_its_nearest_centroid():
    # Two blobs: Lloyd from faiss's random init always recovers them (checked for 200 seeds).
    # With 3 or more blobs and m = blobs, two initial centroids can land in one blob and stay.
    x, truth = _blobs(2)
    labels = run_kmeans(x, num_clusters=2, num_kmeans=3)
    stats = cluster_statistics(labels, truth)
    assert stats["nmi"] == pytest.approx(1.0)
    assert stats["purity"] == 1.0
    for pred in labels:
        np.testing.assert_array_equal(pred, _nearest_cluster_mean(x, pred, 2))


def test_whole_bank_is_clustered_without_subsampling():
    # faiss by default trains on 256 * m sampled rows when N is larger. Trained on all rows
    # to convergence, each centroid is the mean of all rows assigned to it.
    x = np.random.default_rng(0).standard_normal((3000, 2)).astype(np.float32)
    labels = run_kmeans(x, num_clusters=3, iterations=200)
    np.testing.assert_array_equal(labels[0], _nearest_cluster_mean(x, labels[0], 3))


def test_overclustered_blobs_never_share_a_cluster():
    x, truth = _blobs(4)
    labels = run_kmeans(x, num_clusters=16, num_kmeans=2)
    stats = cluster_statistics(labels, truth)
    assert stats["purity"] == 1.0
    assert all(s["num_nonempty_clusters"] == 16 for s in stats["per_clustering"])


def test_labels_are_int64_of_shape_h_by_n_and_in_range():
    bank = _ambiguous_bank(500, 16)
    labels = run_kmeans(bank, num_clusters=7, num_kmeans=3, iterations=5)
    assert labels.shape == (3, 500)
    assert labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 7


def test_same_bank_and_seed_give_identical_labels():
    bank = _ambiguous_bank()
    first = run_kmeans(bank, num_clusters=50, num_kmeans=2)
    second = run_kmeans(bank.astype(np.float64), num_clusters=50, num_kmeans=2)
    np.testing.assert_array_equal(first, second)


def test_labels_do_not_depend_on_the_number_of_threads():
    bank = _ambiguous_bank()
    threads = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        single = run_kmeans(bank, num_clusters=50)
        faiss.omp_set_num_threads(max(4, threads))
        several = run_kmeans(bank, num_clusters=50)
    finally:
        faiss.omp_set_num_threads(threads)
    np.testing.assert_array_equal(single, several)


def test_clustering_h_uses_seed_plus_h_and_clusterings_differ():
    bank = _ambiguous_bank()
    labels = run_kmeans(bank, num_clusters=50, num_kmeans=3, seed=10)
    np.testing.assert_array_equal(labels[1:], run_kmeans(bank, num_clusters=50, num_kmeans=2, seed=11))
    # different partitions, not only renamed clusters
    assert normalized_mutual_info_score(labels[0], labels[1]) < 0.95


def test_more_clusters_than_rows_is_a_clear_error():
    with pytest.raises(UserError, match=r"m = 11 clusters > N = 10 rows: lower num_clusters"):
        run_kmeans(_ambiguous_bank(10, 4), num_clusters=11)


def test_bank_that_is_not_2d_is_a_clear_error():
    with pytest.raises(UserError, match="2-D"):
        run_kmeans(np.zeros(10, dtype=np.float32), num_clusters=2)


@pytest.mark.skipif(faiss_has_gpu(), reason="a GPU is present")
def test_asking_for_a_gpu_without_one_is_a_clear_error():
    with pytest.raises(UserError, match="use_gpu=False"):
        run_kmeans(_ambiguous_bank(100, 4), num_clusters=2, use_gpu=True)


def test_cluster_statistics_match_hand_computed_values():
    true = np.array([5, 5, 7, 7, 7, 9])
    labels = np.array(
        [
            [0, 0, 0, 1, 1, 3],  # sizes 3, 2, 1 (cluster 2 empty); majorities 5 (2), 7 (2), 9 (1)
            [0, 1, 2, 3, 4, 5],  # six singletons
        ]
    )
    stats = cluster_statistics(labels, true)
    first, second = stats["per_clustering"]
    assert first["num_nonempty_clusters"] == 3
    assert (first["size_min"], first["size_median"], first["size_mean"], first["size_max"]) == (1, 2, 2, 3)
    assert first["singleton_fraction"] == pytest.approx(1 / 3)
    assert first["purity"] == pytest.approx(5 / 6)
    assert second["singleton_fraction"] == 1.0 and second["purity"] == 1.0
    assert (second["size_min"], second["size_median"], second["size_max"]) == (1, 1, 1)
    # singletons: I(true; pred) = H(true), so NMI = 2 H(true) / (H(true) + log 6)
    h_true = -sum(p * math.log(p) for p in (2 / 6, 3 / 6, 1 / 6))
    assert second["nmi"] == pytest.approx(2 * h_true / (h_true + math.log(6)))
    assert stats["purity"] == pytest.approx((5 / 6 + 1) / 2)
    assert stats["singleton_fraction"] == pytest.approx((1 / 3 + 1) / 2)
    assert stats["num_nonempty_clusters"] == pytest.approx(4.5)
    assert stats["num_clusterings"] == 2 and stats["num_points"] == 6
    json.dumps(stats)


def test_cluster_statistics_without_true_labels_has_no_nmi_or_purity():
    stats = cluster_statistics(np.array([[0, 0, 1]]))
    assert "nmi" not in stats and "purity" not in stats
    assert stats["size_max"] == 2
