"""The supervised reference: the same backbone trained with the object set's labels, the upper
bound the paper reports.

    L = cross_entropy(W avgpool(f(x)) + b, y)

The embedding head is not trained (nothing reads it in this loss; it stays as initialised,
so the export has the layout of every other model). The kNN monitor classifies the held-out
split's L2-normalised pooled conv5 against the training split's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator

from ...models.backbone import EmbeddingNet
from ..config import TrainingConfig
from .base import Method


class SupervisedConfig(TrainingConfig):
    """The supervised reference: the same backbone trained with the object set's labels
    (cross-entropy of a linear classifier on pooled conv5); the upper bound the paper reports.
    The bank, temperature and kNN fields of TrainingConfig are unused except for the kNN monitor."""

    augment: dict[str, Any] = Field(
        default_factory=dict,
        description="keys of the `augment` section that the supervised reference replaces, e.g. torchvision's "
                    "reference recipe: crop_scale [0.08, 1], color_jitter [0, 0, 0, 0], grayscale_p 0")

    @field_validator("augment")
    @classmethod
    def _known_augment_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        from ...data.augment import AugmentSpec

        unknown = sorted(set(value) - set(AugmentSpec.model_fields))
        if unknown:
            raise ValueError(f"unknown augment key(s) {', '.join(unknown)}; expected some of: "
                             f"{', '.join(AugmentSpec.model_fields)}")
        return value

    def augment_spec(self, base):
        """`base` (an AugmentSpec) with this section's `augment` keys replaced, validated."""
        return type(base).model_validate({**base.model_dump(), **self.augment})


class SupervisedNet(nn.Module):
    """Backbone + linear classifier on pooled conv5: logits (B, C)."""

    def __init__(self, model: EmbeddingNet, num_classes: int):
        super().__init__()
        self.model = model
        self.classifier = nn.Linear(model.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.model.pooled(x))


class Supervised(Method):
    name: ClassVar[str] = "supervised"
    section: ClassVar[str] = "supervised"
    cfg: SupervisedConfig

    def trainable(self, model: EmbeddingNet) -> nn.Module:
        """The backbone and a linear classifier; the embedding head is frozen (this loss never
        reads it, and DDP refuses parameters that get no gradient)."""
        model.head.requires_grad_(False)
        self.net = SupervisedNet(model, self.num_classes)
        return self.net

    def setup(self, run) -> None:
        self.num_classes, self.dtype = run.num_classes, run.dtype

    def begin(self, run) -> dict[str, Any]:
        """kNN of the untrained network's embeddings before training."""
        if run.val is None:
            return {}
        return {"knn_top1_init": run.knn_top1_streamed(run.val, run.train_eval)}

    def loss(self, out: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, step_seed: int) -> torch.Tensor:
        return F.cross_entropy(out.to(self.dtype), labels.to(out.device, non_blocking=True))

    def monitor(self, run) -> float | None:
        """kNN top-1 (%) of the held-out split's pooled conv5 against the training split's
        (streamed: the training features are never held at once)."""
        if run.val is None:
            return None
        return run.knn_top1_streamed(run.val, run.train_eval, pooled=True)

    def export_fields(self) -> dict[str, Any]:
        return {"classifier": self.net.classifier.state_dict()}
