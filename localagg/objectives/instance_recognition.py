"""Instance Recognition loss (Wu, Xiong, Yu, Lin, CVPR 2018: "Unsupervised Feature Learning
via Non-Parametric Instance Discrimination"; reference code zhirongw/lemniscate.pytorch,
NCEAverage + NCECriterion). It is the warm start of Local Aggregation.

Each image is its own class; the class weights are the memory bank rows v_j (constants, no
gradient). For a batch sample b with image index i = indices[b] and embedding v_i:

NCE (K = num_negatives > 0 noise rows n_1..n_K drawn uniformly, P_n = 1/N):

    j in [i, n_1, ..., n_K]                                          (B, K+1) indices
    x_j = exp(v_j . v_i / tau) / Z                                   (B, K+1)
    P_pos     = x_i / (x_i + K P_n + eps)                            (B,)
    P_noise_j = K P_n / (x_j + K P_n + eps),  j = n_1..n_K           (B, K)
    loss = -(1/B) sum_b [ log P_pos + sum_j log P_noise_j ]

    eps = 1e-7 is lemniscate's NCECriterion constant, kept where it put it (the two
    denominators) and nowhere else. The logs are evaluated in log space,
    log(x / (x + c)) = log x - logaddexp(log x, log c), which is the same formula without
    overflow.

    Z is estimated once, at the first forward, as lemniscate does:
    Z = mean(exp(v_j . v_i / tau) over the batch and the K+1 columns) * N, then fixed. It
    is the buffer `normalizer` (-1 until estimated), saved in the state_dict so that a
    resumed run keeps it. Under torch.distributed the first-batch mean is averaged over the
    ranks, so every rank uses the same Z. No gradient flows through Z.
    With `normalizer_per_item` given, Z = normalizer_per_item * N from the start and is never
    estimated: the authors' TF code fixes Z = 2876934.2 / 1281167 * N.

Full softmax (K = 0): loss = cross_entropy(v_i . bank.T / tau, i), mean over the batch, no Z.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .local_aggregation import _is_integer

NCE_EPS = 1e-7  # lemniscate.pytorch lib/NCECriterion.py


class InstanceRecognitionLoss(torch.nn.Module):
    """NCE (num_negatives > 0) or full-softmax (num_negatives = 0) instance discrimination.

    Args:
        num_items: N, the number of bank rows (training images).
        num_negatives: K noise rows per sample; 0 gives the full softmax over the bank.
        temperature: tau.
        normalizer_per_item: fix Z = normalizer_per_item * N instead of estimating it.
    """

    normalizer: torch.Tensor

    def __init__(self, num_items: int, num_negatives: int = 4096, temperature: float = 0.07,
                 normalizer_per_item: float | None = None):
        super().__init__()
        if num_items < 1:
            raise ValueError(f"InstanceRecognitionLoss: num_items must be >= 1, got {num_items}")
        if num_negatives < 0:
            raise ValueError(
                f"InstanceRecognitionLoss: num_negatives must be >= 0, got {num_negatives}"
            )
        if not temperature > 0:
            raise ValueError(
                f"InstanceRecognitionLoss: temperature must be > 0, got {temperature}"
            )
        self.num_items = int(num_items)
        self.num_negatives = int(num_negatives)
        self.temperature = float(temperature)
        if normalizer_per_item is not None and not normalizer_per_item > 0:
            raise ValueError(f"InstanceRecognitionLoss: normalizer_per_item must be > 0, got {normalizer_per_item}")
        z = -1.0 if normalizer_per_item is None else float(normalizer_per_item) * self.num_items
        self.register_buffer("normalizer", torch.tensor(z, dtype=torch.float64))
        # whether Z is known, kept on the host so that a step never reads the buffer from the GPU
        self._z_known = normalizer_per_item is not None
        self.register_load_state_dict_post_hook(_after_load)

    def extra_repr(self) -> str:
        return (
            f"num_items={self.num_items}, num_negatives={self.num_negatives}, "
            f"temperature={self.temperature}"
        )

    def forward(
        self,
        embeddings: torch.Tensor,
        indices: torch.Tensor,
        memory_bank: torch.Tensor,
        noise_indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean loss over the batch (formula: module docstring).

        Args:
            embeddings: (B, D) float, L2-normalised v_i; the only input with a gradient.
            indices: (B,) integer bank rows i.
            memory_bank: (N, D) float bank rows; detached here.
            noise_indices: (B, K) integer noise rows; drawn uniformly from [0, N) with
                torch.randint(generator=generator) when None. Under DDP the trainer passes
                noise drawn for the global batch so that the ranks together equal one process.
            generator: torch.Generator for the noise draw (ignored when noise_indices given).
        """
        self._check(embeddings, indices, memory_bank, noise_indices)
        batch, k = embeddings.shape[0], self.num_negatives
        dtype = torch.promote_types(
            torch.promote_types(embeddings.dtype, memory_bank.dtype), torch.float32
        )
        device = embeddings.device
        with torch.autocast(device_type=device.type, enabled=False):
            bank = memory_bank.detach().to(dtype)  # (N, D)
            emb = embeddings.to(dtype)  # (B, D)
            indices = indices.long()
            if k == 0:
                logits = emb @ bank.T / self.temperature  # (B, N)
                return F.cross_entropy(logits, indices)

            if noise_indices is None:
                draw_device = generator.device if generator is not None else device
                noise_indices = torch.randint(
                    self.num_items, (batch, k), generator=generator, device=draw_device
                )
            columns = torch.cat([indices[:, None], noise_indices.to(device).long()], dim=1)
            weights = bank[columns]  # (B, K+1, D)
            scores = torch.bmm(weights, emb.unsqueeze(2)).squeeze(2) / self.temperature
            # scores (B, K+1) = v_j . v_i / tau; column 0 is the positive
            if not self._z_known:
                self._estimate_normalizer(scores)
            log_x = scores - self.normalizer.to(device=device, dtype=dtype).log()  # (B, K+1)
            noise_mass = k / self.num_items  # K * P_n
            log_c = torch.tensor(math.log(noise_mass + NCE_EPS), dtype=dtype, device=device)
            log_p_pos = log_x[:, 0] - torch.logaddexp(log_x[:, 0], log_c)  # (B,)
            log_p_noise = math.log(noise_mass) - torch.logaddexp(log_x[:, 1:], log_c)  # (B, K)
            return -(log_p_pos.sum() + log_p_noise.sum()) / batch

    @torch.no_grad()
    def _estimate_normalizer(self, scores: torch.Tensor) -> None:
        """Z = mean(exp(scores)) * N, the mean averaged over the ranks when distributed."""
        mean = scores.exp().mean()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(mean, op=dist.ReduceOp.SUM)
            mean = mean / dist.get_world_size()
        self.normalizer.copy_(mean.to(torch.float64) * self.num_items)
        self._z_known = True

    def _check(self, embeddings, indices, memory_bank, noise_indices) -> None:
        name = type(self).__name__
        if embeddings.dim() != 2 or not embeddings.dtype.is_floating_point:
            raise ValueError(
                f"{name}: embeddings must be a (B, D) float tensor, got shape "
                f"{tuple(embeddings.shape)} dtype {embeddings.dtype}"
            )
        if memory_bank.dim() != 2 or not memory_bank.dtype.is_floating_point:
            raise ValueError(
                f"{name}: memory_bank must be a (N, D) float tensor, got shape "
                f"{tuple(memory_bank.shape)} dtype {memory_bank.dtype}"
            )
        if memory_bank.shape[0] != self.num_items:
            raise ValueError(
                f"{name}: memory_bank has {memory_bank.shape[0]} rows but the loss was built "
                f"for num_items={self.num_items}"
            )
        if memory_bank.shape[1] != embeddings.shape[1]:
            raise ValueError(
                f"{name}: embedding dimension {embeddings.shape[1]} does not match the memory "
                f"bank's {memory_bank.shape[1]}"
            )
        batch = embeddings.shape[0]
        if indices.dim() != 1 or indices.shape[0] != batch or not _is_integer(indices):
            raise ValueError(
                f"{name}: indices must be a 1-D integer tensor of length B={batch}, "
                f"got shape {tuple(indices.shape)} dtype {indices.dtype}"
            )
        if noise_indices is None:
            return
        if self.num_negatives == 0:
            raise ValueError(f"{name}: noise_indices given but num_negatives=0 (full softmax)")
        expected = (batch, self.num_negatives)
        if tuple(noise_indices.shape) != expected or not _is_integer(noise_indices):
            raise ValueError(
                f"{name}: noise_indices must be an integer tensor of shape (B, K) = {expected}, "
                f"got shape {tuple(noise_indices.shape)} dtype {noise_indices.dtype}"
            )


def _after_load(module: InstanceRecognitionLoss, incompatible_keys) -> None:
    """A loaded state knows Z when its buffer holds one (-1: not estimated yet)."""
    module._z_known = bool(module.normalizer.item() >= 0)
