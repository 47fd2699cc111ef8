"""The numbers of one run, aggregated over seeds: the rows of results.csv.

`RunMetrics` holds every metrics file the report reads, each as a `Record` that remembers
its path (so every number can be traced to a file) and the stage that writes it (so a
malformed file says what to rerun). `aggregate` turns them into `Cell`s, one per
(model, task, role, layer, metric) with the mean, sample std and count over seeds;
`csv_text` writes them with the paper's number where the benchmark is the paper's.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field

from localagg.errors import UserError

from . import comparability
from .paper import network_of, paper_value

MODELS = ("la", "ir", "random", "supervised")
PIXELS = "pixels"                 # the raw-pixel baseline: one readout "layer" and its own kNN
TRANSFER_MODELS = (*MODELS, PIXELS)
# from nothing learned to labels used: the order of the baselines table and the pictures' rows
BASELINE_ORDER = (PIXELS, "random", "ir", "la", "supervised")
NAMES = {"la": "LA", "ir": "IR", "random": "random network", "supervised": "supervised", PIXELS: "raw pixels"}
# imported models (the params' `external` entries) go by their entry's name, after MODELS in the
# tables and beside LA in the baselines' order


def label(model: str) -> str:
    """A model's name in tables and figures: NAMES, or an imported model's own name."""
    return NAMES.get(model, model)


def models_in(cells) -> tuple[str, ...]:
    """The networks (not the pixel baseline) of `cells` (Cells, or keys of an index), in the
    order `aggregate` emits them: MODELS, then the imported ones."""
    found = dict.fromkeys((c.model if isinstance(c, Cell) else c[0]) for c in cells)
    found.pop(PIXELS, None)
    return tuple(m for m in MODELS if m in found) + tuple(m for m in found if m not in MODELS)


def baseline_order(models) -> tuple[str, ...]:
    """BASELINE_ORDER with the imported models among `models` after LA (learned without labels)."""
    imported = tuple(m for m in models if m not in MODELS and m != PIXELS)
    i = BASELINE_ORDER.index("la") + 1
    return BASELINE_ORDER[:i] + imported + BASELINE_ORDER[i:]
ROLES = ("object", "transfer")
# an imported model's `published:` key -> (task, role, layer) of this run's cell it stands beside;
# layer None: the best layer (best_layer)
PUBLISHED_CELLS = {
    "object_best_top1": ("linear", "object", None),          # linear top-1 on the object set (ImageNet's role)
    "object_conv5_top1": ("linear", "object", "conv5"),
    "transfer_best_top1": ("linear", "transfer", None),      # on the transfer set (Places205's role)
    "transfer_conv5_top1": ("linear", "transfer", "conv5"),
    "object_knn_top1": ("knn", "object", "embedding"),       # kNN top-1 of the embedding
    "detection_AP50": ("detection", "detection", ""),
}
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
LINEAR_METRICS = ("top1", "top5", "top1_10crop", "top5_10crop")
TEN_CROP = ("top1_10crop", "top5_10crop")  # absent when the readout ran with ten_crop off
KNN_LAYERS = ("embedding", "conv5")
DETECTION_METRICS = ("AP50", "AP", "AP75")
CSV_COLUMNS = ("model", "task", "dataset", "layer", "metric", "value", "paper")


@dataclass(frozen=True)
class Record:
    """One metrics file: its path, its parsed JSON and the DVC stage that writes it."""

    path: str
    data: dict
    stage: str

    def get(self, *keys: str, optional: bool = False):
        """data[k1][k2]...; a missing key is a UserError naming the file and key (None if optional)."""
        node = self.data
        for i, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                if optional:
                    return None
                raise UserError(f"{self.path}: missing key {'.'.join(keys[:i + 1])}; the file is stale or "
                                f"not from this pipeline: rerun `dvc repro {self.stage}`.")
            node = node[key]
        return node

    def number(self, *keys: str) -> float:
        """A finite number at data[k1][k2]...; anything else is a UserError naming the file and key."""
        value = self.get(*keys)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{self.path}: {'.'.join(keys)} should be a finite number, got {value!r}: "
                            f"rerun `dvc repro {self.stage}`.")
        return float(value)

    def percent(self, *keys: str) -> float:
        """A number in [0, 100] at data[k1][k2]... (accuracies, APs); else a UserError naming the file and key."""
        value = self.number(*keys)
        if not 0.0 <= value <= 100.0:
            raise UserError(f"{self.path}: {'.'.join(keys)} = {value!r} is not a percentage in [0, 100]: "
                            f"rerun `dvc repro {self.stage}`.")
        return value


@dataclass
class RunMetrics:
    """Everything the report reads from one run of the pipeline."""

    prepare: Record
    pretrain: dict[str, Record]                    # ir, la, supervised -> pretraining summary
    transfer: dict[tuple[str, str], list[Record]]  # (model or pixels, role) -> one record per readout seed
    detection: dict[str, list[Record]]             # model -> one record per seed
    curves: dict[str, dict[str, list[tuple[float, float]]]]  # ir, la, supervised -> loss/knn_top1 -> [(epoch, value)]
    imported: dict[str, Record] = field(default_factory=dict)  # external entry -> its import record
    seed_sweep: Record | None = None  # a pretraining-seed sweep's runs (seeds.RECORD), when one was measured

    @property
    def models(self) -> tuple[str, ...]:
        """The networks evaluated: the pipeline's own, then the imported ones."""
        return (*MODELS, *self.imported)

    @property
    def transfer_models(self) -> tuple[str, ...]:
        return (*self.models, PIXELS)

    def records(self) -> list[Record]:
        """Every metrics file, in pipeline order."""
        out = [self.prepare, *self.pretrain.values(), *self.imported.values()]
        for role in ROLES:
            for model in self.transfer_models:
                out += self.transfer[(model, role)][:1]  # the seeds of a cell share its record file
        for model in self.models:
            out += self.detection[model]
        return out


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (None for one value) and count of a number over seeds."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass(frozen=True)
class Cell:
    """One evaluation number of one model, over seeds, with the files it came from."""

    model: str
    task: str       # linear | knn | detection
    role: str       # object | transfer | detection
    dataset: str    # the dataset's real name, e.g. fashion_mnist, imagenet, voc07
    arch: str
    layer: str      # conv1..conv5 (linear), embedding | conv5 (knn), "" (detection)
    metric: str
    stat: Stat
    sources: tuple[str, ...]
    differences: tuple[comparability.Difference, ...] = ()  # how its protocol differs from the paper's

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return self.model, self.task, self.role, self.layer, self.metric

    @property
    def published(self) -> float | None:
        """The paper's number for this row of its benchmark with this cell's network, comparable or not
        (None where the paper's numbers for that network are not verified)."""
        return paper_value(self.model, self.role, self.task, self.layer, self.metric, network_of(self.arch))

    @property
    def paper(self) -> float | None:
        """The paper's number when this cell is comparable with it (the whole protocol is the paper's), else None."""
        return None if self.differences else self.published


