"""The feature spaces the evaluation compares with kNN: a network's embedding and pooled conv5,
and the raw-pixel baseline's normalised pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def network_spaces(model, pooled_conv5: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two kNN spaces of a network from its pooled conv5 (B, C): "embedding" =
    normalize(head(pooled)) (B, D), what pretraining trains, and "conv5" = normalize(pooled)."""
    return {"embedding": F.normalize(model.head(pooled_conv5), dim=1), "conv5": F.normalize(pooled_conv5, dim=1)}


def pixel_space(images: torch.Tensor) -> torch.Tensor:
    """The raw-pixel baseline's kNN vectors: each normalised image (B, 3, S, S) flattened, its
    own mean subtracted, L2-normalised (B, 3 S S)."""
    v = images.flatten(1)
    return F.normalize(v - v.mean(1, keepdim=True), dim=1)
