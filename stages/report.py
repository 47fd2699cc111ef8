"""Stage `report`: every stage's metrics gathered into tables and figures next to the paper's
numbers; with `compare`, one table across DVC experiments and commits.

`run` reads the records (the full numbers beside each headline metrics file; relative to the
repository root; seeds from `transfer.seeds` and `detection.seeds` in the params file, [0] when
absent):

    records/prepare.json                                   dataset names, sizes, class counts
    records/pretrain_ia.json, pretrain_la.json, supervised.json
                                                           curves, clustering, protocol, provenance
    records/transfer/<model>-<dataset>.json                model in pixels, la, ir, random, supervised;
                                                           dataset in object, transfer; a run per seed
                                                           and the views (retrieval, map, per class)
    records/detection/<model>-seed<s>.json
    data/prepared/object, data/prepared/detection          the images the figures show

and writes <out>/results.csv, <out>/results.md and <out>/figures/<name>.png for each name of
`FIGURES`. `compare` reads `dvc exp show --json -A` (or a saved copy) and writes <out>/compare.{csv,md}.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import yaml

from localagg.errors import UserError
from localagg.io import atomic_path, write_json, write_text
from localagg.report.figures import (best_per_class, clusters_figure, detection_figure, detections_figure,
                                     maps_figure, per_class_figure, pretraining_figure, readout_figure,
                                     retrieval_figure)
from localagg.report.markdown import per_class_facts, render, retrieval_facts
from localagg.report import seeds as seeds_mod
from localagg.report.results import (MODELS, PIXELS, ROLES, Record, RunMetrics, aggregate, baseline_order, csv_text,
                                     label)
from localagg.report.sweep import Run, compare_csv, compare_markdown, comparison, flatten

from .imports import record_of
from .roots import use_dataset_roots
from .paths import (DETECTION_MANIFEST, STAGE_OF_MODEL, detection_metrics_path, detection_stage, record_path,
                    transfer_metrics_path, transfer_stage)

PRETRAIN_STAGES = {m: s for m, s in STAGE_OF_MODEL.items() if m != "random"}  # models with pretraining metrics
CURVES = ("loss", "knn_top1")
FIGURES = {name: f"figures/{name}.png" for name in
           ("readout", "pretraining", "per_class", "retrieval", "maps", "clusters", "detection", "detections")}


class SweepMetric(NamedTuple):
    """A headline number of `compare`, per model: `key` of the metrics files matching `pattern`
    (the model is its `model` group), the mean over the files found (detection seeds)."""

    label: str
    files: str     # the files, as compare.md names them
    pattern: str   # regex on the file paths `dvc exp show` lists
    key: str


SWEEP_METRICS = {  # the report's headline numbers: fresh-feature kNN, best layer, conv5, transfer, AP50
    "knn": SweepMetric("kNN top-1 of the embedding, object set", "metrics/transfer/<model>-object.json",
                       r"metrics/transfer/(?P<model>[^/]+)-object\.json", "knn_top1"),
    "object_best": SweepMetric("best layer linear top-1 (centre crop), object set",
                               "metrics/transfer/<model>-object.json",
                               r"metrics/transfer/(?P<model>[^/]+)-object\.json", "best_top1"),
    "object_conv5": SweepMetric("conv5 linear top-1 (centre crop), object set", "metrics/transfer/<model>-object.json",
                                r"metrics/transfer/(?P<model>[^/]+)-object\.json", "conv5_top1"),
    "transfer_best": SweepMetric("best layer linear top-1 (centre crop), transfer set",
                                 "metrics/transfer/<model>-transfer.json",
                                 r"metrics/transfer/(?P<model>[^/]+)-transfer\.json", "best_top1"),
    "AP50": SweepMetric("detection AP50", "metrics/detection/<model>-seed<s>.json",
                        r"metrics/detection/(?P<model>[^/]+)-seed\d+\.json", "AP50"),
}


def read_seeds(params: Path) -> dict[str, list[int]]:
    """{"transfer": [...], "detection": [...]} from `<section>.seeds` of the params file (plain YAML);
    "imported": the names of its `external` entries (the imported models)."""
    if not params.is_file():
        raise UserError(f"params file {params} does not exist (pass --params PATH, default params.yaml).")
    try:
        data = yaml.safe_load(params.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{params} is not valid YAML: {exc}") from None
    seeds = {}
    for section in ("transfer", "detection"):  # detection.seeds may be []: no detection cells
        value = (data.get(section) or {}).get("seeds", [0])
        if not (isinstance(value, list) and (value or section == "detection")
                and all(type(s) is int and s >= 0 for s in value) and len(set(value)) == len(value)):
            raise UserError(f"{params}: {section}.seeds should be a{' non-empty' if section == 'transfer' else ''} "
                            f"list of distinct non-negative integers, got {value!r}.")
        seeds[section] = value
    from .paths import imported_models

    seeds["imported"] = list(imported_models(params))
    return seeds


def pretrain_record(stage: str) -> Path:
    return record_path(Path("metrics") / f"{stage}.json")


PREPARE_RECORD = record_path(Path("metrics/prepare.json"))
OBJECT_DIR = Path("data/prepared/object")


def _models(seeds: dict) -> tuple[str, ...]:
    """The networks of the run: the pipeline's own, then the imported ones (`read_seeds`)."""
    return (*MODELS, *seeds.get("imported", ()))


