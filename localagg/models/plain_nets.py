"""AlexNet and VGG16 as the authors' TF code builds them for Local Aggregation.

AlexNet (model/alexnet_model.py, `alexnet_v2_with_bn_no_drop`: slim's alexnet_v2, the "one
weird trick" AlexNet without LRN, with batch norm after every conv and fc, no dropout):

    conv1 11x11/4 VALID 64  -> BN -> ReLU  [conv1]  -> max-pool 3x3/2 VALID
    conv2 5x5 SAME 192      -> BN -> ReLU  [conv2]  -> max-pool 3x3/2 VALID
    conv3 3x3 384 -> BN -> ReLU [conv3];  conv4 3x3 384 -> BN -> ReLU [conv4]
    conv5 3x3 256           -> BN -> ReLU  [conv5]  -> max-pool 3x3/2 VALID
    fc6 5x5 VALID 4096 -> BN -> ReLU;  fc7 1x1 4096 -> BN -> ReLU;  (fc8 1x1 to D: the head)

    Every conv and fc keeps its bias (slim adds one when no normalizer_fn is given; the TF
    code applies batch norm after it). Init: glorot-uniform convs with zero biases; fc6, fc7
    truncated normal 0.005 with biases 0.1 (the arg_scope inside alexnet_v2).
    At 224 px: conv1 54x54, conv2 26, conv3-5 12, pool5 5, fc6 1. fc6 needs pool5 >= 5,
    i.e. inputs of at least 195 px; above 226 px fc7's map is larger than 1x1 and is
    averaged (the TF code then fails to squeeze it).

VGG16 (model/vggnet_model.py, `vgg_16(with_bn=True, fix_bug=True, dropout_keep_prob=0)`):
13 3x3 SAME convs in five stages of 2, 2, 3, 3, 3, each stage followed by a 2x2/2 max-pool;
batch norm only on each stage's last conv (`conv<i>_final`, no bias: slim drops it when a
normalizer is given) and on fc6 (7x7 VALID, 4096) and fc7 (1x1, 4096); the other convs have
a bias and a ReLU and no batch norm. Init: glorot uniform, zero biases. Readouts: the
`conv<i>_final` outputs after ReLU (the TF code's ENDING_POINTS 0-4). fc6 needs pool5 >= 7,
i.e. inputs of at least 224 px.

Readout names follow the report's conv1..conv5; "before_maxpool" / "after_maxpool" for conv1
is the stage-1 map before or after its max-pool (the authors read it before).
Batch norm: decay 0.997 (torch momentum 0.003), eps 1e-5, as in the TF code.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from .tf_layers import batch_norm, xavier_


def _conv_bn(c_in, c_out, kernel, stride=1, padding=None, bias=True, bn_momentum=None) -> nn.Sequential:
    c = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2 if padding is None else padding, bias=bias)
    return nn.Sequential(c, batch_norm(c_out, bn_momentum), nn.ReLU(inplace=True))


class _PlainNet(nn.Module):
    """A chain of stages: `stages[i]` ends at readout conv<i+1>, `pools[i]` follows it; then fc6, fc7."""

    name: str
    min_size: int
    stages: nn.ModuleList
    pools: nn.ModuleList
    fc6: nn.Sequential
    fc7: nn.Sequential
    width = 4096

    def _check_size(self, x: torch.Tensor) -> None:
        if min(x.shape[-2:]) < self.min_size:
            raise UserError(f"{self.name} needs images of at least {self.min_size} px (its fc6 is a VALID conv "
                            f"on the last pool's map); got {x.shape[-2]} x {x.shape[-1]}. Set the crop sizes "
                            f"(augment.crop_size, transfer.*.crop_size) to {self.min_size} or more, e.g. 224.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """fc7's output averaged over its map (1x1 at 224 px): (B, 4096)."""
        self._check_size(x)
        for stage, pool in zip(self.stages, self.pools):
            x = pool(stage(x))
        return self.fc7(self.fc6(x)).mean(dim=(2, 3))

    def features(self, x: torch.Tensor, layers, conv1_after_maxpool: bool = False) -> dict[str, torch.Tensor]:
        self._check_size(x)
        out: dict[str, torch.Tensor] = {}
        for i, (stage, pool) in enumerate(zip(self.stages, self.pools)):
            x = stage(x)
            out[f"conv{i + 1}"] = x
            x = pool(x)
            if i == 0 and conv1_after_maxpool:
                out["conv1"] = x
            if all(n in out for n in layers):
                break
        return {n: out[n] for n in layers}


class AlexNet(_PlainNet):
    """The authors' AlexNet with batch norm (module docstring); forward: (B, 4096) from fc7."""

    name, min_size = "alexnet", 195

    def __init__(self, bn_momentum: float | None = None):
        super().__init__()
        m = bn_momentum
        self.stages = nn.ModuleList([
            _conv_bn(3, 64, 11, 4, padding=0, bn_momentum=m),
            _conv_bn(64, 192, 5, bn_momentum=m),
            _conv_bn(192, 384, 3, bn_momentum=m),
            _conv_bn(384, 384, 3, bn_momentum=m),
            _conv_bn(384, 256, 3, bn_momentum=m),
        ])
        pool = lambda: nn.MaxPool2d(3, 2)  # noqa: E731  (slim max_pool2d: VALID)
        self.pools = nn.ModuleList([pool(), pool(), nn.Identity(), nn.Identity(), pool()])
        self.fc6 = _conv_bn(256, 4096, 5, padding=0, bn_momentum=m)
        self.fc7 = _conv_bn(4096, 4096, 1, bn_momentum=m)
        for stage in self.stages:
            xavier_(stage[0])
        for fc in (self.fc6, self.fc7):
            nn.init.trunc_normal_(fc[0].weight, std=0.005, a=-0.01, b=0.01)
            nn.init.constant_(fc[0].bias, 0.1)


class VGG16(_PlainNet):
    """The authors' VGG16 with batch norm on each stage's last conv (module docstring)."""

    name, min_size = "vgg16", 224

    def __init__(self, bn_momentum: float | None = None):
        super().__init__()
        stages, c_in = [], 3
        for width, n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
            layers: list[nn.Module] = []
            for _ in range(n - 1):
                layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = width
            layers += list(_conv_bn(c_in, width, 3, bias=False, bn_momentum=bn_momentum))
            c_in = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.pools = nn.ModuleList([nn.MaxPool2d(2, 2) for _ in stages])
        self.fc6 = _conv_bn(512, 4096, 7, padding=0, bias=False, bn_momentum=bn_momentum)
        self.fc7 = _conv_bn(4096, 4096, 1, bias=False, bn_momentum=bn_momentum)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                xavier_(m)
