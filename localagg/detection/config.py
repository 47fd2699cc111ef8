"""The detection protocol's knobs (`DetectionConfig`) and the Detectron2 config built from them.

Faster R-CNN with a ResNet C4 backbone (la-method.md, "Detection protocol"): stem and
res2..res4 are the backbone, res5 runs per region in the ROI head. The community standard
for self-supervised backbones (MoCo, VISSL) is the class default: 24k iterations, batch 16,
lr 0.02 with steps at 18k and 22k, multi-scale training 480..800, test 800, SyncBN in the
backbone and the res5 head, an extra norm after res5, FREEZE_AT 0, RGB input with
torchvision's mean/std (0-255 units), STRIDE_IN_1X1 False, precise BN before testing.
`DetectionConfig.cpu_default()` is the tiny run for the embedded 128 px set on a laptop CPU.

`LocalAggRes5ROIHeads` is Detectron2's `Res5ROIHeads` with two additions: res5 built from
`BasicBlock` for ResNet-18/34 (Detectron2 builds it from `BottleneckBlock` only) and the
optional norm after res5 (MoCo's `Res5ROIHeadsExtraNorm`).
"""

from __future__ import annotations

import os
from typing import Literal, Sequence

import torch.nn as nn
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import UserError
from .convert import DEPTHS, EXTRA_NORM

ROI_HEAD_NAME = "LocalAggRes5ROIHeads"
# torchvision's ImageNet normalisation in 0-255 RGB units (what the backbone was trained with).
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]


