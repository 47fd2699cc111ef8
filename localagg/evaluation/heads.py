"""One linear classifier per readout layer: pooling rules (VISSL's, the authors'), the fixed
standardisation, the linear map."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def pool_side(channels: int, target: int) -> int:
    """The largest s >= 1 with channels * s * s <= target (1 when even s = 1 exceeds it)."""
    return max(1, math.isqrt(target // channels))


def pooled_dim(channels: int, spatial: int, target: int = 9000) -> int:
    """Feature size of a (channels, spatial, spatial) map after the readout pooling."""
    s = min(spatial, pool_side(channels, target))
    return channels * s * s


def official_factor(channels: int, height: int, width: int, max_dims: int = 200_000) -> int:
    """The authors' TF rule: no pooling when C H W <= max_dims, else average-pool by 2, or by 4
    when a quarter of the size is still above max_dims."""
    size = channels * height * width
    return 1 if size <= max_dims else (2 if size / 4 <= max_dims else 4)


class LayerReadout(nn.Module):
    """Average pool -> flatten -> fixed standardisation -> linear, for one layer.

    rule "vissl": adaptive pool to (min(H, s), min(W, s)), s = pool_side(C, target);
    rule "official": pool by f = official_factor(C, H, W, target) with stride f, windows that
    run past the edge averaged over what they hold (TF's SAME padding), to (ceil(H/f), ceil(W/f)).
    """

    def __init__(self, channels: int, height: int, width: int, num_classes: int, target: int,
                 rule: str = "vissl"):
        super().__init__()
        self.rule = rule
        if rule == "official":
            self.factor = official_factor(channels, height, width, target)
            self.pool_size = (-(-height // self.factor), -(-width // self.factor))
        else:
            s = pool_side(channels, target)
            self.pool_size = (min(height, s), min(width, s))
        self.dim = channels * self.pool_size[0] * self.pool_size[1]
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("inv_std", torch.ones(self.dim))
        self.fc = nn.Linear(self.dim, num_classes)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D)."""
        if self.rule == "official":
            if self.factor > 1:
                fmap = F.avg_pool2d(fmap, self.factor, self.factor, ceil_mode=True, count_include_pad=False)
            return fmap.flatten(1)
        return F.adaptive_avg_pool2d(fmap, self.pool_size).flatten(1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) pooled features -> (B, num_classes) logits."""
        return self.fc((pooled - self.mean) * self.inv_std)
