"""What every pretraining method's params section shares (validated, unknown keys forbidden).

Each method's own section extends `TrainingConfig` in the method's module
(`methods/instance_recognition.py`: `IRConfig`, ...); the pipeline layer mounts them as
params.yaml sections, the library only sees the validated objects.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..runtime.schedule import StepSchedule


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TrainingConfig(StepSchedule, _Config):
    """What IR, LA and the supervised reference share (la-method.md: SGD 0.9, lr 0.03, batch
    128, wd 1e-4)."""

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
    collective_timeout_s: int = Field(1800, ge=1, description="a rank that waits longer than this in a collective "
                                                              "stops the run with an error instead of hanging")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "on", "off"] = Field("auto", description="bfloat16 autocast; auto = on for CUDA")
    float64: bool = Field(False, description="compute in float64 (model, bank, losses): for checks that two code "
                                             "paths are equal, e.g. 1 and 2 processes; several times slower")
    channels_last: Literal["auto", "on", "off"] = "auto"
    num_workers: int = Field(0, ge=0, description="data-loader workers for file datasets")
    jpeg_decode: Literal["auto", "workers", "device"] = Field(
        "auto", description="file datasets: decode the training crops in the loader workers (PIL, reduced-size "
                            "JPEG decoding) or on the training device (nvjpeg); auto = device on CUDA")
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
        if self.float64 and self.amp == "on":
            raise ValueError("float64 and amp: on (bfloat16 autocast) exclude each other; set one of them")
        if self.sync_bn and self.bn_groups > 1:
            raise ValueError("sync_bn (statistics over the whole batch) and bn_groups > 1 (over slices of it) exclude "
                             "each other; set one of them")
        return self
