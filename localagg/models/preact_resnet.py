"""Pre-activation (v2) ResNets as the authors' TF code builds them (model/resnet_model.py,
the TF-official ResNet with DEFAULT_VERSION = 2), in PyTorch.

A block, with a = relu(bn(x)) its pre-activation (TF order of operations):

    basic       out = conv3x3(relu(bn(conv3x3_s(a)))) + shortcut
    bottleneck  out = conv1x1(relu(bn(conv3x3_s(relu(bn(conv1x1(a))))))) + shortcut
    shortcut    conv1x1_s(a) in the first block of every stage (stage 1 too, stride 1), else x

No batch norm on the projection, no ReLU after the addition; the stride sits on the 3x3 conv.
Stem: conv 7x7/2 (no bias, no BN, no ReLU: the first block's pre-activation does that), then
a 3x3/2 max-pool with TF's SAME padding. After the last block: BN + ReLU, then the global
average. Batch norm: decay 0.997 (torch momentum 0.003), eps 1e-5; convs without bias.

Readout points (the TF code's ENDING_POINTS: 0 the max-pool's output, then every block's
pre-activation a, then the final BN-ReLU; the transfer configs read 1,3,5,7,9 for ResNet-18
and 1,4,8,14,17 for ResNet-50), under the report's names:

    conv1  the first block's pre-activation: BN-ReLU of the max-pooled stem  (64 ch, /4)
           ("before_maxpool": the stem conv's own output, which v2 leaves bare)
    conv2  the pre-activation of stage 2's first block (stage 1's output)   (64 | 256 ch, /4)
    conv3  the pre-activation of stage 3's first block                      (128 | 512 ch, /8)
    conv4  the pre-activation of stage 4's first block                      (256 | 1024 ch, /16)
    conv5  the final BN-ReLU                                                (512 | 2048 ch, /32)

Modules are registered in the order the TF code creates its variables (stem conv; per block:
bn1, projection, conv1, bn2, conv2[, bn3, conv3]; final bn), so the i-th conv and i-th batch
norm here are TF's conv2d_i and batch_normalization_i (localagg.models.tf_checkpoint relies on it).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .tf_layers import SamePool2d, batch_norm, conv, variance_scaling_

DEPTHS = {"preact_resnet18": ("basic", (2, 2, 2, 2)), "preact_resnet50": ("bottleneck", (3, 4, 6, 3))}


class PreActBlock(nn.Module):
    """The v2 building block (ResNet-18/34): two 3x3 convs."""

    expansion = 1

    def __init__(self, c_in: int, filters: int, stride: int, project: bool, bn_momentum: float | None):
        super().__init__()
        c_out = filters * self.expansion
        self.bn1 = batch_norm(c_in, bn_momentum)
        self.shortcut = conv(c_in, c_out, 1, stride) if project else None
        self.conv1 = conv(c_in, filters, 3, stride)
        self.bn2 = batch_norm(filters, bn_momentum)
        self.conv2 = conv(filters, c_out, 3)
        self.relu = nn.ReLU(inplace=True)

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(x))

    def residual(self, a: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn2(self.conv1(a))))

    def from_preact(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The block's output from its input x and pre-activation a = relu(bn1(x))."""
        shortcut = self.shortcut(a) if self.shortcut is not None else x
        return self.residual(a) + shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_preact(x, self.preact(x))


class PreActBottleneck(PreActBlock):
    """The v2 bottleneck block (ResNet-50 and deeper): 1x1, 3x3 (strided), 1x1 to 4 x filters."""

    expansion = 4

    def __init__(self, c_in: int, filters: int, stride: int, project: bool, bn_momentum: float | None):
        nn.Module.__init__(self)
        c_out = filters * self.expansion
        self.bn1 = batch_norm(c_in, bn_momentum)
        self.shortcut = conv(c_in, c_out, 1, stride) if project else None
        self.conv1 = conv(c_in, filters, 1)
        self.bn2 = batch_norm(filters, bn_momentum)
        self.conv2 = conv(filters, filters, 3, stride)
        self.bn3 = batch_norm(filters, bn_momentum)
        self.conv3 = conv(filters, c_out, 1)
        self.relu = nn.ReLU(inplace=True)

    def residual(self, a: torch.Tensor) -> torch.Tensor:
        a = self.relu(self.bn2(self.conv1(a)))
        return self.conv3(self.relu(self.bn3(self.conv2(a))))


class PreActResNet(nn.Module):
    """The v2 trunk: forward(x) is the global average of the final BN-ReLU, (B, width)."""

    def __init__(self, arch: str, stem: str = "imagenet", bn_momentum: float | None = None):
        super().__init__()
        kind, depths = DEPTHS[arch]
        block = PreActBlock if kind == "basic" else PreActBottleneck
        if stem == "imagenet":
            self.conv1 = conv(3, 64, 7, 2)
            self.maxpool: nn.Module = SamePool2d(3, 2)
        else:  # "small": 3x3/1, no max-pool
            self.conv1 = conv(3, 64, 3, 1)
            self.maxpool = nn.Identity()
        c_in, stages = 64, []
        for i, n in enumerate(depths):
            filters = 64 * 2 ** i
            blocks = [block(c_in, filters, 1 if i == 0 else 2, True, bn_momentum)]
            c_in = filters * block.expansion
            blocks += [block(c_in, filters, 1, False, bn_momentum) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = batch_norm(c_in, bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.width = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                variance_scaling_(m.weight)

    def stages(self) -> tuple[nn.Sequential, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        for stage in self.stages():
            x = stage(x)
        return self.final(x).mean(dim=(2, 3))

    def features(self, x: torch.Tensor, layers, conv1_after_maxpool: bool = True) -> dict[str, torch.Tensor]:
        """{name: (B, C, H, W)} at the readout points of the module docstring, in one forward
        that stops once the last requested one is reached."""
        out: dict[str, torch.Tensor] = {}
        x = self.conv1(x)
        if not conv1_after_maxpool:
            out["conv1"] = x
        x = self.maxpool(x)
        for i, stage in enumerate(self.stages()):
            for j, block in enumerate(stage):
                a = block.preact(x)
                if j == 0 and (i > 0 or conv1_after_maxpool):
                    out[f"conv{i + 1}"] = a
                if all(n in out for n in layers):
                    return {n: out[n] for n in layers}
                x = block.from_preact(x, a)
        out["conv5"] = self.final(x)
        return {n: out[n] for n in layers}