def expected_files(seeds: dict[str, list[int]]) -> list[tuple[Path, str]]:
    """Every file the report reads, with the DVC stage that writes it (`seeds` from `read_seeds`):
    the records (records/..., the full numbers beside each metrics file, curves included)."""
    files = [(PREPARE_RECORD, "prepare")]
    files += [(pretrain_record(stage), stage) for stage in PRETRAIN_STAGES.values()]
    files += [(record_of(name), f"import@{name}") for name in seeds.get("imported", ())]
    files += [(record_path(transfer_metrics_path(m, d)), transfer_stage(m, d))
              for d in ROLES for m in (*_models(seeds), PIXELS)]
    files += [(record_path(detection_metrics_path(m, s)), detection_stage(m, s))
              for m in _models(seeds) for s in seeds["detection"]]
    return files


def declared_metrics(seeds: dict[str, list[int]]) -> set[Path]:
    """The metrics files the stages write (each record's counterpart under metrics/)."""
    out = {Path("metrics") / f"{stage}.json" for stage in PRETRAIN_STAGES.values()}  # prepare: a record only
    out |= {transfer_metrics_path(m, d) for d in ROLES for m in (*_models(seeds), PIXELS)}
    out |= {detection_metrics_path(m, s) for m in _models(seeds) for s in seeds["detection"]}
    return out


def refuse_strays(seeds: dict[str, list[int]]) -> None:
    """A JSON file under metrics/ or records/ that no stage writes (an older layout, a removed
    seed, a copy) would show in `dvc metrics show` beside the report's numbers and contradict
    them: one UserError lists every one, before anything is written."""
    declared = declared_metrics(seeds)
    declared |= {record_path(p) for p in declared} | {record_of(name) for name in seeds.get("imported", ())}
    declared.add(PREPARE_RECORD)
    declared.add(seed_sweep_path())
    strays = sorted(str(p) for root in (Path("metrics"), Path("records")) if root.is_dir()
                    for p in root.rglob("*.json") if p not in declared)
    if strays:
        raise UserError(f"{len(strays)} file(s) under metrics/ or records/ are written by no stage of this params file "
                        f"(an older layout, or a seed no longer listed): {', '.join(strays[:6])}"
                        f"{' ...' if len(strays) > 6 else ''}. Remove them (`git rm` where they are committed), so that "
                        "`dvc metrics show` and the report agree.")


def seed_sweep_path() -> Path:
    return seeds_mod.RECORD


def seed_sweep(params: Path) -> Record | None:
    """The pretraining-seed sweep's record (`localagg report --compare` writes it), or None; its
    `differs` lists the params of `params` that the sweep's runs did not have (then its noise
    is not this run's)."""
    path = seeds_mod.RECORD
    if not path.is_file():
        return None
    fix = "rerun `localagg report --compare` (after `localagg sweep seeds ...`), or delete it"
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): {fix}.") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not (isinstance(runs, list) and all(isinstance(r, dict) and isinstance(r.get("metrics"), dict) for r in runs)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for r in runs for v in r["metrics"].values())):
        raise UserError(f"{path}: expected {{\"runs\": [{{\"metrics\": {{name: number}}}}, ...]}}: {fix}.")
    data["differs"] = seeds_mod.differing(data, flatten(yaml.safe_load(Path(params).read_text()) or {}))
    return Record(str(path), data, "report")


def _record(path: Path, stage: str) -> Record:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): rerun `dvc repro {stage}`.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}: rerun `dvc repro {stage}`.")
    return Record(str(path), data, stage)


