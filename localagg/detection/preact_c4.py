"""The pre-activation (v2) ResNet as a Detectron2 Faster R-CNN C4 model: a backbone up to
res4 and a res5 ROI head, both cut from `localagg.models.preact_resnet.PreActResNet` itself
(its blocks, layout and init; nothing re-implemented), with the batch norms swapped for
Detectron2's MODEL.RESNETS.NORM.

    backbone (BACKBONE.NAME "build_preact_resnet_backbone")
        x -> conv1 (7x7/2) -> maxpool (3x3/2 SAME) -> layer1 -> layer2 -> layer3 = "res4"
        res4: (B, 256 | 1024, H/16, W/16) for ResNet-18 | 50, the raw residual sum of
        stage 3's last block (v2 has no BN-ReLU there: the next block applies its own)
    res5 (ROI_HEADS.NAME "LocalAggPreActRes5ROIHeads"), per pooled region r:
        r -> layer4 (first block stride 2; its bn1-ReLU pre-activates r) -> bn -> relu
        (B, 512 | 2048, h/2, w/2): the trunk's final BN-ReLU, the map the pipeline's conv5 reads

Module names are the pipeline's: backbone.conv1, backbone.layer{1-3}.{j}.*, and in the head
roi_heads.res5.{j}.* (layer4's blocks) and roi_heads.res5.bn.* (the final BN), so the
converter (convert.py) renames only layer4 -> res5 and bn -> res5.bn.

The detection knobs mean what they mean for the v1 (torchvision) ResNet:

    norm        every BN of backbone and res5 becomes get_norm(NORM, C): "BN" (Detectron2's
                BatchNorm2d, momentum 0.1), "SyncBN", "FrozenBN" (statistics and affine fixed);
                eps stays 1e-5 (TF's and Detectron2's)
    freeze_at   k >= 1 freezes the stem (conv1), k >= s freezes stage s (res{s} = layer{s-1},
                s = 2..4): requires_grad False and its BNs FrozenBatchNorm2d, as Detectron2's
                ResNet.freeze. A stage's BNs are its blocks' own, so freezing res2 freezes the
                bn1 that pre-activates the stem's output; res5 (the head) is never frozen.
    extra_norm_after_res5  v1: a fresh norm after res5 (MoCo's). v2 has a norm there already,
                the pretrained final BN (+ ReLU), which is always part of res5 and loaded; the
                flag adds nothing on top of it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, Backbone
from detectron2.modeling.roi_heads import Res5ROIHeads

from ..errors import UserError
from ..models.preact_resnet import PreActResNet
from .convert import PREACT_DEPTHS

BACKBONE_NAME = "build_preact_resnet_backbone"
ROI_HEAD_NAME = "LocalAggPreActRes5ROIHeads"
FINAL_NORM = "bn"  # the trunk's final BN, the last norm of res5 (pretrained: loaded, not fresh)
_ARCH_OF_DEPTH = {depth: arch for arch, depth in PREACT_DEPTHS.items()}  # MODEL.RESNETS.DEPTH -> arch


def _arch(cfg) -> str:
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth not in _ARCH_OF_DEPTH:
        raise UserError(f"the pre-activation C4 model has depths {sorted(_ARCH_OF_DEPTH)}; MODEL.RESNETS.DEPTH is {depth}.")
    return _ARCH_OF_DEPTH[depth]


def _trunk(cfg) -> PreActResNet:
    """The pipeline's v2 trunk (imagenet stem) of cfg's depth, its BNs swapped for RESNETS.NORM."""
    return swap_norms(PreActResNet(_arch(cfg), "imagenet"), cfg.MODEL.RESNETS.NORM)


def swap_norms(module: nn.Module, norm: str) -> nn.Module:
    """In place: every nn.BatchNorm2d child (at any depth) becomes get_norm(norm, C), fresh
    (weight 1, bias 0, mean 0, var 1: the converted checkpoint fills them) with the BN's eps."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            new = get_norm(norm, child.num_features)
            new.eps = child.eps
            setattr(module, name, new)
        else:
            swap_norms(child, norm)
    return module


def freeze_(module: nn.Module) -> nn.Module:
    """In place, as Detectron2's CNNBlockBase.freeze: no gradients, BNs FrozenBatchNorm2d."""
    for p in module.parameters():
        p.requires_grad = False
    return FrozenBatchNorm2d.convert_frozen_batchnorm(module)


class PreActC4Backbone(Backbone):
    """Stem and stages 1-3 of the v2 trunk; forward(x (B, 3, H, W)) -> {"res4": raw stage-3 sum}."""

    def __init__(self, trunk: PreActResNet, freeze_at: int = 0):
        super().__init__()
        self.conv1, self.maxpool = trunk.conv1, trunk.maxpool
        self.layer1, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        self._out_features = ["res4"]
        self._out_feature_channels = {"res4": _width(self.layer3)}
        self._out_feature_strides = {"res4": 16}
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> "PreActC4Backbone":
        """Freeze the stem (freeze_at >= 1) and stage s = 2..4 (freeze_at >= s); module docstring."""
        if freeze_at >= 1:
            freeze_(self.conv1)
        for s, name in enumerate(("layer1", "layer2", "layer3"), start=2):
            if freeze_at >= s:
                setattr(self, name, freeze_(getattr(self, name)))
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.conv1(x))
        return {"res4": self.layer3(self.layer2(self.layer1(x)))}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {"res4": ShapeSpec(channels=self._out_feature_channels["res4"], stride=16)}


def _width(stage: nn.Sequential) -> int:
    """Output channels of a stage of v2 blocks: the last conv's."""
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


def build_res5(trunk: PreActResNet) -> tuple[nn.Sequential, int]:
    """(res5, its channels): stage 4's blocks "0".."n-1", then the final BN "bn" and ReLU "relu"."""
    res5 = nn.Sequential(*trunk.layer4)
    res5.add_module(FINAL_NORM, trunk.bn)
    res5.add_module("relu", nn.ReLU(inplace=True))
    return res5, trunk.width


def build_preact_resnet_backbone(cfg, input_shape: ShapeSpec) -> PreActC4Backbone:
    """The C4 backbone of cfg (RESNETS.DEPTH 18 | 50, RESNETS.NORM, BACKBONE.FREEZE_AT; RGB input)."""
    if input_shape.channels != 3:
        raise UserError(f"the pre-activation backbone takes 3 input channels; got {input_shape.channels}.")
    if list(cfg.MODEL.RESNETS.OUT_FEATURES) != ["res4"]:
        raise UserError(f"the pre-activation C4 backbone outputs res4 only; OUT_FEATURES is {list(cfg.MODEL.RESNETS.OUT_FEATURES)}.")
    return PreActC4Backbone(_trunk(cfg), cfg.MODEL.BACKBONE.FREEZE_AT)


class LocalAggPreActRes5ROIHeads(Res5ROIHeads):
    """`Res5ROIHeads` whose res5 is the v2 trunk's stage 4 and final BN-ReLU (`build_res5`)."""

    @classmethod
    def _build_res5_block(cls, cfg):
        return build_res5(_trunk(cfg))


# a re-imported module must not register twice
if BACKBONE_NAME not in BACKBONE_REGISTRY:
    BACKBONE_REGISTRY.register(build_preact_resnet_backbone)
if ROI_HEAD_NAME not in ROI_HEADS_REGISTRY:
    ROI_HEADS_REGISTRY.register(LocalAggPreActRes5ROIHeads)
