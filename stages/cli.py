"""The `localagg` command line: one subcommand per DVC stage, plus params tools.

Every stage command takes --params (default params.yaml) and reads the sections its
docstring names (the same ones dvc.yaml declares for its stage). Progress goes to stderr
through `logging` (one line per epoch, readable in a pipe or a log file) and, on a terminal,
progress bars.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from localagg.errors import UserError

from .common import ParamsOption, configure_logging, err_console, stage_run, user_errors
from .paths import DATASETS, MODELS, TRANSFER_MODELS

MODEL_CHOICES = f"{', '.join(TRANSFER_MODELS)}, or an imported model (an entry of `external`)"

app = typer.Typer(
    name="localagg",
    help="Local Aggregation (ICCV 2019) reproduction pipeline. Each command is one DVC stage; "
    "run them all with `dvc repro`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
preset_app = typer.Typer(help="List, show and apply params presets (e.g. the paper's ResNet-50 scale).",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(preset_app, name="preset")
sweep_app = typer.Typer(help="Sweeps as DVC experiments (e.g. pretraining seeds, for the noise of every gap).",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(sweep_app, name="sweep")

Dataset = Enum("Dataset", {name: name for name in DATASETS}, type=str)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"localagg {version('localagg')}")
        except PackageNotFoundError:
            typer.echo("localagg (not installed)")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Local Aggregation (ICCV 2019) reproduction pipeline."""
    configure_logging()


@app.command()
@user_errors
def prepare(params: Path = ParamsOption) -> None:
    """Validate the datasets and write their manifests to data/prepared/ (stage `prepare`).

    Reads the `prepare` section. Embedded default: the sets that the set-up installs (see
    params.yaml). Real data: ImageNet, Places205 and VOCdevkit roots given in params.
    """
    from . import prepare as stage
    from .params import load_section

    from .launch import dispatch

    p = load_section(params, "prepare")
    with stage_run("prepare", "data/prepared and records/prepare.json"):
        dispatch("prepare", ["prepare"], params, 1, "prepare")
        record = stage.run(p)
    for role, splits in (("object", ("train", "val")), ("transfer", ("train", "val")), ("detection", ("trainval", "test"))):
        m = record[role]
        sizes = ", ".join(f"{s} {m[s]['total'] if 'total' in m[s] else m[s]['images']:,}" for s in splits)
        err_console.print(f"{role} set {m['name']}: {m['classes']} classes; {sizes}")


def _pretrain(stage: str, params: Path) -> None:
    from . import pretrain

    model = pretrain.MODEL_NAMES[stage]
    with stage_run(stage, f"models/{model}.pt and checkpoints/{stage}"):
        summary = pretrain.run(stage, params)
    keys = ("knn_top1_init", "final_knn_top1", "final_loss")
    err_console.print(f"{stage}: " + ", ".join(f"{k} {summary[k]:.3f}" for k in keys if k in summary))


@app.command("pretrain-ia")
@user_errors
def pretrain_ia(params: Path = ParamsOption) -> None:
    """Instance Recognition warm start (stage `pretrain_ia`): instance discrimination over the
    memory bank, NCE with `num_negatives` noise samples or the full softmax (num_negatives: 0).

    Reads the `model`, `augment` and `pretrain_ia` sections; writes models/ir.pt.
    Resumes from checkpoints/pretrain_ia/last.pt when it belongs to the same params.
    """
    _pretrain("pretrain_ia", params)


@app.command("pretrain-la")
@user_errors
def pretrain_la(params: Path = ParamsOption) -> None:
    """Local Aggregation from the IR model and bank (stage `pretrain_la`).

    Reads the `model`, `augment` and `pretrain_la` sections; writes models/la.pt.
    Re-clusters the bank (H k-means of m clusters, faiss) every epoch.
    """
    _pretrain("pretrain_la", params)


@app.command()
@user_errors
def supervised(params: Path = ParamsOption) -> None:
    """The supervised reference (stage `supervised`): the same backbone trained with the object
    set's labels. Reads `model`, `augment` and `supervised`; writes models/supervised.pt.
    """
    _pretrain("supervised", params)


@app.command("random-init")
@user_errors
def random_init(params: Path = ParamsOption) -> None:
    """The `random` baseline (stage `random_init`): the untrained network, seeded, written to
    models/random.pt in the same format as the trained models. Reads `model` and `random_init`.
    """
    from . import pretrain

    with stage_run("random_init", "models/random.pt"):
        err_console.print(f"wrote {pretrain.write_random(params)}")