def _curves(record: Record) -> dict[str, list[tuple[float, float]]]:
    """(epoch, value) of the loss and the kNN top-1 from a pretraining record's history; the kNN
    of the network before training is epoch 0 (the warm start's, for LA: its start)."""
    history = record.get("history")
    if not isinstance(history, list) or not history:
        raise UserError(f"{record.path}: `history` should list the epochs: rerun `dvc repro {record.stage}`.")
    out = {c: [] for c in CURVES}
    if record.get("knn_top1_init", optional=True) is not None:
        out["knn_top1"].append((0.0, record.number("knn_top1_init")))
    for row in history:
        row_record = Record(record.path, row, record.stage)
        for c in CURVES:
            if c in row:
                out[c].append((row_record.number("epoch"), row_record.number(c)))
    return out


def load(params: Path) -> RunMetrics:
    """Read every file of `expected_files`; one UserError lists all that are missing."""
    seeds = read_seeds(params)
    files = expected_files(seeds)
    missing = [(path, stage) for path, stage in files if not path.is_file()]
    if len(missing) == 1:
        raise UserError(f"{missing[0][0]} does not exist: run `dvc repro {missing[0][1]}`.")
    if missing:
        listed = "; ".join(f"{path} (`dvc repro {stage}`)" for path, stage in missing)
        raise UserError(f"{len(missing)} files the report needs do not exist: {listed}. Run those stages, "
                        f"or `dvc repro` for the whole pipeline.")
    refuse_strays(seeds)
    rec = {path: _record(path, stage) for path, stage in files if path.suffix == ".json"}
    models = _models(seeds)
    run = RunMetrics(
        prepare=rec[PREPARE_RECORD],
        pretrain={m: rec[pretrain_record(stage)] for m, stage in PRETRAIN_STAGES.items()},
        transfer={(m, d): per_seed(rec[record_path(transfer_metrics_path(m, d))], seeds["transfer"])
                  for d in ROLES for m in (*models, PIXELS)},
        detection={m: [rec[record_path(detection_metrics_path(m, s))] for s in seeds["detection"]] for m in models},
        curves={m: _curves(rec[pretrain_record(stage)]) for m, stage in PRETRAIN_STAGES.items()},
        imported={name: rec[record_of(name)] for name in seeds["imported"]},
        seed_sweep=seed_sweep(params),
    )
    check_slots(run, seeds)
    return run


def per_seed(record: Record, seeds: list[int]) -> list[Record]:
    """A transfer cell's record as one Record per readout seed (its linear results and per-class
    accuracy; the rest, kNN included, is the cell's), after checking it ran `seeds`."""
    found = record.get("seeds")
    if found != seeds:
        raise UserError(f"{record.path} holds readout seeds {found}, transfer.seeds is {seeds}: "
                        f"rerun `dvc repro {record.stage}`.")
    runs = {run.get("seed"): run for run in record.get("runs")}
    return [Record(record.path, {**record.data, "seed": s, "linear": runs[s].get("linear"),
                                 "per_class": runs[s].get("per_class"), "losses": runs[s].get("losses") or {}},
                   record.stage) for s in seeds]


def check_slots(m: RunMetrics, seeds: dict[str, list[int]]) -> None:
    """Each record must be the one of its slot (model, dataset, seed), so a file copied or left
    over from another cell is not reported as this one; one UserError lists every mismatch."""
    problems = []

    def expect(record: Record, **wanted) -> None:
        found = {k: record.get(k, optional=True) for k in wanted}
        if found != wanted:
            diff = ", ".join(f"{k} {found[k]!r} (expected {v!r})" for k, v in wanted.items() if found[k] != v)
            problems.append(f"{record.path}: {diff}; rerun `dvc repro {record.stage}`")

    for model, record in m.pretrain.items():
        expect(record, model=model, stage=PRETRAIN_STAGES[model])
    for model, record in m.imported.items():
        expect(record, model=model)
    for (model, role), records in m.transfer.items():
        expect(records[0], model=model, dataset=role)
    for model, records in m.detection.items():
        for seed, record in zip(seeds["detection"], records):
            expect(record, model=model, seed=seed)
    if problems:
        raise UserError("metrics records do not belong to the slot they are in:\n" + "\n".join(f"  - {p}" for p in problems))


