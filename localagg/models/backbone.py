"""torchvision ResNets with the Local Aggregation head: pool -> linear(D) -> L2 normalise.

    v = normalize(W · avgpool(f(x)) + b),   v in R^D (D = 128 in the paper)

Stems, chosen by params:
    imagenet  7x7/2 conv + 3x3/2 max-pool (torchvision's, the paper's; the one Detectron2 converts)
    small     3x3/1 conv, no max-pool (CIFAR-style, for 28-64 px inputs; 4x the compute)

Readout points for the transfer stage ("conv1".."conv5", as VISSL names them res1..res5):
    conv1  stem output after ReLU, before the max-pool (VISSL; after it on request, as the
           authors' TF code reads it)
    conv2..conv5  outputs of layer1..layer4

The paper's ResNets are pre-activation (v2); torchvision's are v1, the usual substitute
(stated in the report).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from ..errors import UserError

ARCHS = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
}
STEMS = ("imagenet", "small")
READOUT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
PIXELS = "pixels"  # the normalised input itself: the raw-pixel baseline, read out like a layer


class EmbeddingNet(nn.Module):
    """A torchvision ResNet trunk plus the linear embedding head.

    `forward` returns L2-normalised embeddings (B, D); `features` returns the readout maps.
    """

    def __init__(self, arch: str = "resnet18", stem: str = "imagenet", embedding_dim: int = 128):
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"unknown architecture {arch!r}; expected one of: {', '.join(ARCHS)}.")
        if stem not in STEMS:
            raise UserError(f"unknown stem {stem!r}; expected one of: {', '.join(STEMS)}.")
        self.arch, self.stem, self.embedding_dim = arch, stem, embedding_dim
        trunk = ARCHS[arch](weights=None)
        if stem == "small":
            trunk.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            trunk.maxpool = nn.Identity()
        self.feature_dim = trunk.fc.in_features
        trunk.fc = nn.Identity()
        self.trunk = trunk
        self.head = nn.Linear(self.feature_dim, embedding_dim)

    def meta(self) -> dict:
        """What a checkpoint must match to be loaded into this model."""
        return {"arch": self.arch, "stem": self.stem, "embedding_dim": self.embedding_dim}

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled conv5 features (B, C)."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.trunk(x)), dim=1)

    def features(self, x: torch.Tensor, layers=READOUT_LAYERS, conv1_after_maxpool: bool = False) -> dict[str, torch.Tensor]:
        """Readout maps {name: (B, C, H, W)} for the requested layers, in one forward; conv1 is
        the stem's ReLU output, or its max-pooled output with `conv1_after_maxpool` (the
        authors' TF readout point); "pixels" is the input itself (no forward at all)."""
        t = self.trunk
        out = {"pixels": x} if PIXELS in layers else {}
        if all(n in out for n in layers):
            return {n: out[n] for n in layers}
        x = t.relu(t.bn1(t.conv1(x)))
        out["conv1"] = x
        x = t.maxpool(x)
        if conv1_after_maxpool:
            out["conv1"] = x
        for name, layer in zip(READOUT_LAYERS[1:], (t.layer1, t.layer2, t.layer3, t.layer4)):
            x = layer(x)
            out[name] = x
            if all(n in out for n in layers):
                break
        return {n: out[n] for n in layers}


def build_model(arch: str, stem: str, embedding_dim: int) -> EmbeddingNet:
    return EmbeddingNet(arch, stem, embedding_dim)


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
