"""The paper's published numbers: the only place in the code that holds them.

Source: Zhuang, Zhai, Yamins, ICCV 2019 (arXiv 1903.12355), as collected in
docs/la-method.md, section "Published numbers to reproduce" (its table and the IR per-layer
line below it). All are ResNet-50, in percent. The paper's readout protocol evaluates with
10 crops and also reports the single centre crop; the only number marked as centre crop is
LA's 58.8 on ImageNet, so every other linear number is filed under `top1_10crop`.

A row of this run is the paper's benchmark only when its dataset and architecture are the
paper's: `published` returns None otherwise, so nothing is compared across benchmarks.
"""

from __future__ import annotations

PAPER_ARCH = "resnet50"

# The paper's dataset for each role of this pipeline (the names `prepare` writes).
BENCHMARK = {"object": "imagenet", "transfer": "places205", "detection": "voc07"}

_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")

# (model, task, dataset, layer, metric) -> percent
PUBLISHED: dict[tuple[str, str, str, str, str], float] = {
    ("la", "linear", "imagenet", "conv5", "top1_10crop"): 60.2,
    ("la", "linear", "imagenet", "conv5", "top1"): 58.8,
    ("la", "linear", "places205", "conv5", "top1_10crop"): 50.1,
    ("la", "detection", "voc07", "", "AP50"): 69.1,
    ("ir", "detection", "voc07", "", "AP50"): 65.4,
    **{("ir", "linear", "imagenet", layer, "top1_10crop"): v
       for layer, v in zip(_LAYERS, (15.3, 18.8, 24.9, 40.6, 54.0))},
    **{("ir", "linear", "places205", layer, "top1_10crop"): v
       for layer, v in zip(_LAYERS, (18.1, 22.3, 29.7, 42.1, 45.5))},
}

# The headline table: (label, role, task, layer, metric).
HEADLINE = (
    ("ImageNet linear top-1, conv5, 10-crop", "object", "linear", "conv5", "top1_10crop"),
    ("ImageNet linear top-1, conv5, centre crop", "object", "linear", "conv5", "top1"),
    ("Places205 linear top-1, conv5, 10-crop", "transfer", "linear", "conv5", "top1_10crop"),
    ("VOC07 test detection AP50", "detection", "detection", "", "AP50"),
)


def is_benchmark(role: str, dataset: str, arch: str) -> bool:
    """Whether a role measured on `dataset` with `arch` is the paper's benchmark for that role."""
    return BENCHMARK.get(role) == dataset and arch == PAPER_ARCH


def published(model: str, task: str, dataset: str, arch: str, layer: str, metric: str) -> float | None:
    """The paper's number for exactly this benchmark, or None when the paper has none."""
    if arch != PAPER_ARCH:
        return None
    return PUBLISHED.get((model, task, dataset, layer, metric))


def paper_value(model: str, role: str, task: str, layer: str, metric: str) -> float | None:
    """The paper's number for a headline row, looked up on the role's paper dataset."""
    return PUBLISHED.get((model, task, BENCHMARK[role], layer, metric))
