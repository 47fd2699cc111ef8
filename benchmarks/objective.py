"""Cost of the Local Aggregation objective against the floor it cannot beat.

The floor is what any exact LA step must do: the dense similarities `embeddings @ bank.T`
(B, N) and their `topk(k)`. The LA step measured here is the objective's forward and
backward plus the memory bank update. Both run in the same process on the same tensors,
warm-up first, then `repeats` interleaved timings each; the medians are compared.
Target: ratio = la_seconds / floor_seconds <= 1.3.

Run: python -m benchmarks.objective   (prints the dict; writes no file)
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from localagg.memory_bank import MemoryBank
from localagg.objectives import local_aggregation_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_la_objective(
    device: str = "cpu",
    num_items: int = 1_281_167,
    dim: int = 128,
    k: int = 4096,
    num_kmeans: int = 10,
    batch: int = 128,
    repeats: int = 5,
    num_clusters: int = 30_000,
    seed: int = 0,
) -> dict:
    """Median seconds of one LA step (loss forward + backward + bank update) and of the floor.

    Defaults are the paper's ImageNet scale: N = 1,281,167, D = 128, k = 4096,
    H = 10 clusterings of 30,000 clusters, batch 128. Returns la_seconds, floor_seconds,
    ratio and the settings.
    """
    dev = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    bank = MemoryBank(num_items, dim, normalize_init=True, generator=generator, device=dev)
    labels = torch.randint(num_clusters, (num_kmeans, num_items), generator=generator).to(dev)
    indices = torch.randint(num_items, (batch,), generator=generator).to(dev)
    embeddings = F.normalize(torch.randn(batch, dim, generator=generator), dim=1).to(dev)

    def floor_step() -> None:
        with torch.no_grad():
            (embeddings @ bank.memory.T).topk(k, dim=1)

    def la_step() -> None:
        leaf = embeddings.clone().requires_grad_(True)
        loss = local_aggregation_loss(leaf, indices, bank.memory, labels, k=k)
        loss.backward()
        bank.update(indices, leaf.detach())

    def timed(step) -> float:
        _sync(dev)
        start = time.perf_counter()
        step()
        _sync(dev)
        return time.perf_counter() - start

    floor_step()
    la_step()
    floor_times, la_times = [], []
    for _ in range(repeats):
        floor_times.append(timed(floor_step))
        la_times.append(timed(la_step))
    floor_seconds = statistics.median(floor_times)
    la_seconds = statistics.median(la_times)
    return {
        "la_seconds": la_seconds,
        "floor_seconds": floor_seconds,
        "ratio": la_seconds / floor_seconds,
        "device": str(dev),
        "num_items": num_items,
        "dim": dim,
        "k": k,
        "num_kmeans": num_kmeans,
        "num_clusters": num_clusters,
        "batch": batch,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    print(bench_la_objective())
