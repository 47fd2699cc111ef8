"""The `model` section: which backbone every stage builds (validated, unknown keys forbidden)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    arch: Literal["resnet18", "resnet50"] = "resnet18"
    stem: Literal["imagenet", "small"] = Field("imagenet", description="imagenet: 7x7/2 + max-pool; small: 3x3/1, no pool")
    embedding_dim: int = Field(128, ge=2)
