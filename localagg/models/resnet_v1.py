"""torchvision's ResNets (v1: conv-BN-ReLU, ReLU after the addition) as readout trunks.

The module is torchvision's ResNet itself (same parameter names, same initialisation), with
the classifier removed: forward(x) is the global-average-pooled conv5 map, (B, width).

Stems: imagenet (7x7/2 conv + 3x3/2 max-pool, torchvision's) or small (3x3/1 conv, no
max-pool; CIFAR-style, for 28-64 px inputs). Readout points ("conv1".."conv5", VISSL's
res1..res5): conv1 the stem's ReLU output before the max-pool (after it with
conv1_after_maxpool, the nearest v1 point to the authors' TF readout), conv2..conv5 the
outputs of layer1..layer4.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

DEPTHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}


class TorchvisionResNet(ResNet):
    """torchvision.models.resnet18 / resnet50 (weights=None) without its fc."""

    def __init__(self, arch: str, stem: str = "imagenet", bn_momentum: float | None = None):
        block, layers = DEPTHS[arch]
        super().__init__(block, layers)
        if stem == "small":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.width = self.fc.in_features
        self.fc = nn.Identity()
        if bn_momentum is not None:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = bn_momentum

    def features(self, x: torch.Tensor, layers, conv1_after_maxpool: bool = False) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.relu(self.bn1(self.conv1(x)))
        out["conv1"] = x
        x = self.maxpool(x)
        if conv1_after_maxpool:
            out["conv1"] = x
        for name, layer in zip(("conv2", "conv3", "conv4", "conv5"), (self.layer1, self.layer2, self.layer3,
                                                                        self.layer4)):
            if all(n in out for n in layers):
                break
            x = layer(x)
            out[name] = x
        return {n: out[n] for n in layers}
