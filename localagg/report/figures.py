"""The report's figures, as PNG files (matplotlib, Agg backend, imported only when drawing).

Every figure is drawn from the stages' records (and, for pictures, the prepared images), with
its legend outside the data and labels in words. PNGs are written without the Software tag,
so the same records give the same bytes.

    readout        top-1 per layer and model, raw pixels as a line (one panel per dataset)
    pretraining    kNN top-1 per epoch (IR then LA, the supervised reference; epoch 0 is the
                   untrained network) and each objective's loss on its own axis
    detection      AP50 / AP / AP75 per model
    per_class      best-layer top-1 per class and model (object set)
    retrieval      fixed queries and their nearest training images per model
    maps           2-D t-SNE maps of the embeddings per model, coloured by class
    clusters       a gallery of LA's clusters with their purity
    detections     the LA detector's boxes on test images, ground truth dashed
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from localagg.io import atomic_path

from .results import LAYERS, PIXELS, ROLES, Cell, baseline_order, best_layer, models_in
from .results import label as name_of

COLORS = {"la": "tab:red", "ir": "tab:blue", "random": "tab:gray", "supervised": "tab:green", PIXELS: "black"}
IMPORTED_COLORS = ("tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def color(model: str, models: Sequence[str] = ()) -> str:
    """A model's colour in every figure; imported models by their place among `models`."""
    if model in COLORS:
        return COLORS[model]
    imported = [m for m in models if m not in COLORS]
    return IMPORTED_COLORS[imported.index(model) % len(IMPORTED_COLORS)] if model in imported else "tab:purple"


def _ordered(found) -> list[str]:
    """The models of `found` (a dict by model) in the baselines' order (imported after LA)."""
    return [m for m in baseline_order(tuple(found)) if m in found]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8})
    return plt


def _save(fig, path: Path) -> Path:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return path


def _thumb(ax, image: np.ndarray, edge: str | None = None, title: str | None = None) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(edge is not None)
        if edge is not None:
            spine.set_edgecolor(edge)
            spine.set_linewidth(2.5)
    if title:
        ax.set_title(title, fontsize=7)


