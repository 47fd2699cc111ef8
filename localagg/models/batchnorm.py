"""Batch norm over a chosen set of images: slices of one process's batch, or the global batch.

Where batch-norm statistics come from changes instance-discrimination training (the net can
tell batch-mates apart through them). The authors trained on one GPU, so BN saw the whole
batch of 128; with W data-parallel processes, plain BN sees 128 / W images each.

    GroupBatchNorm2d  one process normalises `groups` equal slices of its batch separately:
                      exactly what W processes with per-device BN do (tests compare the two)
    SyncBatchNorm2d   under torch.distributed, statistics over the global batch of every
                      process; with one process it is plain BatchNorm2d

SyncBatchNorm2d, per channel c, over the local activations x_r of rank r (n_r values each):

    mean_r, var_r = mean(x_r), biased var(x_r)                      computed locally
    n = sum_r n_r,  mean = sum_r n_r mean_r / n
    var = sum_r n_r (var_r + (mean_r - mean)^2) / n                 (the parallel-variance formula)
    y = (x - mean) / sqrt(var + eps) * weight + bias

The per-rank (n_r, mean_r, var_r) are combined with one differentiable all-reduce (its
backward is the all-reduce of the gradients), so it runs on gloo (CPU) as on NCCL, unlike
torch.nn.SyncBatchNorm, which needs CUDA and which `set_sync_bn(native=True)` uses there
(the same statistics in fused kernels). Running statistics are updated as BatchNorm2d
does, with the unbiased variance var * n / (n - 1). Statistics are computed in float32 under
bfloat16 autocast (float64 inputs stay float64).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


class GroupBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over `groups` equal slices of the batch.

    One process with groups = W normalises exactly as W data-parallel processes with
    per-device batch norm do (each over its own slice); running statistics are updated once
    per slice. Evaluation is unchanged.
    """

    groups: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups == 1:
            return super().forward(x)
        return torch.cat([super(GroupBatchNorm2d, self).forward(c) for c in x.chunk(self.groups)])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with training statistics over the global batch of all processes (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not _distributed():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        C = x.shape[1]
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32 under autocast, float64 stays float64
        xf = x.to(dtype)
        var_r, mean_r = torch.var_mean(xf, dim=(0, 2, 3), unbiased=False)  # (C,), (C,)
        n_r = torch.full((1,), x.numel() / C, dtype=dtype, device=x.device)
        world, rank = dist.get_world_size(), dist.get_rank()
        rows = torch.zeros(world, 2 * C + 1, dtype=dtype, device=x.device)  # one row per rank
        rows = rows.index_copy(0, torch.tensor([rank], device=x.device), torch.cat([n_r, mean_r, var_r])[None])
        rows = all_reduce(rows)  # (W, 2C+1): every rank's (n_r, mean_r, var_r)
        n_each, means, variances = rows[:, :1], rows[:, 1 : C + 1], rows[:, C + 1 :]
        n = n_each.sum()
        mean = (n_each * means).sum(0) / n  # (C,)
        var = (n_each * (variances + (means - mean) ** 2)).sum(0) / n  # (C,)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def set_bn_groups(model: nn.Module, groups: int) -> None:
    """Make every BatchNorm2d of `model` a GroupBatchNorm2d over `groups` slices (state unchanged)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.__class__ = GroupBatchNorm2d
            m.groups = groups


def set_sync_bn(model: nn.Module, native: bool = False) -> nn.Module:
    """Batch norm over the global batch for every BatchNorm2d of `model`, state unchanged (the
    same state_dict). `native` (CUDA, NCCL): torch.nn.SyncBatchNorm, whose fused kernels gather
    every rank's (mean, invstd, count) in one collective per layer forward and reduce the
    gradient statistics in one per layer backward; otherwise SyncBatchNorm2d (this module's,
    on gloo as on NCCL: ~13 kernels and 2 all-reduces per layer, so for the CPU). Both compute
    the statistics of the module docstring. Returns the model (modified in place)."""
    if native:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.__class__ = SyncBatchNorm2d
    return model
