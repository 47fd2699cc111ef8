"""The report's figures, as PNG files (matplotlib, Agg backend, imported only when drawing).

Every figure is drawn from the stages' records (and, for pictures, the prepared images), with
its legend outside the data and labels in words. PNGs are written without the Software tag,
so the same records give the same bytes.

Legibility: a figure is at most WIDTH inches wide (a page: results.md shown ~880 px wide) with
at most three panels per row, saved at DPI. A text of s pt in a PNG W px wide shows, scaled to
880 px, s * DPI / 72 * min(1, 880 / W) px tall: at 8.8 in and 150 dpi (1,320 px) the smallest
text (MIN_FONT, 8 pt) is 11 px, the axis labels (10 pt) 14 px (tests/test_figures_legible.py).

    readout        top-1 per layer and model, raw pixels as a line (one panel per dataset)
    pretraining    kNN top-1 per epoch (IR then LA, the supervised reference; epoch 0 is the
                   untrained network) and each objective's loss on its own axis (2 x 2 panels)
    detection      AP50 / AP / AP75 per model
    per_class      best-layer top-1 per class and model (object set), 10 classes per panel
    retrieval      fixed queries and their nearest training images per model
    maps           2-D t-SNE maps of the embeddings per model, coloured by class (3 per row)
    clusters       a gallery of LA's clusters with their purity
    detections     the LA detector's boxes on test images, ground truth dashed (2 per row)
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
WIDTH = 8.8    # inches: the widest figure (a page)
DPI = 150      # a WIDTH-wide PNG is 1,320 px, sharp when a browser shows it 880 px wide
MIN_FONT = 8   # pt: the smallest text of any figure (the detector's box labels; tick and gallery labels: 9 pt)
FONTS = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 12}
CROPS = {"top1": ("-", "centre crop"), "top1_10crop": ("--", "10-crop")}  # readout line style and its name


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

    plt.rcParams.update(FONTS)
    return plt


def _grid(n: int, most: int = 3) -> tuple[int, int]:
    """(rows, columns) of `n` panels, at most `most` per row (four panels: 2 x 2)."""
    cols = 2 if n == 4 and most >= 2 else max(1, min(n, most))
    return -(-n // cols), cols


def _save(fig, path: Path) -> Path:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return path


def _photo(ax, image: np.ndarray) -> None:
    """`image` in `ax`, without ticks or frame."""
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()


THUMB = 0.8  # inches: a thumbnail of the retrieval and cluster galleries, at most


def _tile(image: np.ndarray, side: int, edge: str | None, border: int) -> np.ndarray:
    """`image` (H, W) grey or (H, W, 3) RGB uint8 as a (side, side, 3) tile (nearest-neighbour
    resize), framed `border` px wide in the colour `edge` when given."""
    from matplotlib.colors import to_rgb
    from PIL import Image

    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    inner = side - 2 * border if edge else side
    tile = np.full((side, side, 3), 255, np.uint8)
    if edge:
        tile[:] = np.round(np.array(to_rgb(edge)) * 255).astype(np.uint8)
    pixels = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).resize((inner, inner), Image.NEAREST)
    offset = (side - inner) // 2
    tile[offset:offset + inner, offset:offset + inner] = np.asarray(pixels)
    return tile


def _text_inches(text: str, size: float) -> float:
    """The width (in) of `text`'s longest line at `size` pt in the figures' font."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    font = FontProperties(size=size)
    return max(text_to_path.get_text_width_height_descent(line, font, ismath=False)[0] for line in text.splitlines()) / 72