def run(params: Path, out: Path = Path("reports")) -> list[Path]:
    """Write <out>/results.csv, <out>/results.md and the figures; return their paths.

    Everything is read and checked before anything is written; results.md is written last.
    """
    use_dataset_roots(Path(params))  # the figures show images of the real datasets
    m = load(Path(params))
    cells = aggregate(m)
    out = Path(out)
    text = render(m, cells, {name: FIGURES[name] for name in figure_names(m)}, figure_facts(m, cells))
    with atomic_path(out / "figures") as tmp:  # every figure, or the old folder stays whole
        drawn = draw_figures(m, cells, tmp.parent)
    write_text(out / "results.csv", csv_text(cells))
    write_text(out / "results.md", text)
    return [out / "results.md", out / "results.csv", *(out / FIGURES[name] for name in drawn)]


def figure_names(m: RunMetrics) -> list[str]:
    """The figures the records allow: LA's clusters and the detector's boxes need them recorded."""
    names = ["readout", "pretraining", *(["detection"] if m.detection["la"] else []), "per_class", "retrieval", "maps"]
    if _views(m.pretrain["la"]).get("clusters"):
        names.append("clusters")
    if m.detection["la"] and _views(m.detection["la"][0]).get("detections"):
        names.append("detections")
    return names


def _best_per_class(m: RunMetrics, cells) -> dict:
    """{model: (best layer, mean top-1 per class)} on the object set, from the transfer records."""
    per_class = {model: {} for model in m.transfer_models}
    for model in m.transfer_models:
        for r in m.transfer[(model, "object")]:
            for layer, values in (r.get("per_class", optional=True) or {}).items():
                per_class[model].setdefault(layer, []).append(values)
    return best_per_class(cells, per_class, "object")


RETRIEVAL_QUERIES = 4  # the queries the retrieval figure shows


def figure_facts(m: RunMetrics, cells) -> dict[str, str]:
    """A sentence of this run's numbers per figure, computed from what the figure draws."""
    obj = ObjectImages(OBJECT_DIR)
    counts = {}
    for model in m.transfer_models:
        found = _views(m.transfer[(model, "object")][0]).get("retrieval")
        if not found:
            continue
        pairs = [(q, n) for q, ns in zip(found["queries"][:RETRIEVAL_QUERIES], found["neighbours"]) for n in ns]
        counts[model] = (sum(obj.label("train", n) == obj.label("val", q) for q, n in pairs), len(pairs))
    order = [mdl for mdl in baseline_order(m.models) if mdl in counts]
    classes = m.transfer[("la", "object")][0].get("classes")
    return {"retrieval": retrieval_facts({mdl: counts[mdl] for mdl in order}),
            "per_class": per_class_facts(_best_per_class(m, cells), classes)}


def _views(record: Record) -> dict:
    """The pictures' data a stage recorded (`views`), {} when it recorded none."""
    return record.get("views", optional=True) or {}


def draw_figures(m: RunMetrics, cells, out: Path) -> list[str]:
    """Draw `figure_names(m)` under `out` (FIGURES paths), from the records and the prepared images."""
    drawn = figure_names(m)
    obj = ObjectImages(OBJECT_DIR)
    readout_figure(cells, out / FIGURES["readout"])
    pretraining_figure(m.curves, out / FIGURES["pretraining"])
    if "detection" in drawn:
        detection_figure(cells, out / FIGURES["detection"])
    classes = m.transfer[("la", "object")][0].get("classes")
    per_class_figure(_best_per_class(m, cells), classes, obj.name, out / FIGURES["per_class"])
    views = {model: _views(m.transfer[(model, "object")][0]) for model in m.transfer_models}
    retrieval_figure({k: v["retrieval"] for k, v in views.items() if "retrieval" in v}, obj.image, obj.label,
                     out / FIGURES["retrieval"], queries=RETRIEVAL_QUERIES)
    maps_figure({k: v["map"] for k, v in views.items() if "map" in v}, lambda i: obj.label("val", i), classes,
                out / FIGURES["maps"])
    if "clusters" in drawn:
        clusters_figure(_views(m.pretrain["la"])["clusters"], obj.image, classes, out / FIGURES["clusters"])
    if "detections" in drawn:
        from localagg.data.voc import read_voc_manifest

        detection = m.detection["la"][0]
        examples = _views(detection)["detections"]

        manifest = read_voc_manifest(DETECTION_MANIFEST)
        year = manifest["splits"]["test"][0][0]
        detections_figure(examples, lambda e: _picture(Path(manifest["root"]) / year / "JPEGImages" / f"{e['image_id']}.jpg"),
                          detection.get("classes"), out / FIGURES["detections"])
    return drawn


