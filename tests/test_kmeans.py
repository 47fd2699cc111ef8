"""The sharded torch k-means: against a slow reference Lloyd's, against faiss on the same initial
centroids, 2 gloo processes against 1, faiss's split of empty clusters, and LA on 2 processes
with a clustering longer than the collective timeout."""

from __future__ import annotations

import datetime
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from localagg.kmeans import SPLIT_EPS, _split_empty, kmeans
from localagg.runtime.distributed import DistInfo

from .conftest import gloo_worker, init_gloo, make_arrays_dataset, rendezvous


def _blobs(n: int = 1200, d: int = 8, m: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n points around m centres (unit-variance noise at distance ~6), and one point of each
    blob as initial centroids (so no cluster empties)."""
    g = torch.Generator().manual_seed(seed)
    centres = 6 * torch.randn(m, d, generator=g)
    labels = torch.arange(n) % m
    x = centres[labels] + torch.randn(n, d, generator=g)
    return x, x[:m].clone()


def _reference_lloyd(x: np.ndarray, init: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Textbook Lloyd's in float64: squared distances to every centroid, argmin, means."""
    c = init.astype(np.float64).copy()
    x = x.astype(np.float64)
    for _ in range(iterations):
        a = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        for j in range(len(c)):
            if (a == j).any():
                c[j] = x[a == j].mean(0)
    return ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1), c


def test_sharded_kmeans_equals_a_reference_lloyds_on_the_same_initial_centroids():
    x, init = _blobs()
    labels, centroids = kmeans(x, 12, iterations=10, init=init)
    ref_labels, ref_centroids = _reference_lloyd(x.numpy(), init.numpy(), 10)
    np.testing.assert_array_equal(labels.numpy(), ref_labels)
    np.testing.assert_allclose(centroids.numpy(), ref_centroids, rtol=0, atol=1e-5)


def test_sharded_kmeans_agrees_with_faiss_on_the_same_initial_centroids():
    """faiss's k-means as the pipeline ran it (plain L2, no subsampling), from the same initial
    centroids: the same clustering, up to float32 near-ties."""
    import faiss

    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(3000, 16, generator=g), dim=1)  # bank-like rows, no blobs
    init = x[torch.randperm(3000, generator=g)[:40]].clone()
    labels, _ = kmeans(x, 40, iterations=20, init=init)
    km = faiss.Kmeans(16, 40, niter=20, seed=1234, max_points_per_centroid=3000, min_points_per_centroid=1)
    km.train(x.numpy(), init_centroids=init.numpy())
    _, theirs = km.index.search(x.numpy(), 1)
    agreement = float((labels.numpy() == theirs[:, 0]).mean())
    assert agreement >= 0.99, agreement