def _gallery(plt, rows: list[list[tuple[np.ndarray, str | None]]], labels: list[str], title: str,
             groups: int = 1, header: str | None = None):
    """A figure of one picture: rows of (image, frame colour or None) tiles, `labels[i]` left of
    row i, a wider gap after every `groups` rows, `header` above the first column. One image in
    one axes placed by hand, pixel for pixel at DPI (not an axes per tile: a gallery of 200
    tiles draws in a fraction of a second)."""
    font, pad = 9, 0.1
    cols = max(len(row) for row in rows)
    label_width = max(_text_inches(text, font) for text in labels) + 2 * pad
    thumb = min(THUMB, (WIDTH - label_width - pad) / cols)
    side, gap, border = round(thumb * DPI), max(2, round(thumb * DPI / 24)), max(2, round(thumb * DPI / 30))
    group_gap = 4 * gap if groups < len(rows) else gap
    tops = [i * (side + gap) + (i // groups) * (group_gap - gap) for i in range(len(rows))]
    canvas = np.full((tops[-1] + side, cols * (side + gap) - gap, 3), 255, np.uint8)
    for top, row in zip(tops, rows):
        for j, (image, edge) in enumerate(row):
            canvas[top:top + side, j * (side + gap):j * (side + gap) + side] = _tile(image, side, edge, border)
    above = 0.75 if header else 0.5  # inches over the picture: the title (and the header)
    width_in, height_in = canvas.shape[1] / DPI, canvas.shape[0] / DPI
    fig_width = max(label_width + width_in + pad, _text_inches(title, FONTS["figure.titlesize"]) + 2 * pad)
    fig_height = above + height_in + pad
    fig = plt.figure(figsize=(fig_width, fig_height))
    ax = fig.add_axes((label_width / fig_width, pad / fig_height, width_in / fig_width, height_in / fig_height))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for top, text in zip(tops, labels):
        ax.text(-gap, top + side / 2, text, ha="right", va="center", fontsize=font)
    if header:
        ax.text(side / 2, -gap, header, ha="center", va="bottom", fontsize=font)
    fig.suptitle(title, y=1 - 0.1 / fig_height, va="top")
    return fig


def readout_figure(cells: list[Cell], path: Path) -> Path:
    """Linear readout top-1 per layer (solid: centre crop, dashed: 10-crop), one line per model,
    the raw-pixel readout as a dotted line, one panel per dataset, error bars = std over seeds."""
    plt = _plt()
    ix = {c.key: c for c in cells}
    fig, axes = plt.subplots(1, len(ROLES), figsize=(WIDTH, 4.4), squeeze=False, layout="constrained")
    models = models_in(cells)
    drawn, crops, pixels_drawn = [], [], False
    for ax, role in zip(axes[0], ROLES):
        for model in models:
            for metric, (style, _) in CROPS.items():
                found = [ix.get((model, "linear", role, layer, metric)) for layer in LAYERS]
                if not all(found):
                    continue
                ax.errorbar(range(len(LAYERS)), [c.stat.mean for c in found], yerr=[c.stat.std or 0 for c in found],
                            color=color(model, models), linestyle=style, marker="o", markersize=4, capsize=3)
                drawn += [model] if model not in drawn else []
                crops += [metric] if metric not in crops else []
        pixels = ix.get((PIXELS, "linear", role, PIXELS, "top1"))
        if pixels is not None:
            ax.axhline(pixels.stat.mean, color=COLORS[PIXELS], linestyle=":")
            pixels_drawn = True
        name = next(c.dataset for c in cells if c.role == role and c.model != PIXELS)
        ax.set(xticks=range(len(LAYERS)), xticklabels=LAYERS, xlabel="readout layer", ylabel="top-1 (%)",
               title=f"{role} set: {name}")
        ax.grid(alpha=0.3)
    line = plt.Line2D
    handles = [line([], [], color=color(m, models), marker="o", markersize=4, label=name_of(m)) for m in drawn]
    handles += [line([], [], color="black", linestyle=CROPS[metric][0], label=CROPS[metric][1]) for metric in crops]
    handles += [line([], [], color=COLORS[PIXELS], linestyle=":", label="raw pixels")] if pixels_drawn else []
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
    return _save(fig, path)


def pretraining_figure(curves: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> Path:
    """kNN top-1 per epoch (IR, then LA on from IR's last epoch; the supervised reference; epoch 0
    is the network before training) and the loss of each objective on its own axis (2 x 2 panels).
    `curves` maps ir, la, supervised to {"knn_top1": [(epoch, value)], "loss": [...]}."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(WIDTH, 6.8), layout="constrained")
    knn_ax, loss_axes = axes[0][0], (axes[0][1], axes[1][0], axes[1][1])
    switch = max((epoch for epoch, _ in curves["ir"]["loss"]), default=0)
    offsets = {"ir": 0, "la": switch, "supervised": 0}
    for model in ("ir", "la", "supervised"):
        points = sorted(curves[model]["knn_top1"])
        knn_ax.plot([e + offsets[model] for e, _ in points], [v for _, v in points], marker="o", markersize=4,
                    color=COLORS[model], label=name_of(model))
    knn_ax.axvline(switch, color="black", linestyle=":", linewidth=1)
    knn_ax.annotate("IR -> LA", (switch, 0.03), xycoords=("data", "axes fraction"), xytext=(3, 0),
                    textcoords="offset points", fontsize=9, ha="left")
    knn_ax.set(xlabel="epoch (LA continues from IR's last)", ylabel="kNN top-1 (%)",
               title="kNN top-1 on the held-out split")
    labels = {"ir": "IR loss (instance discrimination)", "la": "LA loss (local aggregation)",
              "supervised": "supervised cross-entropy"}
    for ax, model in zip(loss_axes, ("ir", "la", "supervised")):
        points = sorted(curves[model]["loss"])
        ax.plot([e for e, _ in points], [v for _, v in points], marker="o", markersize=4, color=COLORS[model])
        ax.set(xlabel=f"{name_of(model)} epoch", ylabel="mean loss", title=labels[model])
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(*knn_ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, frameon=False)
    return _save(fig, path)


def detection_figure(cells: list[Cell], path: Path) -> Path:
    """Detection AP50, AP and AP75 per model as grouped bars with sample-std error bars."""
    plt = _plt()
    metrics = ("AP50", "AP", "AP75")
    ix = {c.key: c for c in cells}
    models = models_in(c for c in cells if c.task == "detection")
    fig, ax = plt.subplots(figsize=(min(WIDTH, 5.0 + 0.5 * len(models)), 4.0), layout="constrained")
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        found = [ix[(model, "detection", "detection", "", metric)] for model in models]
        xs = [m + (i - (len(metrics) - 1) / 2) * width for m in range(len(models))]
        errors = [c.stat.std or 0 for c in found] if any(c.stat.std for c in found) else None
        ax.bar(xs, [c.stat.mean for c in found], width, yerr=errors, capsize=3, label=metric)
    name = next(c.dataset for c in cells if c.role == "detection")
    ax.set(xticks=range(len(models)), ylabel="AP (%)", title=f"detection on {name}")
    ax.set_xticklabels([name_of(m) for m in models], rotation=20 if len(models) > 4 else 0,
                       ha="right" if len(models) > 4 else "center")
    ax.grid(alpha=0.3, axis="y")
    fig.legend(loc="outside right center", frameon=False)
    return _save(fig, path)


PER_CLASS_PANEL = 10  # classes per panel of the per-class figure
PER_CLASS_SHOWN = 3   # panels at most: beyond 30 classes (ImageNet's 1,000) the lowest and highest by the models' mean


def per_class_figure(per_class: dict[str, tuple[str, list[float]]], classes: Sequence[str], dataset: str,
                     path: Path) -> Path:
    """Top-1 per class (best layer of each model, mean over seeds) as a table-like heatmap, one
    row per model, PER_CLASS_PANEL classes per panel. `per_class` maps a model to (its best
    layer, [top-1 per class])."""
    plt = _plt()
    models = _ordered(per_class)
    values = np.array([per_class[m][1] for m in models])  # (models, classes)
    title = f"linear readout top-1 per class (%), best layer, {dataset}"
    if len(classes) > PER_CLASS_PANEL * PER_CLASS_SHOWN:  # a page holds 3 panels: the extremes of the mean
        order = np.argsort(values.mean(axis=0), kind="stable").tolist()
        chunks = [order[:PER_CLASS_PANEL], order[-PER_CLASS_PANEL:]]
        title += (f"\nthe {PER_CLASS_PANEL} lowest (top) and {PER_CLASS_PANEL} highest of {len(classes):,} classes "
                  "by the models' mean")
    else:
        chunks = [list(range(i, min(i + PER_CLASS_PANEL, len(classes)))) for i in range(0, len(classes), PER_CLASS_PANEL)]
    fig, axes = plt.subplots(len(chunks), 1, figsize=(WIDTH, 0.5 + (1.2 + 0.42 * len(models)) * len(chunks)),
                             squeeze=False, layout="constrained")
    for ax, chunk in zip(axes[:, 0], chunks):
        ax.imshow(values[:, chunk], cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for i in range(len(models)):
            for j, c in enumerate(chunk):
                ax.text(j, i, f"{values[i, c]:.0f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(chunk)), [classes[c] for c in chunk], rotation=30, ha="right")
        ax.set_yticks(range(len(models)), [f"{name_of(m)} ({per_class[m][0]})" for m in models])
        if len(chunks) > 1:  # every panel's cells as wide as the first's
            ax.set_xlim(-0.5, PER_CLASS_PANEL - 0.5)
    fig.suptitle(title)
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
    rows, labels = [], []
    for q in range(queries):
        for model in models:
            query = retrieval[model]["queries"][q]
            hits = [label("train", n) == label("val", query) for n in retrieval[model]["neighbours"][q]]
            rows.append([(image("val", query), None)] + [(image("train", n), "tab:green" if hit else "tab:red")
                                                         for n, hit in zip(retrieval[model]["neighbours"][q], hits)])
            labels.append(f"{name_of(model)}\n{sum(hits)}/{k}")
    fig = _gallery(plt, rows, labels, "nearest training images of validation queries (green: same class)",
                   groups=len(models), header="query")
    return _save(fig, path)


def maps_figure(maps: dict[str, dict], labels: Callable[[int], int], classes: Sequence[str], path: Path) -> Path:
    """t-SNE maps of the validation embeddings, one panel per model (at most 3 per row), points
    coloured by class; the legend in the grid's free cell, or below it."""
    plt = _plt()
    models = _ordered(maps)
    rows, cols = _grid(len(models))
    fig, axes = plt.subplots(rows, cols, figsize=(min(WIDTH, 0.4 + 2.8 * cols), 0.6 + 2.8 * rows), squeeze=False,
                             layout="constrained")
    panels = axes.ravel()
    cmap = plt.get_cmap("tab10")
    for ax, model in zip(panels, models):
        xy = np.asarray(maps[model]["xy"])
        colors = [cmap(labels(i) % 10) for i in maps[model]["indices"]]
        ax.scatter(xy[:, 0], xy[:, 1], c=colors, s=4, linewidths=0)
        ax.set(xticks=[], yticks=[], title=name_of(model))
    for ax in panels[len(models):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=cmap(i % 10), label=c) for i, c in enumerate(classes)]
    if len(panels) > len(models):
        panels[len(models)].legend(handles=handles, loc="center", frameon=False, ncol=-(-len(classes) // 12))
    else:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(classes), 5), frameon=False)
    fig.suptitle("t-SNE of the validation embeddings, coloured by class")
    return _save(fig, path)


def clusters_figure(clusters: list[dict], image: Callable[[str, int], np.ndarray], classes: Sequence[str],
                    path: Path) -> Path:
    """LA's clusters of the memory bank, one row each: members and purity."""
    plt = _plt()
    rows = [[(image("train", member), None) for member in cluster["members"]] for cluster in clusters]
    labels = [f"{c['size']} images\npurity {c['purity']:.0f}%\n{classes[c['majority']]}" for c in clusters]
    fig = _gallery(plt, rows, labels, "LA's clusters of the memory bank (last clustering): the purest and the least pure")
    return _save(fig, path)


def detections_figure(examples: list[dict], image: Callable[[dict], np.ndarray], classes: Sequence[str],
                      path: Path) -> Path:
    """Predicted boxes (score >= 0.1) on test images, ground truth dashed (2 images per row)."""
    plt = _plt()
    rows, cols = _grid(len(examples), most=2)
    fig, axes = plt.subplots(rows, cols, figsize=(min(WIDTH, 4.4 * cols), 0.6 + 4.4 * rows), squeeze=False,
                             layout="constrained")
    panels = axes.ravel()
    for ax, example in zip(panels, examples):
        _photo(ax, image(example))
        for x0, y0, x1, y1, cls in example["truth"]:
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linestyle="--",
                                       linewidth=1.2))
        for x0, y0, x1, y1, score, cls in example["boxes"]:
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="tab:red", linewidth=1.5))
            ax.text(x0, y0, f"{classes[int(cls)]} {score:.2f}", color="white", fontsize=MIN_FONT, va="bottom",
                    bbox={"facecolor": "tab:red", "edgecolor": "none", "pad": 1}, clip_on=True)
        ax.set_title(f"test image {example['image_id']}", fontsize=10)
    for ax in panels[len(examples):]:
        ax.axis("off")
    fig.suptitle("LA backbone's detector on test images (red: predictions, dashed: ground truth)")
    return _save(fig, path)


def best_per_class(cells: list[Cell], per_class: dict[str, list[list[float]]], role: str) -> dict:
    """{model: (best layer, mean top-1 per class over seeds)} from the per-seed per-class lists."""
    out = {}
    for model, by_layer in per_class.items():
        best = best_layer(cells, model, role)
        if best is not None and best.layer in by_layer:
            out[model] = (best.layer, np.mean(np.asarray(by_layer[best.layer]), axis=0).tolist())
    return out
