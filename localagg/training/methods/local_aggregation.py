"""Local Aggregation (Zhuang, Zhai, Yamins 2019) from the IR model and bank
(objectives/local_aggregation.py has the loss).

    B_i = top-k rows of the bank by v_i . v_j              background neighbours
    C_i = union over h of i's cluster in k-means h        close neighbours, H k-means of m
    L_i = -log( sum_{B_i ∩ C_i} exp(v_i . v_j / tau) / sum_{B_i} exp(v_i . v_j / tau) )

The bank is re-clustered at the start of every epoch (H k-means of m clusters, seeds
kmeans_seed + h). `kmeans_backend`: torch (localagg.kmeans: every rank assigns its shard of
the bank, sums are all-reduced; the GPU path, seconds per clustering at the paper's size) or
faiss (faiss's k-means on rank 0, labels broadcast: the CPU path, bit-reproducible); auto =
torch on CUDA, faiss on the CPU. The cluster statistics of clustering h are computed on rank
h mod W and gathered, so no rank works alone while the others wait.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from ...objectives import local_aggregation_loss
from ...runtime.distributed import broadcast
from ..config import TrainingConfig
from .base import BankMethod


class LAConfig(TrainingConfig):
    """Local Aggregation: background neighbours k, H k-means of m clusters on the bank."""

    k: int = Field(4096, ge=1, description="background neighbours (top-k of the bank)")
    num_kmeans: int = Field(10, ge=1, description="H: k-means runs with different seeds")
    num_clusters: int = Field(30000, ge=2, description="m: clusters per k-means")
    kmeans_iterations: int = Field(20, ge=1)
    kmeans_seed: int = Field(1234, description="clustering h uses kmeans_seed + h")
    kmeans_backend: Literal["auto", "torch", "faiss"] = Field(
        "auto", description="torch: sharded over the ranks' devices; faiss: on rank 0; auto: torch on CUDA, faiss on CPU")


class LocalAggregation(BankMethod):
    name: ClassVar[str] = "la"
    section: ClassVar[str] = "pretrain_la"
    cfg: LAConfig
    cluster_labels: torch.Tensor | None = None  # (H, N) int64, from the last clustering

    def size_limits(self) -> dict[str, int]:
        return {**super().size_limits(), "k": self.cfg.k, "num_clusters": self.cfg.num_clusters}

    def backend(self, run) -> str:
        """The k-means that runs: `kmeans_backend`, with auto resolved for this device."""
        choice = self.cfg.kmeans_backend
        return ("torch" if run.device.type == "cuda" else "faiss") if choice == "auto" else choice

    def begin_epoch(self, run, epoch: int) -> dict[str, float]:
        """H k-means of the bank; every rank ends with the labels (H, N). Returns cluster statistics."""
        from ... import clustering  # faiss is only needed here

        cfg = self.cfg
        H, N = cfg.num_kmeans, run.num_items
        t0 = time.perf_counter()
        if self.backend(run) == "torch":
            from ...kmeans import kmeans

            bank = self.bank.memory.float()
            labels = torch.stack([kmeans(bank, cfg.num_clusters, cfg.kmeans_iterations, cfg.kmeans_seed + h,
                                         dist=run.dist)[0] for h in range(H)])
        else:
            labels = torch.empty(H, N, dtype=torch.long, device=run.device)
            if run.dist.is_main:
                found = clustering.run_kmeans(self.bank.memory.cpu().numpy(), cfg.num_clusters, H,
                                              iterations=cfg.kmeans_iterations, seed=cfg.kmeans_seed)
                labels.copy_(torch.from_numpy(found))
            labels = broadcast(labels)
        seconds = time.perf_counter() - t0
        self.cluster_labels = labels
        stats = clustering.sharded_statistics(labels, run.train.labels.numpy(), run.dist)
        stats = {f"cluster_{k}": float(v) for k, v in stats.items()
                 if isinstance(v, (int, float)) and k not in ("num_clusterings", "num_points")}
        stats["kmeans_seconds"] = seconds
        return stats

    def epoch_text(self, metrics: dict[str, float]) -> str:
        """'NMI 0.393, purity 66.4%, k-means 0.41 s': the epoch's clustering (made at its start)."""
        parts = [f"NMI {metrics['cluster_nmi']:.3f}" if "cluster_nmi" in metrics else "",
                 f"purity {100 * metrics['cluster_purity']:.1f}%" if "cluster_purity" in metrics else "",
                 f"k-means {metrics['kmeans_seconds']:.2f} s" if "kmeans_seconds" in metrics else ""]
        return ", ".join(p for p in parts if p)

    def loss(self, out: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, step_seed: int) -> torch.Tensor:
        return local_aggregation_loss(out.to(self.bank.memory.dtype), idx, self.bank.memory, self.cluster_labels, k=self.cfg.k,
                                      temperature=self.cfg.temperature)

    def state_dict(self) -> dict[str, Any]:
        labels = self.cluster_labels.cpu() if self.cluster_labels is not None else None
        return {**super().state_dict(), "cluster_labels": labels}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        super().load_state_dict(state, device)
        labels = state["cluster_labels"]
        self.cluster_labels = labels.to(device) if labels is not None else None

    def views(self, run) -> dict:
        """A gallery of the last clustering's first k-means, for the report."""
        from ...clustering import cluster_gallery

        if self.cluster_labels is None:
            return {}
        return {"clusters": cluster_gallery(self.cluster_labels[0].cpu().numpy(), run.train.labels.numpy())}
