"""Every figure of the report is legible on a page: drawn from tiny synthetic inputs, its
smallest text is at least MIN_PX tall once the PNG is shown PAGE px wide (a browser scales a
wider image down: text px = size pt * dpi / 72 * PAGE / width px), and no legend or text lies
outside the figure (where it would be cut off)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localagg.report import figures
from localagg.report.results import LAYERS, PIXELS, Cell, Stat

PAGE = 880    # px: results.md's width on a page
MIN_PX = 9.0  # px: the smallest text a reader can read there
CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
OWN = ("la", "ir", "random", "supervised")


def measure(fig) -> dict:
    """What the saved figure shows: the size (pt) of each visible non-empty text it draws
    (fig.findobj(Text), less those a draw skips), and the texts and legends that reach outside
    the figure."""
    import matplotlib.legend
    import matplotlib.text
    from matplotlib.transforms import Bbox

    drawn = {}
    draw = matplotlib.text.Text.draw

    def record(text, renderer):  # the texts a draw shows (not, e.g., tick labels beyond the axis' limits)
        drawn[id(text)] = text
        return draw(text, renderer)

    matplotlib.text.Text.draw = record
    try:
        fig.canvas.draw()
    finally:
        matplotlib.text.Text.draw = draw
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox.padded(1.0)  # a pixel of rounding

    def outside(box) -> bool:
        return box is not None and not (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1))

    sizes, cut = [], []
    for text in drawn.values():
        if not (text.get_visible() and text.get_text().strip()):
            continue
        sizes.append((text.get_fontsize(), text.get_text()))
        box = text.get_window_extent(renderer)
        if text.get_clip_on() and text.get_clip_box() is not None:  # drawn only inside its axes
            box = Bbox.intersection(box, text.get_clip_box())
        if outside(box):
            cut.append(f"text {text.get_text()!r}")
    for legend in fig.findobj(matplotlib.legend.Legend):
        if outside(legend.get_window_extent(renderer)):
            cut.append(f"legend {[t.get_text() for t in legend.get_texts()]}")
    return {"sizes": sizes, "cut": cut}


@pytest.fixture
def drawn(monkeypatch):
    """{png name: measure(fig)} of every figure the module saves during the test."""
    found, save = {}, figures._save

    def measured_save(fig, path: Path) -> Path:
        found[Path(path).name] = measure(fig)
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", measured_save)
    return found


def problems(png: Path, seen: dict, dpi: int = figures.DPI) -> list[str]:
    """Why the figure saved as `png` is not legible at PAGE px ([] when it is)."""
    from PIL import Image

    with Image.open(png) as im:
        width = im.size[0]
    scale = dpi / 72 * min(1.0, PAGE / width)
    size, text = min(seen["sizes"])
    found = [] if size * scale >= MIN_PX else [f"{png.name} ({width} px wide): {text!r} at {size} pt is "
                                              f"{size * scale:.1f} px tall at {PAGE} px"]
    return found + [f"{png.name}: {c} reaches outside the figure" for c in seen["cut"]]


def _cells(models) -> list[Cell]:
    """Readout (both crops, both sets), the raw pixels' and the detection cells of `models`."""
    cells = []
    for m, model in enumerate(models):
        for role, dataset in (("object", "fashion_mnist_canvas40"), ("transfer", "mnist_5k_canvas40")):
            for i, layer in enumerate(LAYERS):
                for metric, extra in (("top1", 0.0), ("top1_10crop", 1.0)):
                    cells.append(Cell(model, "linear", role, dataset, "resnet18", layer, metric,
                                      Stat(50.0 + 3 * m + 2 * i + extra, 0.5, 2), ()))
        for metric, value in (("AP50", 30.0), ("AP", 15.0), ("AP75", 8.0)):
            cells.append(Cell(model, "detection", "detection", "synthetic_voc", "resnet18", "", metric,
                              Stat(value + m, 1.0, 2), ()))
    for role, dataset in (("object", "fashion_mnist_canvas40"), ("transfer", "mnist_5k_canvas40")):
        cells.append(Cell(PIXELS, "linear", role, dataset, "none", PIXELS, "top1", Stat(40.0, 0.0, 2), ()))
    return cells


def _image(split: str, index: int) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, (28, 28), dtype=np.uint8)


