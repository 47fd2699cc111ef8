"""The detection protocol's knobs, without importing Detectron2 (the params schema reads them).

The class default is the community standard for self-supervised backbones (MoCo, VISSL):
Faster R-CNN R50-C4 on VOC07+12, 24k iterations, batch 16, lr 0.02 with steps at 18k and
22k, multi-scale training 480..800, test 800, SyncBN, an extra norm after res5, FREEZE_AT 0,
precise BN before testing. `DetectionConfig.cpu_default()` is the tiny run for the embedded
128 px set on a laptop CPU. `config.build_cfg` turns it into a Detectron2 config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DetectionConfig(BaseModel):
    """Arch-independent knobs of the detection fine-tuning (iterations count optimizer steps)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_iter: int = Field(24000, ge=1)
    ims_per_batch: int = Field(16, ge=1, description="images per step over all GPUs")
    base_lr: float = Field(0.02, gt=0)
    steps: tuple[int, ...] = Field((18000, 22000), description="iterations where lr *= 0.1")
    warmup_iters: int = Field(100, ge=0, description="linear warm-up from lr / 1000")
    weight_decay: float = Field(1e-4, ge=0)
    checkpoint_period: int = Field(5000, ge=1, description="iterations between checkpoints (the last one always)")
    eval_period: int = Field(0, ge=0, description="iterations between test evaluations; 0 = at the end only")
    log_period: int = Field(20, ge=1, description="iterations between loss records")
    min_size_train: tuple[int, ...] = Field(tuple(range(480, 801, 32)), description="short side, one drawn per image")
    max_size_train: int = Field(1333, ge=1)
    min_size_test: int = Field(800, ge=1)
    max_size_test: int = Field(1333, ge=1)
    norm: Literal["SyncBN", "BN", "FrozenBN"] = Field(
        "SyncBN", description="backbone and res5 norm; SyncBN needs CUDA, BN on CPU")
    extra_norm_after_res5: bool = True
    freeze_at: int = Field(0, ge=0, le=5, description="0: fine-tune every stage")
    precise_bn_iters: int = Field(200, ge=0, description="batches to re-estimate BN statistics before testing (0: off)")
    anchor_sizes: tuple[int, ...] = Field((32, 64, 128, 256, 512), description="RPN anchor sizes in input pixels")
    batch_size_per_image: int = Field(512, ge=1, description="sampled ROIs per image for the box head")
    pooler_resolution: int = Field(14, ge=2, description="ROI crop size fed to res5 (its output is half)")
    proposals_train: int = Field(2000, ge=1, description="RPN proposals kept per image after NMS, training")
    proposals_test: int = Field(1000, ge=1, description="RPN proposals kept per image after NMS, testing")
    seed: int = Field(0, ge=0)
    device: Literal["cuda", "cpu"] = "cuda"
    num_gpus: int = Field(8, ge=1, description="processes (one per GPU); 1 on CPU")
    num_workers: int = Field(4, ge=0, description="data-loader workers per process")

    @model_validator(mode="after")
    def _check(self):
        if list(self.steps) != sorted(set(self.steps)) or any(not 0 < s < self.max_iter for s in self.steps):
            raise ValueError(f"steps must be increasing iterations inside (0, max_iter={self.max_iter}), got {list(self.steps)}")
        if self.ims_per_batch % self.num_gpus:
            raise ValueError(f"ims_per_batch {self.ims_per_batch} must be divisible by num_gpus {self.num_gpus}")
        if self.device == "cpu" and self.norm == "SyncBN":
            raise ValueError('norm "SyncBN" needs CUDA; use "BN" with device cpu')
        if self.device == "cpu" and self.num_gpus != 1:
            raise ValueError("device cpu runs one process: set num_gpus to 1")
        if not self.min_size_train or not self.anchor_sizes:
            raise ValueError("min_size_train and anchor_sizes must not be empty")
        return self

    @classmethod
    def cpu_default(cls, **overrides) -> "DetectionConfig":
        """The tiny run for the embedded set (96 px images, 22-42 px objects) on 2 CPU cores:
        the `detection` section of params.yaml (a test keeps the two equal).

        80 iterations (a smoke run of the stage), single scale at the images' own size, anchors
        for 16-64 px objects, 32 ROIs per image and a 4 x 4 pooler (res5 dominates the cost),
        lr 0.03, stem and res2 frozen (80 steps cannot relearn them).
        """
        values = dict(
            max_iter=80, ims_per_batch=4, base_lr=0.03, steps=(64,), warmup_iters=16,
            checkpoint_period=40, log_period=10, min_size_train=(96,), max_size_train=96,
            min_size_test=96, max_size_test=96, norm="BN", freeze_at=2, precise_bn_iters=0,
            anchor_sizes=(16, 32, 64), batch_size_per_image=32, pooler_resolution=4,
            proposals_train=200, proposals_test=50, device="cpu", num_gpus=1, num_workers=0,
        )
        values.update(overrides)
        return cls(**values)
