"""The InstDisc weighted kNN classifier, and the transfer stage's kNN evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier

from localagg.data.augment import AugmentSpec, evaluate_transform
from localagg.data.datasets import ArrayImages
from localagg.knn import knn_scores, knn_top1
from localagg.evaluation.transfer import knn_eval, network_space_fn
from localagg.models.backbone import EmbeddingNet

from .conftest import gloo_worker


def clustered_points(n, num_classes=5, dim=16, seed=0):
    """L2-normalised float64 points around one random centre per class, with overlap."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    points = centres[labels] + 1.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return F.normalize(points, dim=1), labels


@pytest.mark.parametrize("k", [1, 7, 50])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_matches_sklearn_cosine_knn_with_exponential_weights(k, temperature):
    bank, bank_labels = clustered_points(300, seed=1)
    queries, query_labels = clustered_points(120, seed=2)

    def weights(distances):  # sklearn passes cosine distances d = 1 - cos
        return np.exp((1.0 - distances) / temperature)

    ref = KNeighborsClassifier(n_neighbors=k, weights=weights, metric="cosine", algorithm="brute")
    ref.fit(bank.numpy(), bank_labels.numpy())
    expected = ref.predict(queries.numpy())

    ours = knn_scores(queries, bank, bank_labels, 5, k=k, temperature=temperature).argmax(1).numpy()
    assert 0 < (ours != query_labels.numpy()).sum()  # the set is not trivially separable
    np.testing.assert_array_equal(ours, expected)
    accuracy = 100.0 * (expected == query_labels.numpy()).mean()
    assert knn_top1(queries, query_labels, bank, bank_labels, 5, k=k, temperature=temperature) == pytest.approx(accuracy)


def test_knn_eval_scores_the_embedding_and_the_normalised_pooled_conv5():
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    images = rng.integers(0, 256, (40, 32, 32), dtype=np.uint8)
    images[labels == 1, :16] //= 4  # some class structure, not a perfect one
    train, val = ArrayImages(images[:24], labels[:24]), ArrayImages(images[24:], labels[24:])
    torch.manual_seed(0)
    model = EmbeddingNet("resnet18", "imagenet", 8)
    spec = AugmentSpec(crop_size=32)
    got = knn_eval(network_space_fn(model, spec, "cpu"), train, val, 4, k=5, temperature=0.1, batch_size=10,
                   device="cpu")["knn"]

    with torch.no_grad():
        def feats(ds):
            x = evaluate_transform(ds.batch(torch.arange(len(ds)))[0], spec)
            return model(x), F.normalize(model.pooled(x), dim=1)

        (te, tc), (ve, vc) = feats(train), feats(val)
    assert got["embedding"] == pytest.approx(knn_top1(ve, val.labels, te, train.labels, 4, k=5, temperature=0.1))
    assert got["conv5"] == pytest.approx(knn_top1(vc, val.labels, tc, train.labels, 4, k=5, temperature=0.1))
    assert set(got) == {"embedding", "conv5"}


def test_the_running_top_k_over_chunks_equals_the_top_k_of_the_whole_bank(monkeypatch):
    """Fed in uneven batches, merged in small blocks, in float64: the same neighbours and
    similarities as one dense product of the whole bank."""
    import localagg.knn as knn

    monkeypatch.setattr(knn, "BANK_CHUNK", 37)
    g = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(50, 16, generator=g, dtype=torch.float64), dim=1)
    bank = F.normalize(torch.randn(500, 16, generator=g, dtype=torch.float64), dim=1)
    expected_v, expected_i = (queries @ bank.T).topk(20, dim=1)
    top = knn.TopK(queries, 20, query_chunk=7)
    start = 0
    for size in (1, 60, 3, 200, 236):
        top.feed(bank[start : start + size], start)
        start += size
    top.flush()
    assert torch.equal(top.indices, expected_i)
    torch.testing.assert_close(top.values, expected_v, rtol=0, atol=64 * torch.finfo(torch.float64).eps)
    labels = torch.arange(500) % 3
    expected_scores = torch.zeros(50, 3, dtype=torch.float64).scatter_add_(1, labels[expected_i], (expected_v / 0.1).exp())
    torch.testing.assert_close(top.scores(labels, 3, 0.1), expected_scores, rtol=1e-12, atol=0)


@gloo_worker
def _merge_worker(rank, init, queries, bank, out):
    import localagg.knn as knn
    from localagg.runtime.distributed import shard

    from .conftest import init_gloo

    init_gloo(init, rank, 2)
    part = shard(bank.shape[0], rank, 2)
    top = knn.TopK(queries, 20)
    top.feed(bank[part.start : part.stop], part.start)
    top.merge()
    torch.save({"values": top.values, "indices": top.indices}, out / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_each_scanning_half_the_bank_merge_to_the_whole_banks_top_k(tmp_path):
    import torch.multiprocessing as mp

    from .conftest import rendezvous

    g = torch.Generator().manual_seed(1)
    queries = F.normalize(torch.randn(30, 8, generator=g, dtype=torch.float64), dim=1)
    bank = F.normalize(torch.randn(301, 8, generator=g, dtype=torch.float64), dim=1)
    mp.spawn(_merge_worker, args=(rendezvous(tmp_path), queries, bank, tmp_path), nprocs=2, join=True)
    expected_v, expected_i = (queries @ bank.T).topk(20, dim=1)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["indices"], expected_i)
        torch.testing.assert_close(got["values"], expected_v, rtol=0, atol=64 * torch.finfo(torch.float64).eps)


@pytest.mark.parametrize("kind, n", [("knn_eval_network", 2048), ("knn_eval_pixels", 8192),
                                     ("supervised_monitor", 4096)])
def test_peak_memory_of_the_streamed_knn_is_flat_in_the_training_set_size(kind, n):
    """Measured in fresh processes at N and 4N (tests/memory_probe.py): the pass adds the same
    peak memory at both, where holding the training features would add (4N - N) x D x 4 bytes,
    asserted far above the margin so that the test can fail."""
    import subprocess
    import sys

    from .memory_probe import FEATURE_DIMS

    def peak(size: int) -> int:
        out = subprocess.run([sys.executable, "-m", "tests.memory_probe", kind, str(size)], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
        return int(out.stdout.strip().splitlines()[-1])

    small, large = peak(n), peak(4 * n)
    margin = 4 * 2**20
    assert large - small < margin, (small, large)
    assert 3 * n * FEATURE_DIMS[kind] * 4 > 3 * margin
