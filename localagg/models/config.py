"""The `model` section: which backbone every stage builds (validated, unknown keys forbidden)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

Arch = Literal["resnet18", "resnet50", "preact_resnet18", "preact_resnet50", "alexnet", "vgg16"]


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    arch: Arch = Field("resnet18", description="resnet18/50: torchvision's v1; preact_resnet18/50, alexnet, vgg16: "
                                               "the authors' TF networks (localagg/models)")
    stem: Literal["imagenet", "small"] = Field("imagenet", description="imagenet: 7x7/2 + max-pool; small: 3x3/1, no "
                                                                       "pool (ResNets only)")
    embedding_dim: int = Field(128, ge=2)
    bn_momentum: Optional[float] = Field(None, gt=0, le=1, description="batch-norm running-statistics momentum "
                                         "(torch's sense); null: the network's own (torchvision 0.1, the authors' "
                                         "networks 0.003 = TF decay 0.997)")

    @model_validator(mode="after")
    def _stem(self):
        if self.stem != "imagenet" and self.arch in ("alexnet", "vgg16"):
            raise ValueError(f"stem {self.stem!r} is for the ResNets; {self.arch} has only its own stem: set "
                             "model.stem: imagenet")
        return self
