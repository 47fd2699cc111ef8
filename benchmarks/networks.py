"""One training step of each network, as img/s and as a ratio against ResNet-50 v1's.

A step is forward, a trivial loss on the embedding, backward and an SGD step (pretrain's
`_bare_img_per_s`: tensors already in memory, the best of `repeats` timings of `steps` steps
after 2 warm-up steps), at the paper's 224 px and at the embedded default's 40 px. The floor
is torchvision's ResNet-50 (v1) at 224 px, and ResNet-18 v1 at 40 px (the default network),
measured in the same run, so the ratios hold on any machine where the absolute img/s do not.

Run: python -m benchmarks.networks   (prints the rows; writes no file)
"""

from __future__ import annotations

import torch

from localagg.models.backbone import min_size
from localagg.models.config import ModelConfig

from .pretrain import _bare_img_per_s

PAPER_SIZE = ("resnet50", "preact_resnet50", "resnet18", "preact_resnet18", "alexnet", "vgg16")
DEFAULT_SIZE = ("resnet18", "preact_resnet18")


def _best(arch: str, size: int, batch: int, steps: int, repeats: int, device: torch.device) -> float:
    cfg = ModelConfig(arch=arch)
    return max(_bare_img_per_s(cfg, batch, size, steps, device, channels_last=False) for _ in range(repeats))


def bench_networks(batch: int = 8, steps: int = 2, repeats: int = 2, small_batch: int = 64,
                   device: str = "auto") -> list[dict]:
    """[{arch, size, batch, img_per_s, floor, ratio}] for every network at 224 px (floor: resnet50)
    and the ResNet-18s at 40 px (floor: resnet18)."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    rows = []
    for archs, size, b, floor_arch in ((PAPER_SIZE, 224, batch, "resnet50"), (DEFAULT_SIZE, 40, small_batch, "resnet18")):
        speeds = {a: _best(a, size, b, steps, repeats, dev) for a in archs if min_size(a) <= size}
        rows += [{"arch": a, "size": size, "batch": b, "img_per_s": v, "floor": floor_arch,
                  "ratio": v / speeds[floor_arch]} for a, v in speeds.items()]
    return rows


if __name__ == "__main__":
    for row in bench_networks():
        print(row)