def _picture(path: Path, side: int | None = None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if side:
            im = im.resize((side, side), Image.BILINEAR)
        return np.asarray(im)


class ObjectImages:
    """The prepared object set's images and labels by split and index (thumbnails for figures)."""

    def __init__(self, data_dir: Path):
        from localagg.data.manifest import read_arrays_split, read_files_split, read_info

        self.dir, self.info = Path(data_dir), read_info(data_dir)
        self.name = self.info.name
        self._splits = {split: (read_arrays_split(data_dir, split) if self.info.kind == "arrays"
                                else read_files_split(data_dir, split)) for split in ("train", "val")}

    def image(self, split: str, index: int) -> np.ndarray:
        items, _ = self._splits[split]
        if self.info.kind == "arrays":
            return np.asarray(items[index])
        return _picture(Path(self.info.root) / items[index], side=96)

    def label(self, split: str, index: int) -> int:
        return int(self._splits[split][1][index])


def _dvc_command() -> list[str]:
    if shutil.which("dvc"):
        return [shutil.which("dvc")]
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    raise UserError("dvc is not installed: `pip install dvc` (or pass --exp-json with a saved `dvc exp show --json`).")


def exp_show(params: Path, exp_json: Path | None, all_commits: bool = False) -> tuple[list, str]:
    """The parsed `dvc exp show --json` output (with `-A`: every commit too), run in the params
    file's folder or read from `exp_json`, and where it came from."""
    if exp_json is not None:
        if not exp_json.is_file():
            raise UserError(f"{exp_json} does not exist: save it with `dvc exp show --json -A > {exp_json}`.")
        text, origin = exp_json.read_text(), str(exp_json)
    else:
        cmd = _dvc_command() + ["exp", "show", "--json", "--hide-queued"] + (["-A"] if all_commits else [])
        proc = subprocess.run(cmd, cwd=Path(params).resolve().parent, capture_output=True, text=True)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise UserError(f"`dvc exp show` failed: {reason.removeprefix('ERROR: ')}")
        text, origin = proc.stdout, "`dvc exp show --json" + (" -A" if all_commits else "") + "`"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{origin} is not valid JSON ({exc}).") from None
    if not isinstance(data, list):
        raise UserError(f"{origin}: expected a JSON list of commits, as `dvc exp show --json` prints.")
    return data, origin


def _headline(metrics: dict) -> dict[str, float]:
    """Every model's headline numbers of one revision, "<model>_<SWEEP_METRICS key>" -> the mean
    over its files, from `dvc exp show`'s {file: {"data": ...}}."""
    found: dict[str, list[float]] = {}
    for path, content in metrics.items():
        for name, metric in SWEEP_METRICS.items():
            match = re.fullmatch(metric.pattern, path)
            node = ((content or {}).get("data") or {}).get(metric.key) if match else None
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                found.setdefault(f"{match['model']}_{name}", []).append(float(node))
    return {key: sum(values) / len(values) for key, values in found.items()}


def _sweep_models(runs: list[Run]) -> list[str]:
    """The models with a headline number in any run ("<model>_<metric>" keys), from nothing
    learned to labels used (the report's baseline order, imported models after LA)."""
    found = {key[:-len(name) - 1] for run in runs for key in run.metrics for name in SWEEP_METRICS
             if key.endswith(f"_{name}")}
    return [m for m in baseline_order(sorted(found)) if m in found]


def sweep_runs(data: list, origin: str) -> tuple[list[Run], list[str]]:
    """One `Run` per revision of `dvc exp show --json` output (workspace, commits, experiments),
    and a note for each revision left out (failed, queued, or without data)."""
    runs, skipped = [], []

    def add(entry: dict, baseline: str) -> None:
        rev = entry.get("rev", "")
        short = "workspace" if rev == "workspace" else rev[:7]
        name = entry.get("name") or ("workspace" if rev == "workspace" else "")
        data = entry.get("data")
        if entry.get("error") or not isinstance(data, dict):
            skipped.append(f"{name or short}: {(entry.get('error') or {}).get('msg', 'no data')}")
            return
        params = {}
        for file, content in (data.get("params") or {}).items():
            params.update(flatten((content or {}).get("data") or {}, "" if file == "params.yaml" else f"{file}:"))
        runs.append(Run(name, short, baseline, params, _headline(data.get("metrics") or {})))

    try:
        for commit in data:
            add(commit, "")
            for exp in commit.get("experiments") or []:
                for entry in exp.get("revs") or []:
                    add(entry, commit["rev"][:7])
    except (AttributeError, KeyError, TypeError):
        raise UserError(f"{origin}: not the output of `dvc exp show --json` (unexpected structure).") from None
    return runs, skipped


def compare(params: Path, exp_json: Path | None = None, out: Path = Path("reports"),
            all_commits: bool = False) -> list[Path]:
    """Write <out>/compare.csv and <out>/compare.md: one row per revision (the workspace, HEAD and
    its experiments; with `all_commits`, every commit and its experiments), the params that
    differ between them, and every model's headline numbers (the report's: kNN of fresh
    features, best layer, conv5, transfer set, AP50). When some of the runs differ only in their
    pretraining seeds (`localagg sweep seeds`), also write seeds.RECORD, which the report reads."""
    data, origin = exp_show(Path(params), exp_json, all_commits)
    runs, skipped = sweep_runs(data, origin)
    if not any(run.baseline for run in runs) and len([r for r in runs if r.rev != "workspace"]) < 2:
        raise UserError("no DVC experiments to compare: run some with `dvc exp run -S pretrain_la.num_clusters=100` "
                        "or `localagg sweep seeds 1 2` (or commit several versions and add --all-commits), then "
                        "`localagg report --compare`.")
    models = _sweep_models(runs)
    metrics = {f"{model}_{name}": f"{label(model)}: {metric.label}" for name, metric in SWEEP_METRICS.items()
               for model in models}
    names, labels, rows = comparison(runs, metrics)
    shown = len(names) - len([n for n in names if n in metrics])  # name, rev, baseline and the params
    tables = [("Runs and the params that differ", labels[:shown], [row[:shown] for row in rows])]
    for name, metric in SWEEP_METRICS.items():
        cols = [i for i, n in enumerate(names) if n in metrics and n.endswith(f"_{name}") and n[:-len(name) - 1] in models]
        if cols:
            tables.append((metric.label, ["run", *(label(names[i][:-len(name) - 1]) for i in cols)],
                           [[row[0] or row[1], *(row[i] for i in cols)] for row in rows]))
    notes = [f"Rows: every revision in {origin} (the workspace, commits and their experiments); `baseline` is the "
             "commit an experiment started from. Columns: the params that differ between rows, then each model's "
             "headline numbers (the report's: kNN of fresh features, best layer, conv5, AP50 as the mean over the "
             "detection seeds).",
             "Source: " + (origin if exp_json is None else f"`{exp_json}`") + "; metrics from "
             + ", ".join(dict.fromkeys(f"`{m.files}`" for m in SWEEP_METRICS.values())) + "."]
    if skipped:
        notes.append("Left out: " + "; ".join(skipped) + ".")
    out = Path(out)
    written = []
    sweep = seeds_mod.seed_runs(runs)
    sections = [compare_seeds(sweep, models, origin)] if sweep else []  # (title, labels, rows)
    if sweep:
        write_json(seeds_mod.RECORD, seeds_mod.record(sweep, origin))
        written.append(seeds_mod.RECORD)
    write_text(out / "compare.csv", compare_csv(names, rows))
    write_text(out / "compare.md", compare_markdown(tables + sections, notes))
    return [out / "compare.md", out / "compare.csv", *written]


def compare_seeds(sweep: list[Run], models: list[str], origin: str) -> tuple[str, list[str], list[list[str]]]:
    """compare.md's table of a pretraining-seed sweep: mean ± std of each headline number over
    the seeds, per model."""
    record = seeds_mod.record(sweep, origin)
    rows = []
    for name, metric in SWEEP_METRICS.items():
        row = [metric.label]
        for model in models:
            found = seeds_mod.spread(record, f"{model}_{name}")
            row.append("" if found is None else f"{found[0]:.2f} ± {found[1]:.2f}")
        rows.append(row)
    names = ", ".join(run.name or run.rev for run in sweep)
    title = (f"Pretraining seeds\n\n{len(sweep)} runs differ only in {', '.join(f'`{k}`' for k in seeds_mod.SEED_KEYS)} "
             f"({names}). Mean ± sample std over them: the spread a pretraining seed brings (the report's ± covers the "
             f"readout seeds within one run). Written to `{seeds_mod.RECORD}`; `dvc repro report` says of each gap whether "
             "it lies outside this noise.")
    return title, ["number", *(label(m) for m in models)], rows