def draw_all(out: Path, models) -> None:
    """Every figure of figures.py from small synthetic inputs of `models` (and the raw pixels)."""
    rng = np.random.default_rng(0)
    shown = (*models, PIXELS)
    figures.readout_figure(_cells(models), out / "readout.png")
    curve = lambda start, n: [(float(e), start - e) for e in range(1, n + 1)]  # noqa: E731
    figures.pretraining_figure({"ir": {"knn_top1": [(0.0, 60.0), *curve(70, 4)], "loss": curve(9, 4)},
                                "la": {"knn_top1": [(0.0, 66.0), *curve(75, 6)], "loss": curve(3, 6)},
                                "supervised": {"knn_top1": [(0.0, 60.0), (3.0, 75.0)], "loss": curve(2, 3)}},
                               out / "pretraining.png")
    figures.detection_figure(_cells(models), out / "detection.png")
    figures.per_class_figure({m: ("conv3", rng.uniform(10, 99, len(CLASSES)).tolist()) for m in shown}, CLASSES,
                             "fashion_mnist_canvas40", out / "per_class.png")
    figures.retrieval_figure({m: {"queries": list(range(8)), "neighbours": rng.integers(0, 100, (8, 8)).tolist()}
                              for m in shown}, _image, lambda split, i: i % 10, out / "retrieval.png")
    figures.maps_figure({m: {"indices": list(range(60)), "xy": rng.normal(size=(60, 2)).tolist()} for m in shown},
                        lambda i: i % 10, CLASSES, out / "maps.png")
    figures.clusters_figure([{"size": 111 - 10 * c, "purity": 100.0 - 15 * c, "majority": c, "members": list(range(8))}
                             for c in range(6)], _image, CLASSES, out / "clusters.png")
    examples = [{"image_id": f"00030{i}", "truth": [[10, 12, 40, 44, 2]],
                 "boxes": [[8, 10, 42, 46, 0.87, 2], [30, 30, 62, 62, 0.12, 9]]} for i in range(4)]
    figures.detections_figure(examples, lambda e: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), CLASSES,
                              out / "detections.png")


@pytest.mark.parametrize("models", [OWN, (*OWN, "moco_v2", "simclr")], ids=["pipeline", "two imported"])
def test_every_figure_is_legible_at_page_width_with_no_legend_cut_off(models, drawn, tmp_path):
    draw_all(tmp_path, models)
    assert sorted(drawn) == sorted(f"{name}.png" for name in ("readout", "pretraining", "detection", "per_class",
                                                               "retrieval", "maps", "clusters", "detections"))
    found = [p for name, seen in drawn.items() for p in problems(tmp_path / name, seen)]
    assert found == []


def test_the_check_flags_a_wide_row_of_small_text_and_a_legend_outside_the_figure(drawn, tmp_path):
    """The layouts the figures had before: four panels in a 17 in row, 9 pt text, and the
    figure's legend beside the figure (saved only through bbox_inches="tight")."""
    plt = figures._plt()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.4))
    for ax in axes:
        ax.plot([0, 1], [0, 1], label="LA")
        ax.set_xlabel("epoch", fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    figures._save(fig, tmp_path / "wide.png")
    found = problems(tmp_path / "wide.png", drawn["wide.png"])
    assert "'0.0' at 9.0 pt is 6." in found[0]  # a tick label: 9 pt * 150 / 72 * 880 / ~2,600 px
    assert found[1:] == ["wide.png: text 'LA' reaches outside the figure",
                         "wide.png: legend ['LA'] reaches outside the figure"]


def test_a_thousand_classes_show_the_lowest_and_highest_in_two_panels(drawn, tmp_path, monkeypatch):
    """ImageNet's 1,000 classes would be 100 stacked panels: the figure keeps one page."""
    classes = [f"class {i}" for i in range(1000)]
    values = np.linspace(1, 99, 1000)[::-1]  # class 0 highest, class 999 lowest
    saved, save = {}, figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: saved.setdefault("fig", fig) and save(fig, path))
    figures.per_class_figure({m: ("conv5", values.tolist()) for m in ("la", "ir")}, classes, "imagenet",
                             tmp_path / "per_class.png")
    axes = saved["fig"].get_axes()
    assert len(axes) == 2
    assert [t.get_text() for t in axes[0].get_xticklabels()][0] == "class 999"   # the lowest first
    assert [t.get_text() for t in axes[1].get_xticklabels()][-1] == "class 0"    # the highest last
    assert "10 lowest (top) and 10 highest of 1,000 classes" in saved["fig"]._suptitle.get_text()
    assert problems(tmp_path / "per_class.png", drawn["per_class.png"]) == []