@app.command()
@user_errors
def transfer(
    model: str = typer.Option(..., "--model", "-m", help=f"the model to evaluate: {MODEL_CHOICES} (pixels: the "
                                                         "raw-pixel baseline)"),
    dataset: Dataset = typer.Option(..., "--dataset", "-d", help="object (ImageNet's role) or transfer (Places205's)"),
    params: Path = ParamsOption,
) -> None:
    """Per-layer linear readout (conv1..conv5; one readout per seed of transfer.seeds) and kNN of
    one model on one dataset (stage `transfer@<model>-<dataset>`). Reads `model`, `augment` and
    `transfer`; writes metrics/transfer/<model>-<dataset>.json and records/transfer/....
    """
    from . import transfer as stage
    from .paths import transfer_cell, transfer_metrics_path

    dataset = dataset.value
    with stage_run(f"transfer-{transfer_cell(model, dataset)}", str(transfer_metrics_path(model, dataset))):
        record = stage.run(model, dataset, params)
    if record is None:  # a rank other than 0 of a multi-process cell: rank 0 reports
        return
    line = stage.headline(record["runs"], record["knn"])
    err_console.print(f"transfer {model} on {dataset}: " + ", ".join(f"{k} {v:.2f}" for k, v in line.items())
                      + f" (mean over seeds {record['seeds']})")


@app.command()
@user_errors
def detection(
    model: str = typer.Option(..., "--model", "-m", help=f"the model whose backbone is fine-tuned: {', '.join(MODELS)}, "
                                                         "or an imported model (an entry of `external`)"),
    seed: int = typer.Option(0, "--seed", "-s", min=0, help="fine-tuning seed (one of detection.seeds)"),
    resume: bool = typer.Option(True, "--resume/--no-resume",
                                help="continue from checkpoints/detection/<model>-seed<s> when it belongs to this cell"),
    params: Path = ParamsOption,
) -> None:
    """Faster R-CNN C4 fine-tuned on the detection set from one model's backbone, tested with
    the VOC07 metric (stage `detection@<model>-<seed>`). Reads `model` and `detection`; writes
    metrics/detection/<model>-seed<s>.json.
    """
    from . import detection as stage
    from .paths import detection_cell

    cell = detection_cell(model, seed)
    with stage_run(f"detection-{cell}", f"checkpoints/detection/{cell} and its metrics"):
        m = stage.run(model, seed, params, resume=resume)
    if not m:  # a machine other than the first of a multi-node job: the first reports
        return
    err_console.print(f"detection {model} (seed {seed}): AP50 {m['AP50']:.2f}, AP {m['AP']:.2f}, AP75 {m['AP75']:.2f}")


@app.command()
@user_errors
def report(
    params: Path = ParamsOption,
    compare: bool = typer.Option(
        False, "--compare", help="one table across DVC experiments/commits (`dvc exp show`) instead of the report"),
    exp_json: Optional[Path] = typer.Option(
        None, "--exp-json", help="with --compare: read this saved `dvc exp show --json` output instead of running dvc"),
    all_commits: bool = typer.Option(
        False, "--all-commits", "-A", help="with --compare: every commit and its experiments, not only HEAD's"),
    out: Path = typer.Option(Path("reports"), "--out", help="folder for results.md, results.csv and figures"),
) -> None:
    """Gather every stage's records into reports/results.{md,csv} and figures, next to the
    paper's numbers (stage `report`; reads transfer.seeds and detection.seeds); with --compare,
    one table with a row per experiment.
    """
    from . import report as stage

    with stage_run("report", f"{out}/"):
        if compare:
            written = stage.compare(params, exp_json=exp_json, out=out, all_commits=all_commits)
        else:
            written = stage.run(params, out=out)
    for path in written:
        typer.echo(str(path))


