"""The backbones, each with the Local Aggregation head: pool -> linear(D) -> L2 normalise.

    v = normalize(W · pooled(x) + b),   v in R^D (D = 128 in the paper)

    arch              trunk (module)                                 pooled(x)        width
    resnet18, 50      torchvision's v1 ResNet (resnet_v1)            GAP of conv5     512, 2048
    preact_resnet18,  the authors' TF pre-activation (v2) ResNet     GAP of the final 512, 2048
    preact_resnet50   (preact_resnet)                                BN-ReLU
    alexnet           the authors' AlexNet with BN (plain_nets)      fc7              4096
    vgg16             the authors' VGG16 with BN (plain_nets)        fc7              4096

For AlexNet and VGG16 the head is the TF code's fc8 (a 1x1 conv on fc7's 1x1 map, i.e. a
linear layer). Every trunk exposes `features(x, layers, conv1_after_maxpool)`: the readout
maps conv1..conv5 at the authors' points (each trunk's module docstring says where), and
"pixels", the normalised input itself (the raw-pixel baseline, read out like a layer).

Stems (ResNets only): imagenet (7x7/2 conv + 3x3/2 max-pool, the paper's; the one Detectron2
converts) or small (3x3/1 conv, no max-pool, for 28-64 px inputs; 4x the compute).
Batch-norm momentum: `bn_momentum` (torch's sense), None for the network's own (torchvision
0.1; the authors' networks 0.003, TF's decay 0.997).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .plain_nets import AlexNet, VGG16
from .preact_resnet import PreActResNet
from .resnet_v1 import TorchvisionResNet

# arch -> (trunk factory(stem, bn_momentum), stems it has)
ARCHS: dict[str, tuple[Callable[[str, float | None], nn.Module], tuple[str, ...]]] = {
    "resnet18": (lambda stem, m: TorchvisionResNet("resnet18", stem, m), ("imagenet", "small")),
    "resnet50": (lambda stem, m: TorchvisionResNet("resnet50", stem, m), ("imagenet", "small")),
    "preact_resnet18": (lambda stem, m: PreActResNet("preact_resnet18", stem, m), ("imagenet", "small")),
    "preact_resnet50": (lambda stem, m: PreActResNet("preact_resnet50", stem, m), ("imagenet", "small")),
    "alexnet": (lambda stem, m: AlexNet(m), ("imagenet",)),
    "vgg16": (lambda stem, m: VGG16(m), ("imagenet",)),
}
STEMS = ("imagenet", "small")
READOUT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
PIXELS = "pixels"  # the normalised input itself: the raw-pixel baseline, read out like a layer


def min_size(arch: str) -> int:
    """The smallest input side `arch` takes (AlexNet and VGG16 end in VALID fc convs)."""
    return {"alexnet": AlexNet.min_size, "vgg16": VGG16.min_size}.get(arch, 1)


class EmbeddingNet(nn.Module):
    """A trunk plus the linear embedding head.

    `forward` returns L2-normalised embeddings (B, D); `features` returns the readout maps.
    """

    def __init__(self, arch: str = "resnet18", stem: str = "imagenet", embedding_dim: int = 128,
                 bn_momentum: float | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"unknown architecture {arch!r}; expected one of: {', '.join(ARCHS)}.")
        factory, stems = ARCHS[arch]
        if stem not in stems:
            raise UserError(f"{arch} has no stem {stem!r}; it has: {', '.join(stems)} (model.stem).")
        self.arch, self.stem, self.embedding_dim = arch, stem, embedding_dim
        self.trunk = factory(stem, bn_momentum)
        self.feature_dim = self.trunk.width
        self.head = nn.Linear(self.feature_dim, embedding_dim)

    def meta(self) -> dict:
        """What a checkpoint must match to be loaded into this model."""
        return {"arch": self.arch, "stem": self.stem, "embedding_dim": self.embedding_dim}

    def bn_momentum(self) -> float | None:
        """The running-statistics momentum of its batch norms (torch's sense; None without any), also
        once they are torch's SyncBatchNorm (not a BatchNorm2d)."""
        return next((m.momentum for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)), None)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's pooled features (B, width) that the head reads."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.trunk(x)), dim=1)

    def features(self, x: torch.Tensor, layers=READOUT_LAYERS, conv1_after_maxpool: bool = False) -> dict[str, torch.Tensor]:
        """Readout maps {name: (B, C, H, W)} for the requested layers, in one forward that stops
        at the last one needed; "pixels" is the input itself (no forward at all)."""
        out = {PIXELS: x} if PIXELS in layers else {}
        rest = [n for n in layers if n != PIXELS]
        if rest:
            out.update(self.trunk.features(x, rest, conv1_after_maxpool=conv1_after_maxpool))
        return {n: out[n] for n in layers}


def build_model(arch: str, stem: str, embedding_dim: int, bn_momentum: float | None = None) -> EmbeddingNet:
    return EmbeddingNet(arch, stem, embedding_dim, bn_momentum)


def check_meta(found: dict, expected: dict, source: str) -> None:
    """Raise a UserError naming every field where a checkpoint's model differs from the config."""
    diffs = [f"{k}: checkpoint has {found.get(k)!r}, config asks for {v!r}" for k, v in expected.items() if found.get(k) != v]
    if diffs:
        raise UserError(
            f"{source} was trained with another model ({'; '.join(diffs)}). "
            "Use the same `model` params as the run that wrote it, or rerun that stage."
        )


class RawPixels(nn.Module):
    """The raw-pixel baseline as a readout backbone: `features` returns the normalised input as
    the one layer "pixels"; there is no network and nothing to train."""

    def features(self, x: torch.Tensor, layers=(PIXELS,), conv1_after_maxpool: bool = False) -> dict[str, torch.Tensor]:
        if set(layers) != {PIXELS}:
            raise UserError(f"the raw-pixel baseline has only the layer {PIXELS!r}, not {sorted(set(layers) - {PIXELS})}.")
        return {PIXELS: x}
