"""Local Aggregation loss (Zhuang, Zhai, Yamins, ICCV 2019, arXiv 1903.12355).

For a batch sample b with image index i = indices[b] and embedding v_i:

    B_i = the k bank rows j with the largest v_j . v_i   (background neighbours; row i itself
          is not excluded)
    C_i = union over h = 1..H of { j : labels[h, j] == labels[h, i] }   (close neighbours)

    L_i = -log( sum_{j in B_i ∩ C_i} exp(v_j . v_i / tau) / sum_{j in B_i} exp(v_j . v_i / tau) )
    loss = mean_b L_i

Only the embeddings v_i receive a gradient; the bank rows v_j are constants.

Deviation from the official code: it computes -log(ratio + 1e-7) (after dividing both sums
by a constant Z that cancels). We compute the exact log-ratio, clamped from below:

    L_i = -max(log ratio_i, log 1e-7)

which differs from the official value by at most about 1e-7 / ratio_i where ratio_i > 1e-7,
and where B_i ∩ C_i is empty (ratio 0) equals the official value -log(1e-7) exactly, with a
zero gradient and no NaN or inf.

Cost: the dense similarities (B, N) and their top-k are computed without autograd; the
backward needs only the (B, k) top-k rows, so it is O(B k D) (an embedding_bag over the
top-k indices) instead of O(B N D) through the dense matmul.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

LOG_EPS = math.log(1e-7)


class _TopKInnerProducts(torch.autograd.Function):
    """values[b, t] = embeddings[b] . bank[idx[b, t]], the k largest; grad to embeddings only."""

    @staticmethod
    def forward(ctx, embeddings: torch.Tensor, bank: torch.Tensor, k: int):
        # embeddings (B, D), bank (N, D), same dtype; autocast is off (see caller)
        sims = embeddings @ bank.T  # (B, N)
        values, idx = sims.topk(k, dim=1)  # (B, k), (B, k)
        ctx.save_for_backward(bank, idx)
        ctx.mark_non_differentiable(idx)
        return values, idx

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_values: torch.Tensor, grad_idx: torch.Tensor | None):
        bank, idx = ctx.saved_tensors
        with torch.autocast(device_type=bank.device.type, enabled=False):
            # d values[b, t] / d embeddings[b] = bank[idx[b, t]], so
            # grad_embeddings[b] = sum_t grad_values[b, t] * bank[idx[b, t]]   (B, D)
            grad_embeddings = F.embedding_bag(
                idx, bank, per_sample_weights=grad_values.to(bank.dtype), mode="sum"
            )
        return grad_embeddings, None, None


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def _check_inputs(embeddings, indices, memory_bank, cluster_labels, k, temperature) -> None:
    if embeddings.dim() != 2 or not embeddings.dtype.is_floating_point:
        raise ValueError(
            f"local_aggregation_loss: embeddings must be a (B, D) float tensor, got shape "
            f"{tuple(embeddings.shape)} dtype {embeddings.dtype}"
        )
    if memory_bank.dim() != 2 or not memory_bank.dtype.is_floating_point:
        raise ValueError(
            f"local_aggregation_loss: memory_bank must be a (N, D) float tensor, got shape "
            f"{tuple(memory_bank.shape)} dtype {memory_bank.dtype}"
        )
    if memory_bank.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"local_aggregation_loss: embedding dimension {embeddings.shape[1]} does not match "
            f"the memory bank's {memory_bank.shape[1]}"
        )
    if indices.dim() != 1 or indices.shape[0] != embeddings.shape[0] or not _is_integer(indices):
        raise ValueError(
            f"local_aggregation_loss: indices must be a 1-D integer tensor of length "
            f"B={embeddings.shape[0]}, got shape {tuple(indices.shape)} dtype {indices.dtype}"
        )
    if (
        cluster_labels.dim() != 2
        or cluster_labels.shape[1] != memory_bank.shape[0]
        or not _is_integer(cluster_labels)
    ):
        raise ValueError(
            f"local_aggregation_loss: cluster_labels must be an (H, N) integer tensor with "
            f"N={memory_bank.shape[0]}, got shape {tuple(cluster_labels.shape)} dtype "
            f"{cluster_labels.dtype}"
        )
    if cluster_labels.shape[0] < 1:
        raise ValueError(
            "local_aggregation_loss: cluster_labels has H=0 clusterings; before the first "
            "clustering every image is its own cluster: pass torch.arange(N)[None]"
        )
    devices = {embeddings.device, indices.device, memory_bank.device, cluster_labels.device}
    if len(devices) != 1:
        raise ValueError(
            f"local_aggregation_loss: all inputs must be on one device, got "
            f"{sorted(str(d) for d in devices)}"
        )
    if k < 1:
        raise ValueError(f"local_aggregation_loss: k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"local_aggregation_loss: temperature must be > 0, got {temperature}")


def local_aggregation_loss(
    embeddings: torch.Tensor,
    indices: torch.Tensor,
    memory_bank: torch.Tensor,
    cluster_labels: torch.Tensor,
    k: int = 4096,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Local Aggregation loss, mean over the batch (formula and deviation: module docstring).

    Args:
        embeddings: (B, D) float, the L2-normalised v_i (normalised by the caller).
        indices: (B,) integer, the bank row i of each sample.
        memory_bank: (N, D) float, the bank rows v_j; detached here, it gets no gradient.
        cluster_labels: (H, N) integer, labels[h, j] = cluster of row j in clustering h.
        k: number of background neighbours; k > N means k = N.
        temperature: tau.

    Returns:
        Scalar tensor in the embeddings' dtype promoted to at least float32; the gradient
        flows to `embeddings` only.

    The math runs in float32 (float64 when the inputs are float64) with autocast disabled,
    so it is the same inside and outside torch.autocast; the gradient comes back in the
    embeddings' dtype. The backward reads the bank rows, so update the bank in place
    (`MemoryBank.update`) only after `loss.backward()`; autograd raises if it changed before.
    """
    _check_inputs(embeddings, indices, memory_bank, cluster_labels, k, temperature)
    k = min(int(k), memory_bank.shape[0])
    dtype = torch.promote_types(
        torch.promote_types(embeddings.dtype, memory_bank.dtype), torch.float32
    )
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        bank = memory_bank.detach().to(dtype)  # (N, D)
        topk_sims, topk_idx = _TopKInnerProducts.apply(embeddings.to(dtype), bank, k)  # (B, k)
        logits = topk_sims / temperature  # (B, k)

        batch, num_clusterings = topk_idx.shape[0], cluster_labels.shape[0]
        own = cluster_labels.index_select(1, indices.long())  # (H, B): each image's clusters
        neighbour = cluster_labels.index_select(1, topk_idx.view(-1))  # (H, B*k)
        neighbour = neighbour.view(num_clusterings, batch, k)  # (H, B, k): its top-k rows'
        close = (neighbour == own.unsqueeze(2)).any(dim=0)  # (B, k): j in B_i ∩ C_i
        has_close = close.any(dim=1)  # (B,)

        log_denominator = torch.logsumexp(logits, dim=1)  # (B,)
        # A row with no close neighbour would make logsumexp(all -inf) = -inf with a NaN
        # gradient; give it the unmasked logits and discard the result with torch.where.
        masked = logits.masked_fill(~close & has_close.unsqueeze(1), -math.inf)  # (B, k)
        log_numerator = torch.logsumexp(masked, dim=1)  # (B,)
        log_ratio = torch.where(
            has_close, log_numerator - log_denominator, torch.full_like(log_denominator, LOG_EPS)
        )  # (B,)
        return -log_ratio.clamp_min(LOG_EPS).mean()
