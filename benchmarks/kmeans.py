"""Cost of one faiss k-means iteration against the floor it cannot beat, and scikit-learn's.

A Lloyd iteration must at least assign every row: the (N, D) x (D, m) float32 GEMM and an
argmin over its (N, m) result. That pair is the floor, timed with numpy and with torch, the
faster counting. faiss k-means (as `localagg.clustering.run_kmeans` calls it: no
subsampling, plain L2) and scikit-learn's KMeans (lloyd, n_init=1, tol=0, started from given
centroids so k-means++ is not timed) run on the same L2-normalised Gaussian rows, in the
same process, with the same number of threads. Per iteration: faiss = training time /
iterations; scikit-learn = fit time / n_iter_ (its fit ends with one more assignment, so
this slightly overstates it).

Each library brings its own BLAS (faiss-cpu, numpy and scipy, used by scikit-learn, each
bundle an OpenBLAS; torch uses MKL); "thread_pools" lists them. faiss computes distances in
row blocks while the floor writes the whole (N, m) matrix, so faiss can come out below the
floor (ratio < 1) when memory traffic, not arithmetic, dominates.

Defaults: N = 100,000, D = 128, m = 1,000, 20 iterations for both, 3 rounds: about 40 s on
2 idle CPU cores.

Run: python -m benchmarks.kmeans   (prints the dict; writes no file)
"""

from __future__ import annotations

import time
from pathlib import Path

import faiss
import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info

from localagg.clustering import faiss_has_gpu


def _seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def bench_kmeans(
    num_points: int = 100_000,
    dim: int = 128,
    num_clusters: int = 1000,
    iterations: int = 20,
    sklearn_iterations: int | None = None,
    use_gpu: bool | None = None,
    repeats: int = 3,
    seed: int = 0,
) -> dict:
    """Seconds per k-means iteration for faiss and scikit-learn, and the GEMM + argmin floor.

    Each of the `repeats` rounds times, in turn, the floor (numpy, torch), one faiss training
    of `iterations` iterations and one scikit-learn fit of `sklearn_iterations` (default:
    `iterations`; lower it when scikit-learn is too slow at large sizes); the fastest round
    of each is reported, since load from other processes only ever adds time.

    Returns faiss_seconds_per_iter, gemm_floor_seconds (the faster of gemm_numpy_seconds
    and gemm_torch_seconds), sklearn_seconds_per_iter, ratio_faiss_vs_floor,
    ratio_sklearn_vs_faiss and the settings. With use_gpu the faiss timing is on the GPU
    while the floor and scikit-learn stay on the CPU, so the ratios then compare devices.
    """
    if use_gpu is None:
        use_gpu = faiss_has_gpu()
    sklearn_iterations = iterations if sklearn_iterations is None else sklearn_iterations
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_points, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # (N, D), rows like a memory bank
    init = np.ascontiguousarray(x[rng.choice(num_points, num_clusters, replace=False)])  # (m, D)
    x_torch, init_torch = torch.from_numpy(x), torch.from_numpy(init)
    threads = faiss.omp_get_max_threads()
    torch.set_num_threads(threads)

    def gemm_numpy() -> None:
        np.argmin(x @ init.T, axis=1)  # (N, m) -> (N,)

    def gemm_torch() -> None:
        torch.mm(x_torch, init_torch.T).argmin(dim=1)  # (N, m) -> (N,)

    def train_faiss() -> None:
        kmeans = faiss.Kmeans(
            dim, num_clusters, niter=iterations, seed=seed, max_points_per_centroid=num_points,
            min_points_per_centroid=1, gpu=bool(use_gpu),
        )
        kmeans.train(x)

    sklearn_kmeans = KMeans(
        num_clusters, init=init, n_init=1, max_iter=sklearn_iterations, tol=0.0,
        algorithm="lloyd", random_state=seed,
    )
    gemm_numpy()
    gemm_torch()
    times: dict[str, list[float]] = {"numpy": [], "torch": [], "faiss": [], "sklearn": []}
    for _ in range(repeats):
        times["numpy"].append(_seconds(gemm_numpy))
        times["torch"].append(_seconds(gemm_torch))
        times["faiss"].append(_seconds(train_faiss) / iterations)
        # n_iter_ < max_iter only if the labels stop changing first
        times["sklearn"].append(_seconds(lambda: sklearn_kmeans.fit(x)) / sklearn_kmeans.n_iter_)
    best = {name: min(values) for name, values in times.items()}
    floor = min(best["numpy"], best["torch"])

    return {
        "faiss_seconds_per_iter": best["faiss"],
        "gemm_floor_seconds": floor,
        "gemm_numpy_seconds": best["numpy"],
        "gemm_torch_seconds": best["torch"],
        "sklearn_seconds_per_iter": best["sklearn"],
        "ratio_faiss_vs_floor": best["faiss"] / floor,
        "ratio_sklearn_vs_faiss": best["sklearn"] / best["faiss"],
        "num_points": num_points,
        "dim": dim,
        "num_clusters": num_clusters,
        "faiss_iterations": iterations,
        "sklearn_iterations": int(sklearn_kmeans.n_iter_),
        "repeats": repeats,
        "faiss_gpu": bool(use_gpu),
        "threads": threads,
        "thread_pools": sorted(
            f"{Path(info['filepath']).name}:{info['num_threads']}" for info in threadpool_info()
        ),
    }


if __name__ == "__main__":
    print(bench_kmeans())
