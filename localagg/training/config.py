"""Configuration models of the model and of pretraining (validated, unknown keys forbidden).

The pipeline layer mounts these as params.yaml sections (`model`, `pretrain_ia`,
`pretrain_la`); the library only sees the validated objects.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StepSchedule:
    """The step learning-rate schedule of a config with fields `epochs`, `lr`, `lr_drops` and
    `lr_gamma` (pretraining here, the linear readout in evaluation.linear)."""

    def lr_at(self, epoch: int) -> float:
        """lr * lr_gamma^(number of drops at or before `epoch`)."""
        return self.lr * self.lr_gamma ** sum(epoch >= d for d in self.lr_drops)

    def check_lr_drops(self) -> None:
        """Raise ValueError unless lr_drops are increasing epochs inside (0, epochs)."""
        if sorted(self.lr_drops) != list(self.lr_drops) or any(not 0 < e < self.epochs for e in self.lr_drops):
            raise ValueError(f"lr_drops must be increasing epochs inside (0, epochs={self.epochs}), got {self.lr_drops}")


class ModelConfig(_Config):
    arch: Literal["resnet18", "resnet50"] = "resnet18"
    stem: Literal["imagenet", "small"] = Field("imagenet", description="imagenet: 7x7/2 + max-pool; small: 3x3/1, no pool")
    embedding_dim: int = Field(128, ge=2)


class TrainingConfig(StepSchedule, _Config):
    """What IR and LA pretraining share (la-method.md: SGD 0.9, lr 0.03, batch 128, wd 1e-4)."""

    epochs: int = Field(..., ge=1)
    batch_size: int = Field(128, ge=2, description="global batch over all processes")
    lr: float = Field(0.03, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, description="on all weights except batch-norm parameters")
    lr_drops: list[int] = Field(default_factory=list, description="epochs (of this stage) at which lr *= lr_gamma")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    seed: int = 0
    bank_momentum: float = Field(0.5, ge=0, le=1)
    bank_normalize_init: bool = Field(False, description="L2-normalise the uniform bank init (PyTorch port) or not (TF reference)")
    bank_init: Literal["uniform", "features"] = Field(
        "uniform", description="uniform: the paper's random bank; features: the initial network's embeddings (short runs)")
    temperature: float = Field(0.07, gt=0)
    knn_k: int = Field(200, ge=1)
    knn_temperature: float = Field(0.07, gt=0)
    knn_every_epochs: int = Field(1, ge=1, description="the kNN monitor runs after every this many epochs and the last")
    checkpoint_every_steps: int = Field(0, ge=0, description="extra checkpoints within an epoch (0 = at epoch ends only)")
    num_processes: int = Field(1, ge=1, description="processes on this machine (torchrun --nproc_per_node)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "on", "off"] = Field("auto", description="bfloat16 autocast; auto = on for CUDA")
    channels_last: Literal["auto", "on", "off"] = "auto"
    num_workers: int = Field(0, ge=0, description="data-loader workers for file datasets")
    bn_groups: int = Field(1, ge=1, description="split each process's batch into groups for batch-norm statistics")
    sync_bn: bool = Field(False, description="batch-norm statistics over the global batch of all processes "
                                             "(the authors' one GPU saw all 128 images); no change with one process")
    threads: int = Field(0, ge=0, description="torch CPU threads per process (0 = torch's default)")
    log_every_steps: int = Field(0, ge=0, description="a progress line every this many steps inside an epoch "
                                                      "(0: ten per epoch when an epoch has 200 steps or more)")

    @field_validator("amp", "channels_last", mode="before")
    @classmethod
    def _on_off(cls, value):
        """YAML 1.1 (PyYAML) reads an unquoted on/off as a boolean; DVC writes them unquoted (`-S`)."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _check(self):
        self.check_lr_drops()
        if self.batch_size % (self.num_processes * self.bn_groups):
            raise ValueError(
                f"batch_size {self.batch_size} must be divisible by num_processes x bn_groups = {self.num_processes * self.bn_groups}"
            )
        if self.sync_bn and self.bn_groups > 1:
            raise ValueError("sync_bn (statistics over the whole batch) and bn_groups > 1 (over slices of it) exclude "
                             "each other; set one of them")
        return self


class IRConfig(TrainingConfig):
    """Instance Recognition (Wu et al. 2018): NCE with `num_negatives` noise samples (0 = full softmax)."""

    num_negatives: int = Field(4096, ge=0)
    nce_z_per_image: Optional[float] = Field(
        None, gt=0, description="NCE normaliser Z / N, fixed; null: Z estimated from the first batch (lemniscate, "
                                "the PyTorch port). The TF code fixes Z = 2876934.2 / 1281167 * N (2.2455575 N)")


class LAConfig(TrainingConfig):
    """Local Aggregation: background neighbours k, H k-means of m clusters on the bank."""

    k: int = Field(4096, ge=1, description="background neighbours (top-k of the bank)")
    num_kmeans: int = Field(10, ge=1, description="H: k-means runs with different seeds")
    num_clusters: int = Field(30000, ge=2, description="m: clusters per k-means")
    kmeans_iterations: int = Field(20, ge=1)
    kmeans_seed: int = Field(1234, description="clustering h uses kmeans_seed + h")


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
        from ..data.augment import AugmentSpec

        unknown = sorted(set(value) - set(AugmentSpec.model_fields))
        if unknown:
            raise ValueError(f"unknown augment key(s) {', '.join(unknown)}; expected some of: "
                             f"{', '.join(AugmentSpec.model_fields)}")
        return value

    def augment_spec(self, base):
        """`base` (an AugmentSpec) with this section's `augment` keys replaced, validated."""
        return type(base).model_validate({**base.model_dump(), **self.augment})
