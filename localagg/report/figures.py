"""The report's figures, as PNG files (matplotlib, Agg backend, imported only when drawing).

PNGs are written without the Software tag, so the same numbers give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

from localagg.io import atomic_path

from .results import LAYERS, MODELS, ROLES, Cell

COLORS = {"la": "tab:red", "ir": "tab:blue", "random": "tab:gray", "supervised": "tab:green"}


def _figure(ncols: int, width: float = 5.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.8), squeeze=False)
    return fig, list(axes[0])


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def readout_figure(cells: list[Cell], path: Path) -> Path:
    """Linear readout top-1 per layer (solid: centre crop, dashed: 10-crop), one line per model,
    one panel per dataset, error bars = sample std over seeds. Writes `path`."""
    ix = {c.key: c for c in cells}
    fig, axes = _figure(len(ROLES))
    for ax, role in zip(axes, ROLES):
        for model in MODELS:
            for metric, style in (("top1", "-"), ("top1_10crop", "--")):
                found = [ix.get((model, "linear", role, layer, metric)) for layer in LAYERS]
                if not all(found):
                    continue
                ax.errorbar(range(len(LAYERS)), [c.stat.mean for c in found], yerr=[c.stat.std or 0 for c in found],
                            color=COLORS[model], linestyle=style, marker="o", capsize=3,
                            label=model if metric == "top1" else None)
        name = next(c.dataset for c in cells if c.role == role)
        ax.set(xticks=range(len(LAYERS)), xticklabels=LAYERS, xlabel="layer", ylabel="top-1 (%)",
               title=f"{role} set: {name} (solid centre, dashed 10-crop)")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def pretraining_figure(curves: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> Path:
    """Loss and kNN top-1 per epoch: IR, then LA on the same epoch axis with a line at the switch.
    `curves` maps ir and la to {"loss": [(epoch, value)], "knn_top1": [...]}. Writes `path`."""
    fig, axes = _figure(2)
    switch = max(step for step, _ in curves["ir"]["loss"])
    for ax, metric, label in zip(axes, ("loss", "knn_top1"), ("loss", "kNN top-1 (%)")):
        for model, offset in (("ir", 0), ("la", switch)):
            points = sorted(curves[model][metric])
            ax.plot([s + offset for s, _ in points], [v for _, v in points], marker="o", color=COLORS[model],
                    label=model.upper())
        ax.axvline(switch + 0.5, color="black", linestyle=":", label="IR -> LA")
        ax.set(xlabel="epoch", ylabel=label, title=f"pretraining {label}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def detection_figure(cells: list[Cell], path: Path) -> Path:
    """Detection AP50, AP and AP75 per model as grouped bars with sample-std error bars. Writes `path`."""
    metrics = ("AP50", "AP", "AP75")
    ix = {c.key: c for c in cells}
    fig, axes = _figure(1, width=6.5)
    ax = axes[0]
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        found = [ix[(model, "detection", "detection", "", metric)] for model in MODELS]
        xs = [m + (i - (len(metrics) - 1) / 2) * width for m in range(len(MODELS))]
        errors = [c.stat.std or 0 for c in found] if any(c.stat.std for c in found) else None
        ax.bar(xs, [c.stat.mean for c in found], width, yerr=errors, capsize=3, label=metric)
    name = next(c.dataset for c in cells if c.role == "detection")
    ax.set(xticks=range(len(MODELS)), xticklabels=MODELS, ylabel="AP (%)", title=f"detection on {name}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return _save(fig, path)