def identity(records: list[Record]) -> tuple[str, str]:
    """The (dataset_name, arch) that all `records` share; files that disagree are a UserError."""
    found = {(r.get("dataset_name"), r.get("arch")): r for r in records}
    if len(found) > 1:
        listed = "; ".join(f"{r.path}: {name}, {arch}" for (name, arch), r in found.items())
        raise UserError(f"metrics files of the same evaluation disagree on dataset or architecture ({listed}); "
                        f"some are stale: rerun `dvc repro {records[0].stage.split('@')[0]}`.")
    return next(iter(found))


def differences(model: str, task: str, role: str, records: list[Record]) -> tuple[str, ...]:
    """Everything that differs from the paper's protocol in any of `records` (la and ir rows of the
    paper's tables; () elsewhere, where the paper has no number to compare with)."""
    if model not in ("la", "ir") or task not in ("linear", "detection"):
        return ()
    found: list[str] = []
    for r in records:
        protocol = r.get("protocol", optional=True) or {}
        provenance = r.get("provenance", optional=True) or []
        found += comparability.pretraining_differences(model, provenance)
        if task == "linear":
            network = comparability.provenance_network(provenance) or "resnet50"
            found += comparability.readout_differences(role, protocol, network)
        else:
            found += comparability.detection_differences(str(r.get("dataset_name")), protocol)
    return tuple(dict.fromkeys(found))


def _cell(model, task, role, ident, layer, metric, records: list[Record], keys, diffs=()) -> Cell:
    values = [r.percent(*keys) for r in records]
    return Cell(model, task, role, *ident, layer, metric, Stat.of(values), tuple(r.path for r in records), diffs)


def aggregate(m: RunMetrics) -> list[Cell]:
    """Every evaluation number of the run, averaged over seeds, in the order of results.csv.

    Reads the transfer records (linear.<layer>.<metric>, knn.<layer>; the pixel baseline's
    layer and kNN are both "pixels") and the detection records (AP50, AP, AP75). 10-crop
    numbers are left out when no seed has them.
    """
    cells = []
    idents = {role: identity([r for model in m.models for r in m.transfer[(model, role)]]) for role in ROLES}
    for role in ROLES:
        for model in m.transfer_models:
            recs = m.transfer[(model, role)]
            diffs = differences(model, "linear", role, recs)
            for layer in ((PIXELS,) if model == PIXELS else LAYERS):
                for metric in LINEAR_METRICS:
                    if metric in TEN_CROP and all(r.get("linear", layer, metric, optional=True) is None for r in recs):
                        continue
                    cells.append(_cell(model, "linear", role, idents[role], layer, metric, recs,
                                       ("linear", layer, metric), diffs))
    for role in ROLES:
        for model in m.transfer_models:
            for layer in ((PIXELS,) if model == PIXELS else KNN_LAYERS):  # deterministic: one value, not per seed
                cells.append(_cell(model, "knn", role, idents[role], layer, "top1", m.transfer[(model, role)][:1],
                                   ("knn", layer)))
    if not any(m.detection[model] for model in m.models):
        return cells  # no detection cells (detection.seeds: [])
    ident = identity([r for model in m.models for r in m.detection[model]])
    for model in m.models:
        diffs = differences(model, "detection", "detection", m.detection[model])
        for metric in DETECTION_METRICS:
            cells.append(_cell(model, "detection", "detection", ident, "", metric, m.detection[model], (metric,),
                               diffs))
    return cells


def best_layer(cells: list[Cell], model: str, role: str) -> Cell | None:
    """The linear centre-crop top-1 cell of `model` on `role` with the highest mean (layer chosen
    on the reported split, as the paper's tables do)."""
    found = [c for c in cells if (c.model, c.task, c.role, c.metric) == (model, "linear", role, "top1")]
    return max(found, key=lambda c: c.stat.mean) if found else None


def number_text(value: float | None) -> str:
    """A CSV number: at most 4 decimals, no trailing zeros; empty for None."""
    return "" if value is None else f"{value:.4f}".rstrip("0").rstrip(".")


def csv_text(cells: list[Cell]) -> str:
    """results.csv: one row per cell, `value` the mean over seeds, `paper` only for the paper's benchmark."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in cells:
        writer.writerow((c.model, c.task, c.dataset, c.layer, c.metric, number_text(c.stat.mean), number_text(c.paper)))
    return buf.getvalue()
