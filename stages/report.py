"""Stage `report`: every stage's metrics gathered into tables and figures next to the paper's
numbers; with `compare`, one table across DVC experiments and commits.

`run` reads (relative to the repository root; seeds from `transfer.seeds` and
`detection.seeds` in the params file, [0] when absent):

    metrics/prepare.json                                 dataset names and sizes
    metrics/pretrain_ia.json, pretrain_la.json, supervised.json
    metrics/transfer/<model>-<dataset>-seed<s>.json      model in la, ir, random, supervised;
                                                         dataset in object, transfer
    metrics/detection/<model>-seed<s>.json
    dvclive/pretrain_{ia,la}/plots/metrics/{loss,knn_top1}.tsv

and writes <out>/results.csv, <out>/results.md and <out>/figures/{readout,pretraining,detection}.png.
`compare` reads `dvc exp show --json -A` (or a saved copy) and writes <out>/compare.{csv,md}.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import yaml

from localagg.errors import UserError
from localagg.io import write_text
from localagg.report.figures import detection_figure, pretraining_figure, readout_figure
from localagg.report.markdown import render
from localagg.report.results import MODELS, ROLES, Record, RunMetrics, aggregate, csv_text
from localagg.report.sweep import Run, compare_csv, compare_markdown, comparison, flatten

from .paths import STAGE_OF_MODEL, detection_metrics_path, record_path, transfer_metrics_path

PRETRAIN_STAGES = {m: s for m, s in STAGE_OF_MODEL.items() if m != "random"}  # models with pretraining metrics
CURVE_MODELS = ("ir", "la")
CURVES = ("loss", "knn_top1")
FIGURES = {"readout": "figures/readout.png", "pretraining": "figures/pretraining.png",
           "detection": "figures/detection.png"}


class SweepMetric(NamedTuple):
    """A headline metric of `compare`: the mean of `keys` over the metrics files matching `pattern`."""

    label: str
    files: str     # the files, as compare.md names them
    pattern: str   # regex on the file paths `dvc exp show` lists (old names without -seed<s> too)
    keys: tuple[str, ...]


SWEEP_METRICS = {
    "la_knn_top1": SweepMetric(
        "LA kNN top-1 (end of pretraining)", "metrics/pretrain_la.json",
        r"metrics/pretrain_la\.json", ("final_knn_top1",)),
    "la_object_conv5_top1": SweepMetric(
        "LA conv5 top-1 (centre crop), object set", "metrics/transfer/la-object-seed<s>.json",
        r"metrics/transfer/la-object(-seed\d+)?\.json", ("linear", "conv5", "top1")),
    "la_transfer_conv5_top1": SweepMetric(
        "LA conv5 top-1 (centre crop), transfer set", "metrics/transfer/la-transfer-seed<s>.json",
        r"metrics/transfer/la-transfer(-seed\d+)?\.json", ("linear", "conv5", "top1")),
    "la_detection_AP50": SweepMetric(
        "LA detection AP50", "metrics/detection/la-seed<s>.json",
        r"metrics/detection/la-seed\d+\.json", ("AP50",)),
}


def curve_path(model: str, metric: str) -> Path:
    return Path("dvclive") / PRETRAIN_STAGES[model] / "plots" / "metrics" / f"{metric}.tsv"


def read_seeds(params: Path) -> dict[str, list[int]]:
    """{"transfer": [...], "detection": [...]} from `<section>.seeds` of the params file (plain YAML)."""
    if not params.is_file():
        raise UserError(f"params file {params} does not exist (pass --params PATH, default params.yaml).")
    try:
        data = yaml.safe_load(params.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{params} is not valid YAML: {exc}") from None
    seeds = {}
    for section in ("transfer", "detection"):
        value = (data.get(section) or {}).get("seeds", [0])
        if not (isinstance(value, list) and value and all(type(s) is int and s >= 0 for s in value)
                and len(set(value)) == len(value)):
            raise UserError(f"{params}: {section}.seeds should be a non-empty list of distinct non-negative "
                            f"integers, got {value!r}.")
        seeds[section] = value
    return seeds


def pretrain_record(stage: str) -> Path:
    return record_path(Path("metrics") / f"{stage}.json")


PREPARE_RECORD = record_path(Path("metrics/prepare.json"))


def expected_files(seeds: dict[str, list[int]]) -> list[tuple[Path, str]]:
    """Every file the report reads, with the DVC stage that writes it (`seeds` from `read_seeds`):
    the records (records/..., the full numbers beside each metrics file) and the curves."""
    files = [(PREPARE_RECORD, "prepare")]
    files += [(pretrain_record(stage), stage) for stage in PRETRAIN_STAGES.values()]
    files += [(record_path(transfer_metrics_path(m, d, s)), f"transfer@{m}-{d}-{s}")
              for d in ROLES for m in MODELS for s in seeds["transfer"]]
    files += [(record_path(detection_metrics_path(m, s)), f"detection@{m}-{s}")
              for m in MODELS for s in seeds["detection"]]
    files += [(curve_path(m, c), PRETRAIN_STAGES[m]) for m in CURVE_MODELS for c in CURVES]
    return files


def _record(path: Path, stage: str) -> Record:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): rerun `dvc repro {stage}`.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}: rerun `dvc repro {stage}`.")
    return Record(str(path), data, stage)


def _curve(path: Path, stage: str) -> list[tuple[float, float]]:
    """The (step, value) rows of a dvclive TSV with columns `step` and the metric named like the file."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    try:
        points = [(float(row["step"]), float(row[path.stem])) for row in rows]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: expected tab-separated columns `step` and `{path.stem}` with numbers: "
                        f"rerun `dvc repro {stage}`.") from None
    if not points:
        raise UserError(f"{path} has no rows: rerun `dvc repro {stage}`.")
    return points


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
    rec = {path: _record(path, stage) for path, stage in files if path.suffix == ".json"}
    run = RunMetrics(
        prepare=rec[PREPARE_RECORD],
        pretrain={m: rec[pretrain_record(stage)] for m, stage in PRETRAIN_STAGES.items()},
        transfer={(m, d): [rec[record_path(transfer_metrics_path(m, d, s))] for s in seeds["transfer"]]
                  for d in ROLES for m in MODELS},
        detection={m: [rec[record_path(detection_metrics_path(m, s))] for s in seeds["detection"]] for m in MODELS},
        curves={m: {c: _curve(curve_path(m, c), PRETRAIN_STAGES[m]) for c in CURVES} for m in CURVE_MODELS},
        curve_files=[str(curve_path(m, c)) for m in CURVE_MODELS for c in CURVES],
    )
    check_slots(run, seeds)
    return run


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
    for (model, role), records in m.transfer.items():
        for seed, record in zip(seeds["transfer"], records):
            expect(record, model=model, dataset=role, seed=seed)
    for model, records in m.detection.items():
        for seed, record in zip(seeds["detection"], records):
            expect(record, model=model, seed=seed)
    if problems:
        raise UserError("metrics records do not belong to the slot they are in:\n" + "\n".join(f"  - {p}" for p in problems))