class LocalAggRes5ROIHeads(Res5ROIHeads):
    """`Res5ROIHeads` whose res5 matches the backbone's depth, plus an optional norm after it.

    MODEL.RESNETS.DEPTH 18/34: res5 is 2/3 `BasicBlock`s, 256 -> 512 channels (8 x
    RES2_OUT_CHANNELS), first stride 2; other depths: Detectron2's bottleneck res5.
    MODEL.ROI_HEADS.EXTRA_NORM_AFTER_RES5: append `RESNETS.NORM` over res5's output as
    module "norm" (not in a pretrained backbone; initialised fresh).
    """

    @classmethod
    def _build_res5_block(cls, cfg):
        depth = cfg.MODEL.RESNETS.DEPTH
        if depth in (18, 34):
            out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8
            num_blocks = 2 if depth == 18 else 3
            blocks = ResNet.make_stage(
                BasicBlock,
                num_blocks,
                stride_per_block=[2] + [1] * (num_blocks - 1),
                in_channels=out_channels // 2,
                out_channels=out_channels,
                norm=cfg.MODEL.RESNETS.NORM,
            )
            res5 = nn.Sequential(*blocks)
        else:
            res5, out_channels = super()._build_res5_block(cfg)
        if cfg.MODEL.ROI_HEADS.get("EXTRA_NORM_AFTER_RES5", False):
            res5.add_module(EXTRA_NORM, get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return res5, out_channels


if ROI_HEAD_NAME not in ROI_HEADS_REGISTRY:  # a re-imported module must not register twice
    ROI_HEADS_REGISTRY.register(LocalAggRes5ROIHeads)


class DetectionConfig(BaseModel):
    """Arch-independent knobs of the detection fine-tuning (iterations count optimizer steps)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
        """The tiny run for the embedded set (128 px images, 22-56 px objects) on 2 CPU cores.

        Single scale at the images' own size, anchors for 16-64 px objects, 32 ROIs per
        image and a 4 x 4 pooler (res5 dominates the cost), lr 0.03 (best of 0.01..0.05 in
        300 iterations): about 0.3 s per iteration on 2 idle cores.
        """
        values = dict(
            max_iter=300, ims_per_batch=4, base_lr=0.03, steps=(250,), warmup_iters=50,
            checkpoint_period=100, log_period=10, min_size_train=(128,), max_size_train=128,
            min_size_test=128, max_size_test=128, norm="BN", precise_bn_iters=0,
            anchor_sizes=(16, 32, 64), batch_size_per_image=32, pooler_resolution=4,
            proposals_train=200, proposals_test=50, device="cpu", num_gpus=1, num_workers=0,
        )
        values.update(overrides)
        return cls(**values)


def build_cfg(
    det_cfg: DetectionConfig,
    arch: str,
    num_classes: int,
    train_names: Sequence[str],
    test_names: Sequence[str],
    output_dir: str | os.PathLike,
) -> CfgNode:
    """The Detectron2 config of Faster R-CNN R{18,50}-C4 for `arch` ("resnet18" | "resnet50").

    MODEL.WEIGHTS is left empty: `train.train_detector` loads the converted backbone itself
    (strictly). The node is returned unfrozen so a caller can still override keys.
    """
    if arch not in DEPTHS:
        raise UserError(f"detection supports {', '.join(DEPTHS)}; got arch {arch!r}.")
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1; got {num_classes}.")
    if not train_names or not test_names:
        raise UserError("detection needs at least one training and one test dataset.")
    depth = DEPTHS[arch]
    c = det_cfg
    cfg = get_cfg()
    cfg.SEED = c.seed
    cfg.OUTPUT_DIR = str(output_dir)

    m = cfg.MODEL
    m.DEVICE = c.device
    m.META_ARCHITECTURE = "GeneralizedRCNN"
    m.MASK_ON = False
    m.WEIGHTS = ""
    m.PIXEL_MEAN = list(PIXEL_MEAN)
    m.PIXEL_STD = list(PIXEL_STD)
    m.BACKBONE.NAME = "build_resnet_backbone"
    m.BACKBONE.FREEZE_AT = c.freeze_at
    m.RESNETS.DEPTH = depth
    m.RESNETS.OUT_FEATURES = ["res4"]
    m.RESNETS.NORM = c.norm
    m.RESNETS.STRIDE_IN_1X1 = False
    m.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    m.ANCHOR_GENERATOR.SIZES = [list(c.anchor_sizes)]
    m.RPN.IN_FEATURES = ["res4"]
    m.RPN.PRE_NMS_TOPK_TEST = 6000
    m.RPN.POST_NMS_TOPK_TRAIN = c.proposals_train
    m.RPN.POST_NMS_TOPK_TEST = c.proposals_test
    m.ROI_HEADS.NAME = ROI_HEAD_NAME
    m.ROI_HEADS.IN_FEATURES = ["res4"]
    m.ROI_HEADS.NUM_CLASSES = num_classes
    m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = c.batch_size_per_image
    m.ROI_HEADS.EXTRA_NORM_AFTER_RES5 = c.extra_norm_after_res5
    m.ROI_BOX_HEAD.POOLER_RESOLUTION = c.pooler_resolution

    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = tuple(c.min_size_train)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = c.max_size_train
    cfg.INPUT.MIN_SIZE_TEST = c.min_size_test
    cfg.INPUT.MAX_SIZE_TEST = c.max_size_test

    cfg.DATASETS.TRAIN = tuple(train_names)
    cfg.DATASETS.TEST = tuple(test_names)
    cfg.DATALOADER.NUM_WORKERS = c.num_workers

    s = cfg.SOLVER
    s.IMS_PER_BATCH = c.ims_per_batch
    s.BASE_LR = c.base_lr
    s.STEPS = tuple(c.steps)
    s.MAX_ITER = c.max_iter
    s.WARMUP_ITERS = c.warmup_iters
    s.WEIGHT_DECAY = c.weight_decay
    s.CHECKPOINT_PERIOD = c.checkpoint_period

    cfg.TEST.EVAL_PERIOD = c.eval_period
    cfg.TEST.PRECISE_BN.ENABLED = c.precise_bn_iters > 0
    cfg.TEST.PRECISE_BN.NUM_ITER = max(c.precise_bn_iters, 1)
    return cfg