def readout_figure(cells: list[Cell], path: Path) -> Path:
    """Linear readout top-1 per layer (solid: centre crop, dashed: 10-crop), one line per model,
    the raw-pixel readout as a dotted line, one panel per dataset, error bars = std over seeds."""
    plt = _plt()
    ix = {c.key: c for c in cells}
    fig, axes = plt.subplots(1, len(ROLES), figsize=(5.2 * len(ROLES), 3.6), squeeze=False)
    models = models_in(cells)
    for ax, role in zip(axes[0], ROLES):
        for model in models:
            for metric, style in (("top1", "-"), ("top1_10crop", "--")):
                found = [ix.get((model, "linear", role, layer, metric)) for layer in LAYERS]
                if not all(found):
                    continue
                ax.errorbar(range(len(LAYERS)), [c.stat.mean for c in found], yerr=[c.stat.std or 0 for c in found],
                            color=color(model, models), linestyle=style, marker="o", capsize=3,
                            label=name_of(model) + ("" if metric == "top1" else " (10-crop)"))
        pixels = ix.get((PIXELS, "linear", role, PIXELS, "top1"))
        if pixels is not None:
            ax.axhline(pixels.stat.mean, color=COLORS[PIXELS], linestyle=":", label="raw pixels")
        name = next(c.dataset for c in cells if c.role == role and c.model != PIXELS)
        ax.set(xticks=range(len(LAYERS)), xticklabels=LAYERS, xlabel="readout layer", ylabel="top-1 (%)",
               title=f"{role} set: {name}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def pretraining_figure(curves: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> Path:
    """kNN top-1 per epoch (IR, then LA on from IR's last epoch; the supervised reference; epoch 0
    is the network before training) and the loss of each objective on its own axis.
    `curves` maps ir, la, supervised to {"knn_top1": [(epoch, value)], "loss": [...]}."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.4))
    switch = max((epoch for epoch, _ in curves["ir"]["loss"]), default=0)
    offsets = {"ir": 0, "la": switch, "supervised": 0}
    for model in ("ir", "la", "supervised"):
        points = sorted(curves[model]["knn_top1"])
        axes[0].plot([e + offsets[model] for e, _ in points], [v for _, v in points], marker="o", markersize=3,
                     color=COLORS[model], label=name_of(model))
    axes[0].axvline(switch, color="black", linestyle=":", linewidth=1)
    axes[0].annotate("IR -> LA", (switch, 0.02), xycoords=("data", "axes fraction"), fontsize=7, ha="left")
    axes[0].set(xlabel="epoch (LA continues from IR's last)", ylabel="kNN top-1 (%)",
                title="kNN top-1 on the held-out split")
    labels = {"ir": "IR loss (instance discrimination)", "la": "LA loss (local aggregation)",
              "supervised": "supervised cross-entropy"}
    for ax, model in zip(axes[1:], ("ir", "la", "supervised")):
        points = sorted(curves[model]["loss"])
        ax.plot([e for e, _ in points], [v for _, v in points], marker="o", markersize=3, color=COLORS[model])
        ax.set(xlabel=f"{name_of(model)} epoch", ylabel="mean loss", title=labels[model])
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(loc="center left", bbox_to_anchor=(0.0, -0.35), ncol=3, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def detection_figure(cells: list[Cell], path: Path) -> Path:
    """Detection AP50, AP and AP75 per model as grouped bars with sample-std error bars."""
    plt = _plt()
    metrics = ("AP50", "AP", "AP75")
    ix = {c.key: c for c in cells}
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    width = 0.8 / len(metrics)
    models = models_in(c for c in cells if c.task == "detection")
    for i, metric in enumerate(metrics):
        found = [ix[(model, "detection", "detection", "", metric)] for model in models]
        xs = [m + (i - (len(metrics) - 1) / 2) * width for m in range(len(models))]
        errors = [c.stat.std or 0 for c in found] if any(c.stat.std for c in found) else None
        ax.bar(xs, [c.stat.mean for c in found], width, yerr=errors, capsize=3, label=metric)
    name = next(c.dataset for c in cells if c.role == "detection")
    ax.set(xticks=range(len(models)), xticklabels=[name_of(m) for m in models], ylabel="AP (%)",
           title=f"detection on {name}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def per_class_figure(per_class: dict[str, tuple[str, list[float]]], classes: Sequence[str], dataset: str,
                     path: Path) -> Path:
    """Top-1 per class (best layer of each model, mean over seeds) as a table-like heatmap.
    `per_class` maps a model to (its best layer, [top-1 per class])."""
    plt = _plt()
    models = _ordered(per_class)
    values = np.array([per_class[m][1] for m in models])
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(classes), 0.8 + 0.45 * len(models)))
    ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i in range(len(models)):
        for j in range(len(classes)):
            ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), [f"{name_of(m)} ({per_class[m][0]})" for m in models])
    ax.set_title(f"linear readout top-1 per class (%), best layer, {dataset}")
    fig.tight_layout()
    return _save(fig, path)


def retrieval_figure(retrieval: dict[str, dict], image: Callable[[str, int], np.ndarray],
                     label: Callable[[str, int], int], path: Path, queries: int = 4) -> Path:
    """For each of the first `queries` queries, one row per model: the query, then its nearest
    training images (green border: same class as the query; red: another class).
    `retrieval` maps a model to {"queries": [...], "neighbours": [[...]]}; `image(split, i)`
    and `label(split, i)` read the prepared object set."""
    plt = _plt()
    models = _ordered(retrieval)
    k = len(next(iter(retrieval.values()))["neighbours"][0])
    rows = queries * len(models)
    fig, axes = plt.subplots(rows, k + 1, figsize=(0.62 * (k + 1) + 1.6, 0.66 * rows), squeeze=False)
    for q in range(queries):
        for r, model in enumerate(models):
            ax_row = axes[q * len(models) + r]
            found = retrieval[model]
            query = found["queries"][q]
            _thumb(ax_row[0], image("val", query), title="query" if q == 0 and r == 0 else None)
            same = 0
            for j, n in enumerate(found["neighbours"][q]):
                hit = label("train", n) == label("val", query)
                same += hit
                _thumb(ax_row[j + 1], image("train", n), edge="tab:green" if hit else "tab:red")
            ax_row[0].set_ylabel(f"{name_of(model)}\n{same}/{k}", rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle("nearest training images of validation queries (green: same class)", fontsize=10)
    fig.tight_layout(h_pad=0.1, w_pad=0.1)
    return _save(fig, path)


def maps_figure(maps: dict[str, dict], labels: Callable[[int], int], classes: Sequence[str], path: Path) -> Path:
    """t-SNE maps of the validation embeddings, one panel per model, points coloured by class."""
    plt = _plt()
    models = _ordered(maps)
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.3), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, model in zip(axes[0], models):
        xy = np.asarray(maps[model]["xy"])
        colors = [cmap(labels(i) % 10) for i in maps[model]["indices"]]
        ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=3, linewidths=0)
        ax.set(xticks=[], yticks=[], title=name_of(model))
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=cmap(i % 10), label=c) for i, c in enumerate(classes)]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("t-SNE of the validation embeddings, coloured by class", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def clusters_figure(clusters: list[dict], image: Callable[[str, int], np.ndarray], classes: Sequence[str],
                    path: Path) -> Path:
    """LA's clusters of the memory bank, one row each: members and purity."""
    plt = _plt()
    width = max(len(c["members"]) for c in clusters)
    fig, axes = plt.subplots(len(clusters), width, figsize=(0.7 * width + 2.6, 0.8 * len(clusters)), squeeze=False)
    for row, cluster in zip(axes, clusters):
        for j in range(width):
            if j < len(cluster["members"]):
                _thumb(row[j], image("train", cluster["members"][j]))
            else:
                row[j].axis("off")
        row[0].set_ylabel(f"{cluster['size']} images\npurity {cluster['purity']:.0f}%\n{classes[cluster['majority']]}",
                          rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle("LA's clusters of the memory bank (last clustering): the purest and the least pure", fontsize=10)
    fig.tight_layout(h_pad=0.1, w_pad=0.1)
    return _save(fig, path)


def detections_figure(examples: list[dict], image: Callable[[dict], np.ndarray], classes: Sequence[str],
                      path: Path) -> Path:
    """Predicted boxes (score >= 0.1) on test images, ground truth dashed."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(examples), figsize=(3.2 * len(examples), 3.4), squeeze=False)
    for ax, example in zip(axes[0], examples):
        _thumb(ax, image(example))
        for x0, y0, x1, y1, cls in example["truth"]:
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linestyle="--",
                                       linewidth=1.2))
        for x0, y0, x1, y1, score, cls in example["boxes"]:
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="tab:red", linewidth=1.5))
            ax.text(x0, y0, f"{classes[int(cls)]} {score:.2f}", color="white", fontsize=6, va="bottom",
                    bbox={"facecolor": "tab:red", "edgecolor": "none", "pad": 1})
        ax.set_title(f"test image {example['image_id']}", fontsize=8)
    fig.suptitle("LA backbone's detector on test images (red: predictions, dashed: ground truth)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def best_per_class(cells: list[Cell], per_class: dict[str, list[list[float]]], role: str) -> dict:
    """{model: (best layer, mean top-1 per class over seeds)} from the per-seed per-class lists."""
    out = {}
    for model, by_layer in per_class.items():
        best = best_layer(cells, model, role)
        if best is not None and best.layer in by_layer:
            out[model] = (best.layer, np.mean(np.asarray(by_layer[best.layer]), axis=0).tolist())
    return out
