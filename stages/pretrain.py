"""Stages `pretrain_ia` (Instance Recognition warm start), `pretrain_la` (Local Aggregation)
and `supervised` (the same backbone trained with labels: the reference the paper reports).

Each reads the `model` and `augment` sections and its own (`pretrain_ia` / `pretrain_la` /
`supervised`), trains on the prepared object set, and writes:

    checkpoints/<stage>/last.pt    resumable checkpoint (persist: true in dvc.yaml)
    models/<name>.pt               final weights + memory bank for the next stages, named by
                                   model: ir, la, supervised (and random, from `random_init`)
    metrics/<stage>.json           summary (final kNN top-1, loss, cluster statistics)
    dvclive/<stage>/               per-epoch curves (loss, kNN, lr, img/s, clustering); LA's
                                   steps continue IR's (curve_offset)

Each stage is one method object of localagg.training.methods run by the one loop
(localagg.training.loop.Trainer). With `num_processes` > 1 the command relaunches itself
under torchrun on this machine, or, with `launcher.kind: slurm`, submits itself as a SLURM
job of `num_processes` tasks over `launcher.slurm.nodes` nodes (launch.py, slurm.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from localagg.errors import UserError

from .common import DvcLiveLogger, measure_cost, write_results, wrote
from .launch import dispatch, exit_at_once_if_a_rank_fails
from .paths import model_path
from .params import load_section
from .roots import use_dataset_roots

OBJECT_DIR = Path("data/prepared/object")
log = logging.getLogger(__name__)


MODEL_NAMES = {"pretrain_ia": "ir", "pretrain_la": "la", "supervised": "supervised"}
# what `dvc metrics show` lists (metrics key: summary key); records/<stage>.json has every number
HEADLINE = {"knn_top1": "final_knn_top1", "knn_top1_init": "knn_top1_init", "loss": "final_loss",
            "cluster_nmi": "final_cluster_nmi"}


def paths(stage: str) -> dict[str, Path]:
    return {
        "checkpoints": Path("checkpoints") / stage,
        "model": model_path(MODEL_NAMES[stage]),
        "metrics": Path("metrics") / f"{stage}.json",
        "live": Path("dvclive") / stage,
    }


# the method each stage trains: (module of localagg.training.methods, class), imported on use
METHODS = {"pretrain_ia": ("instance_recognition", "InstanceRecognition"),
           "pretrain_la": ("local_aggregation", "LocalAggregation"),
           "supervised": ("supervised", "Supervised")}


def method_of(stage: str, cfg):
    """The method object of a pretraining stage, for its validated section."""
    import importlib

    module, name = METHODS[stage]
    return getattr(importlib.import_module(f"localagg.training.methods.{module}"), name)(cfg)


def run(stage: str, params: Path) -> dict:
    from localagg.training.loop import Trainer

    model_cfg = load_section(params, "model")
    aug = load_section(params, "augment")
    cfg = load_section(params, stage)
    use_dataset_roots(params, check=(OBJECT_DIR,))
    if stage == "supervised" and cfg.augment:
        aug = supervised_augment(params, aug, cfg)
    p = paths(stage)
    init_from = None
    if stage == "pretrain_la":
        init_from = model_path("ir")
        if not init_from.is_file():
            raise UserError(f"{init_from} does not exist: LA starts from the IR model; run `dvc repro pretrain_ia` first.")
    dispatch(stage, [stage.replace("_", "-")], params, cfg.num_processes, f"{stage}.num_processes")
    trainer = Trainer(method_of(stage, cfg), model_cfg, aug, OBJECT_DIR, p["checkpoints"], val_dir=OBJECT_DIR,
                      init_from=init_from)
    offset = curve_offset(trainer.parent_provenance)
    logger = DvcLiveLogger(p["live"], step_offset=offset) if trainer.dist.is_main else None
    trainer.logger = logger
    with measure_cost() as cost, exit_at_once_if_a_rank_fails(trainer.dist):
        result = trainer.run()
        trainer.export(p["model"])
    if trainer.dist.is_main:
        # train_seconds: the epochs' time summed over every run that built this model (resumes included)
        # (None when a checkpoint from before this record existed; a resumed epoch counts from the resume)
        timed = [row.get("epoch_seconds") for row in result.history]
        cost["train_seconds"] = round(sum(timed), 2) if None not in timed else None
        summary = result.summary
        record = {**summary, "model": MODEL_NAMES[stage], "stage": stage, "provenance": trainer.provenance(),
                  "history": result.history, "views": trainer.views(), "cost": cost}
        written = write_results(p["metrics"], record, {k: summary[v] for k, v in HEADLINE.items() if v in summary})
        logger.close()
        log.info("%s: %s", stage, wrote(p["model"], *written))
    return result.summary


def curve_offset(parent_provenance: list[dict]) -> int:
    """Where a warm-started training's dvclive curves start: after the epochs of the model it
    starts from (LA: IR's `epochs_done`), so that `dvc plots` draws IR then LA as one training;
    0 for a training from scratch. Its record keeps its own epochs (1, 2, ...)."""
    return int(parent_provenance[-1].get("epochs_done") or 0) if parent_provenance else 0


def supervised_augment(params: Path, aug, cfg):
    """The `augment` section with the keys `supervised.augment` replaces (validated as a whole)."""
    from pydantic import ValidationError

    from .params import format_validation_error

    try:
        return cfg.augment_spec(aug)
    except ValidationError as err:
        raise UserError(format_validation_error(params, "augment (with supervised.augment)", type(aug), err)) from None


def write_random(params: Path) -> Path:
    """Stage `random_init`: the untrained network (same architecture, seeded), exported in the
    same format as the trained models so that every evaluation treats the four alike."""
    import torch

    from localagg.models import build_model
    from localagg.runtime.checkpoint import save_export

    model_cfg = load_section(params, "model")
    seed = load_section(params, "random_init").seed
    torch.manual_seed(seed)
    model = build_model(model_cfg.arch, model_cfg.stem, model_cfg.embedding_dim)
    path = model_path("random")
    save_export(path, model, "random", provenance=[{"objective": "random", **model.meta(), "seed": seed,
                                                     "epochs_done": 0}])
    return path