def run(params: Path, out: Path = Path("reports")) -> list[Path]:
    """Write <out>/results.csv, <out>/results.md and the figures; return their paths.

    Everything is read and checked before anything is written; results.md is written last.
    """
    m = load(Path(params))
    cells = aggregate(m)
    text = render(m, cells, FIGURES)
    out = Path(out)
    readout_figure(cells, out / FIGURES["readout"])
    pretraining_figure(m.curves, out / FIGURES["pretraining"])
    detection_figure(cells, out / FIGURES["detection"])
    write_text(out / "results.csv", csv_text(cells))
    write_text(out / "results.md", text)
    return [out / "results.md", out / "results.csv", *(out / f for f in FIGURES.values())]


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
    """LA's headline metrics of one revision (mean over seed files) from its {file: {"data": ...}}."""
    out = {}
    for name, metric in SWEEP_METRICS.items():
        values = []
        for path, content in metrics.items():
            node = (content or {}).get("data") if re.fullmatch(metric.pattern, path) else None
            for key in metric.keys:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                values.append(float(node))
        if values:
            out[name] = sum(values) / len(values)
    return out


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
    differ between them, and LA's headline metrics."""
    data, origin = exp_show(Path(params), exp_json, all_commits)
    runs, skipped = sweep_runs(data, origin)
    if not any(run.baseline for run in runs) and len([r for r in runs if r.rev != "workspace"]) < 2:
        raise UserError("no DVC experiments to compare: run some with `dvc exp run -S pretrain_la.num_clusters=100` "
                        "(or commit several versions and add --all-commits), then `localagg report --compare`.")
    names, labels, rows = comparison(runs, {name: metric.label for name, metric in SWEEP_METRICS.items()})
    notes = [f"Rows: every revision in {origin} (the workspace, commits and their experiments); `baseline` is the "
             "commit an experiment started from. Columns: the params that differ between rows, then LA's headline "
             "metrics, each the mean over the seed files found.",
             "Source: " + (origin if exp_json is None else f"`{exp_json}`") + "; metrics from "
             + ", ".join(f"`{m.files}` ({'.'.join(m.keys)})" for m in SWEEP_METRICS.values()) + "."]
    if skipped:
        notes.append("Left out: " + "; ".join(skipped) + ".")
    out = Path(out)
    write_text(out / "compare.csv", compare_csv(names, rows))
    write_text(out / "compare.md", compare_markdown(labels, rows, notes))
    return [out / "compare.md", out / "compare.csv"]
