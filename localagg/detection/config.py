"""The Detectron2 config built from the detection protocol's knobs (`protocol.DetectionConfig`).

Faster R-CNN with a ResNet C4 backbone (la-method.md, "Detection protocol"): stem and
res2..res4 are the backbone, res5 runs per region in the ROI head. The community standard
for self-supervised backbones (MoCo, VISSL) is the class default: 24k iterations, batch 16,
lr 0.02 with steps at 18k and 22k, multi-scale training 480..800, test 800, SyncBN in the
backbone and the res5 head, an extra norm after res5, FREEZE_AT 0, RGB input normalised
with the backbone's pretraining mean/std (0-255 units; torchvision's by default),
STRIDE_IN_1X1 False, precise BN before testing. `DetectionConfig.cpu_default()` is the tiny
run for the embedded 128 px set on a laptop CPU.

`LocalAggRes5ROIHeads` is Detectron2's `Res5ROIHeads` with two additions: res5 built from
`BasicBlock` for ResNet-18/34 (Detectron2 builds it from `BottleneckBlock` only) and the
optional norm after res5 (MoCo's `Res5ROIHeadsExtraNorm`). The pre-activation ResNets
(preact_resnet18/50) get the backbone and res5 head of `preact_c4` instead (BACKBONE.NAME
"build_preact_resnet_backbone", ROI_HEADS.NAME "LocalAggPreActRes5ROIHeads"), with the same
NORM, FREEZE_AT and the rest of the protocol.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch.nn as nn
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
from detectron2.modeling.roi_heads import Res5ROIHeads

from ..errors import UserError
from . import preact_c4
from .convert import DEPTHS, EXTRA_NORM, PREACT_DEPTHS, require_resnet
from .protocol import DetectionConfig

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


def build_cfg(
    det_cfg: DetectionConfig,
    arch: str,
    num_classes: int,
    train_names: Sequence[str],
    test_names: Sequence[str],
    output_dir: str | os.PathLike,
    pixel_mean: Sequence[float] = PIXEL_MEAN,
    pixel_std: Sequence[float] = PIXEL_STD,
) -> CfgNode:
    """The Detectron2 config of Faster R-CNN R{18,50}-C4 for `arch` ("resnet18" | "resnet50":
    Detectron2's ResNet; "preact_resnet18" | "preact_resnet50": `preact_c4`'s).

    `pixel_mean`/`pixel_std` (RGB, 0-255 units) must be the normalisation the backbone was
    pretrained with (the `augment` section's mean/std x 255); torchvision's by default.
    MODEL.WEIGHTS is left empty: `train.train_detector` loads the converted backbone itself
    (strictly). The node is returned unfrozen so a caller can still override keys.
    """
    require_resnet(arch)
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1; got {num_classes}.")
    if not train_names or not test_names:
        raise UserError("detection needs at least one training and one test dataset.")
    preact = arch in PREACT_DEPTHS
    depth = PREACT_DEPTHS[arch] if preact else DEPTHS[arch]
    c = det_cfg
    cfg = get_cfg()
    cfg.SEED = c.seed
    cfg.OUTPUT_DIR = str(output_dir)

    m = cfg.MODEL
    m.DEVICE = c.device
    m.META_ARCHITECTURE = "GeneralizedRCNN"
    m.MASK_ON = False
    m.WEIGHTS = ""
    if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
        raise UserError(f"pixel mean/std must be 3 RGB values with std > 0; got {list(pixel_mean)}, {list(pixel_std)}.")
    m.PIXEL_MEAN = [float(v) for v in pixel_mean]
    m.PIXEL_STD = [float(v) for v in pixel_std]
    m.BACKBONE.NAME = preact_c4.BACKBONE_NAME if preact else "build_resnet_backbone"
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
    m.ROI_HEADS.NAME = preact_c4.ROI_HEAD_NAME if preact else ROI_HEAD_NAME
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
