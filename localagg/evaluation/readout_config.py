"""The linear-readout protocol's params (one section per readout dataset; validated, unknown
keys forbidden). linear.py has the protocol itself."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..data.augment import check_range
from ..models.backbone import PIXELS, READOUT_LAYERS
from ..runtime.schedule import StepSchedule

ReadoutLayer = Literal[(*READOUT_LAYERS, PIXELS)]  # "conv1" .. "conv5", and "pixels" (the raw-pixel baseline)


class LinearReadoutConfig(StepSchedule, BaseModel):
    """The readout recipe (la-method.md: SGD 0.9, lr 0.01, batch 128, wd 1e-4, drops x0.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    layers: list[ReadoutLayer] = Field(default_factory=lambda: list(READOUT_LAYERS))
    pool_rule: Literal["vissl", "official"] = Field(
        "vissl", description="vissl: pool each map to about pool_target_dims; official (the authors' TF code): "
                             "pool once, by 2 (by 4 if pooled by 2 it would still have more), when it has more than "
                             "pool_target_dims (200,000) dimensions")
    pool_target_dims: int = Field(9000, ge=1, description="vissl: the largest s x s with C s^2 <= this; "
                                                          "official: the dimension limit (200000)")
    conv1_point: Literal["before_maxpool", "after_maxpool"] = Field(
        "before_maxpool", description="where conv1 is read: the stem's ReLU output (VISSL) or after its max-pool "
                                      "(the authors' TF code)")
    epochs: int = Field(..., ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, description="on the classifiers (weights and biases)")
    lr_drops: list[int] = Field(default_factory=list, description="epochs at which lr *= lr_gamma")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    seed: int = 0
    crop_size: int = Field(224, ge=8)
    eval_resize: int | None = Field(None, ge=8, description="shorter side before cropping; default round(crop_size * 256 / 224)")
    train_augment: Literal["random_resized_crop_flip", "resize_random_crop_flip", "pretraining", "none"] = (
        "random_resized_crop_flip")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="area range of random_resized_crop_flip")

    _crop_scale = field_validator("crop_scale")(lambda value: check_range(value, upper=1.0))
    ten_crop: bool = Field(True, description="also evaluate on 10 crops (softmax averaged)")
    cache_features: bool = Field(False, description="train_augment none only: pool the features once, train on the cache")
    standardize: bool = Field(True, description="fixed per-dimension standardisation of the pooled features")
    standardize_images: int = Field(10000, ge=2, description="training images the standardisation statistics come from")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "on", "off"] = Field("auto", description="bfloat16 autocast of the frozen backbone "
                                                                  "(the heads stay float32); auto = on for CUDA")
    float64: bool = Field(False, description="everything in float64: for checks that two code paths are equal")
    num_workers: int = Field(0, ge=0, description="data-loader workers for file datasets")

    @field_validator("amp", mode="before")
    @classmethod
    def _on_off(cls, value):
        """YAML 1.1 reads an unquoted on/off as a boolean."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _check(self):
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be a non-empty list without repeats, got {self.layers}")
        self.check_lr_drops()
        if self.resize < self.crop_size:
            raise ValueError(f"eval_resize {self.resize} is smaller than crop_size {self.crop_size}")
        if self.cache_features and self.train_augment != "none":
            raise ValueError("cache_features needs train_augment: none (augmented features cannot be cached)")
        if self.ten_crop and self.train_augment == "none":
            raise ValueError("ten_crop needs a readout trained on crops and flips (train_augment other than none): "
                             "the corner and flipped crops are otherwise outside what the classifier saw")
        return self

    @property
    def resize(self) -> int:
        """The shorter side images are resized to before cropping."""
        return self.eval_resize if self.eval_resize is not None else round(self.crop_size * 256 / 224)