def test_an_empty_cluster_is_split_off_a_populated_one_as_faiss_does():
    centroids = torch.tensor([[1.0, 2.0, 3.0, 4.0], [9.0, 9.0, 9.0, 9.0], [5.0, 6.0, 7.0, 8.0]])
    counts = torch.tensor([10.0, 0.0, 30.0])
    split = _split_empty(centroids, counts, 40, torch.Generator().manual_seed(0))
    assert split == 1
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
    donor = [j for j in (0, 2) if torch.allclose(centroids[1], torch.tensor([[1.0, 2, 3, 4], [5.0, 6, 7, 8]])[j // 2]
                                                                    * (1 + SPLIT_EPS * sign))]
    assert len(donor) == 1  # the empty cluster took a populated one's centroid, pushed apart from it
    j = donor[0]
    original = torch.tensor([1.0, 2, 3, 4]) if j == 0 else torch.tensor([5.0, 6, 7, 8])
    torch.testing.assert_close(centroids[j], original * (1 - SPLIT_EPS * sign))
    x = torch.cat([torch.randn(20, 4) * 0.01 + torch.tensor([1.0, 2, 3, 4]),
                   torch.randn(20, 4) * 0.01 + torch.tensor([5.0, 6, 7, 8])])
    labels, _ = kmeans(x, 3, iterations=5, init=torch.tensor([[1.0, 2, 3, 4], [100.0, 100, 100, 100], [5.0, 6, 7, 8]]))
    assert torch.bincount(labels, minlength=3).min() > 0  # the far centroid came back, inside a blob


@gloo_worker
def _kmeans_worker(rank: int, init: str, x, out):
    init_gloo(init, rank, 2)
    labels, centroids = kmeans(x, 30, iterations=15, seed=7, dist=DistInfo(rank, 2, rank))
    torch.save({"labels": labels, "centroids": centroids}, out / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_each_assigning_half_the_bank_cluster_as_one_process(tmp_path):
    g = torch.Generator().manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(1001, 8, generator=g), dim=1)  # an odd N: unequal shards
    labels, centroids = kmeans(x, 30, iterations=15, seed=7)
    mp.spawn(_kmeans_worker, args=(rendezvous(tmp_path), x, tmp_path), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["labels"], labels)
        torch.testing.assert_close(got["centroids"], centroids, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ LA under a short collective timeout

TIMEOUT_S = 2
SLOW_S = 0.4  # per k-means assignment pass: 2 clusterings x 6 passes = 4.8 s, longer than the timeout


@gloo_worker
def _la_worker(rank: int, address: str, backend: str, data, init, out):
    """LA on 2 processes under the params' collective_timeout_s, with every k-means made slower
    than the timeout in total."""
    import localagg.clustering as clustering
    import localagg.kmeans as km
    from localagg.data.augment import AugmentSpec
    from localagg.models.config import ModelConfig
    from localagg.training.loop import Trainer
    from localagg.training.methods.local_aggregation import LAConfig, LocalAggregation

    slow_assign, slow_faiss = km._assign, clustering.run_kmeans

    def assign(*args, **kwargs):
        time.sleep(SLOW_S)
        return slow_assign(*args, **kwargs)

    def faiss_kmeans(*args, **kwargs):
        time.sleep(12 * SLOW_S)
        return slow_faiss(*args, **kwargs)

    km._assign, clustering.run_kmeans = assign, faiss_kmeans
    cfg = LAConfig(epochs=1, batch_size=8, lr=0.05, knn_k=5, device="cpu", threads=1, k=12, num_kmeans=2,
                   num_clusters=4, kmeans_iterations=5, num_processes=2, collective_timeout_s=TIMEOUT_S,
                   kmeans_backend=backend)
    aug = AugmentSpec(crop_size=16, crop_scale=(0.5, 1.0), color_jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0,
                      mean=(0.5,) * 3, std=(0.25,) * 3)
    init_gloo(address, rank, 2, timeout_s=cfg.collective_timeout_s)  # as init_distributed does
    try:
        t = Trainer(LocalAggregation(cfg), ModelConfig(arch="resnet18", stem="small", embedding_dim=16), aug, data,
                    out / f"ck{rank}", init_from=init, dist=DistInfo(rank, 2, rank))
        t.run()
        (out / f"done{rank}").write_text(str(t.state.epoch))
    except Exception as exc:  # the collective that timed out
        (out / f"error{rank}").write_text(f"{type(exc).__name__}: {exc}")
        # gloo_worker exits at once: as the stage does, it does not tear the failed group down


def _ir_export(tmp_path):
    from localagg.data.augment import AugmentSpec
    from localagg.models.config import ModelConfig
    from localagg.training.loop import Trainer
    from localagg.training.methods.instance_recognition import InstanceRecognition, IRConfig

    data = tmp_path / "object"
    make_arrays_dataset(data)
    aug = AugmentSpec(crop_size=16, crop_scale=(0.5, 1.0), color_jitter=(0.4, 0.4, 0.0, 0.0), grayscale_p=0.0,
                      mean=(0.5,) * 3, std=(0.25,) * 3)
    ir = Trainer(InstanceRecognition(IRConfig(epochs=1, batch_size=8, knn_k=5, num_negatives=16, device="cpu",
                                               threads=1)),
                 ModelConfig(arch="resnet18", stem="small", embedding_dim=16), aug, data, tmp_path / "ck_ir")
    ir.run()
    ir.export(tmp_path / "ir.pt")
    return data


@pytest.mark.slow
def test_la_on_two_processes_outlasts_a_clustering_longer_than_the_collective_timeout(tmp_path):
    """With the sharded k-means every rank clusters its share, so no collective waits long, and a
    run whose clusterings take longer than the timeout finishes. The same run with faiss on
    rank 0 (the other rank waiting in the broadcast) fails with the timeout: the test can fail."""
    data = _ir_export(tmp_path)
    init = tmp_path / "ir.pt"
    mp.spawn(_la_worker, args=(rendezvous(tmp_path), "torch", data, init, tmp_path), nprocs=2, join=True)
    errors = {r: (tmp_path / f"error{r}").read_text() for r in (0, 1) if (tmp_path / f"error{r}").exists()}
    assert not errors, errors
    assert [(tmp_path / f"done{r}").read_text() for r in (0, 1)] == ["1", "1"]
    (tmp_path / "faiss").mkdir()
    mp.spawn(_la_worker, args=(rendezvous(tmp_path), "faiss", data, init, tmp_path / "faiss"), nprocs=2, join=True)
    assert (tmp_path / "faiss" / "error1").exists(), "rank 1 should have timed out waiting for rank 0's k-means"


@pytest.fixture(autouse=True)
def _gloo_timeouts_are_real():
    assert datetime.timedelta(seconds=TIMEOUT_S) < datetime.timedelta(seconds=2 * 6 * SLOW_S)


def test_init_distributed_gives_the_process_group_the_params_timeout(monkeypatch):
    import torch.distributed as dist

    from localagg.runtime.distributed import init_distributed

    seen = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: seen.update(backend=backend, timeout=timeout))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    info = init_distributed("cpu", timeout_s=7)
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(seconds=7)} and (info.rank, info.world_size) == (1, 2)