@app.command("import")
@user_errors
def import_model(
    path: Path = typer.Argument(..., exists=False, help="the checkpoint file (torchvision, MoCo, NPID, VISSL, "
                                                        "mmselfsup, hub, or a localagg export), or the authors' TF "
                                                        "checkpoint: their tar, its .index file or its prefix"),
    arch: str = typer.Option(..., "--arch", help="the network it holds: resnet18 or resnet50 (torchvision's); "
                                                  "preact_resnet18 or preact_resnet50 (the authors' TF ResNets)"),
    stem: str = typer.Option("imagenet", "--stem", help="imagenet (7x7 conv + max-pool) or small"),
    fmt: str = typer.Option("auto", "--format", help="auto (from the file), torchvision, moco, npid, vissl, "
                                                     "mmselfsup, hub, localagg or tf-la (the authors' TF checkpoint; "
                                                     "needs the extra `tf`: make setup-tf)"),
    embedding_dim: int = typer.Option(128, "--embedding-dim", min=1, help="keep a linear head of this width as the "
                                                                           "embedding (else: the pooled features)"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write the model (default models/<file stem>.pt)"),
) -> None:
    """Convert one published checkpoint into the pipeline's model format and say what was found.

    Nothing in the file is executed: pickled objects of other code become inert placeholders.
    """
    from .imports import import_checkpoint

    info = import_checkpoint(path, arch, stem, embedding_dim, fmt, out)
    err_console.print(f"{path}: {info['format']} format; {info['trunk_tensors']} trunk tensors mapped onto {arch} "
                      f"({stem} stem); {info['embedding']}")
    if info["dropped"]:
        err_console.print(f"left out: {', '.join(info['dropped'][:8])}{' ...' if len(info['dropped']) > 8 else ''}")
    if info.get("bank"):
        err_console.print(f"memory bank kept: {info['bank']['rows']:,} x {info['bank']['dim']} ({info['bank']['order']})")
    if info["replaced_classes"]:
        err_console.print("pickled objects not loaded (inert placeholders): " + ", ".join(info["replaced_classes"]))
    err_console.print(f"wrote {info['out']}")


@app.command("import-entry")
@user_errors
def import_entry(
    name: str = typer.Argument(..., help="the entry of the `external` params section"),
    params: Path = ParamsOption,
) -> None:
    """The checkpoint of `external.<name>` as models/<name>.pt (stage `import@<name>`), with
    `model`'s architecture; records/import/<name>.json says what was found. Its transfer and
    detection cells (transfer_external@<name>-..., detection_external@<name>-...) then read it.
    """
    from .imports import record_of, run_entry

    with stage_run(f"import-{name}", f"models/{name}.pt and {record_of(name)}"):
        info = run_entry(name, params)
    err_console.print(f"import {name}: {info['format']} format, {info['trunk_tensors']} trunk tensors; "
                      f"{info['embedding']}; wrote {info['out']}")


@app.command()
@user_errors
def check(params: Path = ParamsOption) -> None:
    """Validate every section of the params file and the params that must fit the data; lists every problem."""
    from .params import validate_all
    from .prepare import check_inputs, expected_sizes

    from .slurm import check_problems

    sections = validate_all(params, data_sizes=expected_sizes)
    problems = []
    try:
        check_inputs(sections["prepare"])  # the dataset roots exist (their layout: `localagg prepare`)
    except UserError as err:
        problems.append(str(err))
    from .imports import check_entries

    problems += check_entries(sections)  # the `external` checkpoints exist and fit `model`
    slurm, note = check_problems(sections)  # with launcher.kind: slurm, what sbatch --test-only says
    problems += slurm
    if problems:
        raise UserError(f"{params}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    err_console.print(f"{params}: {len(sections)} section(s) valid: {', '.join(sections)}")
    if note:
        err_console.print(f"note: {note}")


@app.command()
@user_errors
def plan(
    params: Path = ParamsOption,
    gpus: Optional[int] = typer.Option(None, min=0, help="GPUs of the node to plan for (default: this machine's)"),
    gpu_gib: Optional[float] = typer.Option(None, min=0, help="memory of each GPU, GiB"),
    host_gib: Optional[float] = typer.Option(None, min=0, help="host memory of the node, GiB"),
    disk_gib: Optional[float] = typer.Option(None, min=0, help="free disk, GiB"),
    cores: Optional[int] = typer.Option(None, min=1, help="CPU cores of the node"),
) -> None:
    """Items, memory, disk and time of every stage for these params, before anything runs; then
    what would not fit on the node (exit 1 if anything)."""
    from .plan import GIB, Machine, plan as make_plan, render

    here = Machine.here()
    machine = Machine(
        gpus=here.gpus if gpus is None else gpus,
        gpu_bytes=here.gpu_bytes if gpu_gib is None else int(gpu_gib * GIB),
        host_bytes=here.host_bytes if host_gib is None else int(host_gib * GIB),
        disk_bytes=here.disk_bytes if disk_gib is None else int(disk_gib * GIB),
        cores=here.cores if cores is None else cores,
    )
    costs, problems = make_plan(params, machine)
    typer.echo(render(costs, problems, machine), nl=False)
    if problems:
        raise typer.Exit(1)


@sweep_app.command("seeds")
@user_errors
def sweep_seeds(
    seeds: list[int] = typer.Argument(..., help="pretraining seeds other than the params file's own, e.g. 1 2"),
    params: Path = ParamsOption,
    queue: bool = typer.Option(False, "--queue", help="only queue the experiments (run them with `dvc queue start`)"),
) -> None:
    """One DVC experiment per pretraining seed (IR, LA, the random network, the supervised
    reference and LA's k-means together); then `localagg report --compare` measures the spread and
    `dvc repro report` says of each gap whether it lies outside it."""
    from . import sweep

    sweep.run(params, list(seeds), queue=queue, echo=err_console.print)


@preset_app.command("list")
def preset_list() -> None:
    """List the available presets."""
    from . import presets

    for name, path in presets.available().items():
        first = path.read_text().splitlines()[0].lstrip("# ").strip()
        typer.echo(f"{name}\t{first}")


@preset_app.command("show")
@user_errors
def preset_show(name: str) -> None:
    """Print a preset's file."""
    from . import presets

    typer.echo(presets.preset_path(name).read_text())


@preset_app.command("apply")
@user_errors
def preset_apply(
    name: str,
    params: Path = ParamsOption,
) -> None:
    """Merge preset NAME into the params file: the preset's keys and their comments replace the
    file's (other keys and comments are kept); the result is validated, then written atomically.
    Prints every value that changed."""
    from localagg.report.comparability import show

    from . import presets

    changed = presets.apply(name, params)
    err_console.print(f"applied preset {name} to {params}: {len(changed)} value(s) changed")
    for key, old, new in changed:
        typer.echo(f"{key}: {'(not set)' if old is presets.MISSING else show(old)} -> {show(new)}")


def main() -> None:
    app()
