"""Stage `transfer` (a DVC matrix over model x dataset): per-layer linear readout and kNN.

For model in {la, ir, random, supervised} or an imported one (an `external` entry; its
cells are the matrix transfer_external) (models/<model>.pt), or `pixels` (the raw-pixel
baseline: the normalised input read out as one layer, no network), dataset in {object,
transfer} (data/prepared/<dataset>), with the `model`, `augment` and `transfer` sections:

    metrics/transfer/<model>-<dataset>.json   best layer and conv5 top-1 (mean over the readout
                                              seeds), kNN top-1
    records/transfer/<model>-<dataset>.json   every seed's top-1/top-5 per layer (centre and
                                              10-crop) and per class, feature sizes, kNN, what
                                              ran (readout protocol, the model's provenance),
                                              retrieval and an embedding map (object set), cost
    dvclive/transfer/<model>-<dataset>/seed<s>/   readout training curves (loss per layer, lr)

The readout runs once per seed of `transfer.seeds` in one process: with cached features the
backbone's passes serve every seed, so the seed spread costs little. kNN is deterministic.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from localagg.errors import UserError
from localagg.io import read_json

from .common import DvcLiveLogger, measure_cost, write_results, wrote
from .launch import dispatch, exit_at_once_if_a_rank_fails
from .params import load_section
from .roots import use_dataset_roots
from .paths import DATASETS as DATASET_NAMES
from .paths import (PIXELS, check_model, model_path, stage_of, transfer_cell, transfer_metrics_path,
                    transfer_stage)

DATASETS = {name: Path("data/prepared") / name for name in DATASET_NAMES}
VIEWS_ROLE = "object"  # retrieval and the embedding map are made on the object set
log = logging.getLogger(__name__)


def _losses(history: list[dict]) -> dict[str, list[float]]:
    """{layer: [first epoch's, last epoch's training loss]} of one readout run: the report
    flags a loss that grew (a diverged classifier reads as a plain accuracy otherwise)."""
    if not history:
        return {}
    layers = [k[len("loss_"):] for k in history[0] if k.startswith("loss_")]
    return {layer: [float(history[0][f"loss_{layer}"]), float(history[-1][f"loss_{layer}"])] for layer in layers}


def run(model: str, dataset: str, params: Path) -> dict | None:
    """The cell's record (written by rank 0; None on the other ranks of a multi-process run)."""
    from localagg.data.datasets import open_split
    from localagg.evaluation import views
    from localagg.evaluation.linear import train_linear_readouts
    from localagg.evaluation.transfer import (knn_eval, load_backbone, network_space_fn, open_readout_split,
                                              pixel_space_fn)
    from localagg.knn import knn_top1
    from localagg.models.backbone import RawPixels
    from localagg.runtime.checkpoint import load_export
    from localagg.runtime.distributed import init_distributed

    check_model(model, params, pixels=True)
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; expected one of: {', '.join(DATASETS)}.")
    aug = load_section(params, "augment")
    p = load_section(params, "transfer")
    dispatch("transfer", ["transfer", "--model", model, "--dataset", dataset], params, p.num_processes,
             "transfer.num_processes", cell=transfer_stage(model, dataset))
    model_cfg = load_section(params, "model") if model != PIXELS else None  # the baseline reads no `model`
    readout = getattr(p, dataset)
    if model == PIXELS:
        readout = readout.model_copy(update={"layers": [PIXELS]})
    ckpt = model_path(model) if model != PIXELS else None
    if ckpt is not None and not ckpt.is_file():
        raise UserError(f"{ckpt} does not exist: run `dvc repro {stage_of(model)}` first.")
    data_dir = DATASETS[dataset]
    if not (data_dir / "dataset.json").is_file():
        raise UserError(f"{data_dir}/dataset.json does not exist: run `dvc repro prepare` first.")
    use_dataset_roots(params, check=(data_dir,))
    info = read_json(data_dir / "dataset.json")
    classes = info["classes"]
    cell = transfer_cell(model, dataset)
    train_split = open_readout_split(data_dir, "train", readout)
    if p.knn.k > len(train_split):
        raise UserError(f"transfer.knn.k = {p.knn.k:,} is larger than the {len(train_split):,} training images of the "
                        f"{dataset} set; lower it.")
    from .params import cache_problems

    problems = cache_problems(model_cfg, readout, f"transfer.{dataset}", info["splits"]["train"],
                              info["splits"]["val"], models=("pixels",) if model == PIXELS else ("networks",))
    if problems:
        raise UserError(f"{params}: " + problems[0] + ".")
    dist = init_distributed(readout.device, p.collective_timeout_s)
    loggers: dict[int, DvcLiveLogger] = {}

    def logger_for(seed: int) -> DvcLiveLogger | None:
        if not dist.is_main:
            return None
        loggers[seed] = DvcLiveLogger(Path("dvclive") / "transfer" / cell / f"seed{seed}")
        return loggers[seed]

    with measure_cost() as cost, exit_at_once_if_a_rank_fails(dist):
        if model == PIXELS:
            export, backbone = {"provenance": []}, RawPixels()
        else:
            export = load_export(ckpt, "pretrained model")
            backbone = load_backbone(ckpt, model_cfg, export=export)
        val_split = open_readout_split(data_dir, "val", readout)
        result = train_linear_readouts(backbone, train_split, val_split, len(classes), readout, aug, p.seeds,
                                       logger_for, dist=dist)
        for logger in loggers.values():
            logger.close()
        shared = result["knn_features"]  # the readout's cached forwards, when their geometry is kNN's
        pixel_size = p.knn.pixel_size or aug.crop_size
        if shared is not None and (readout.resize, readout.crop_size) == (aug.crop_size, aug.crop_size) \
                and info["kind"] == "arrays" and (model != PIXELS or pixel_size == aug.crop_size):
            knn = {space: knn_top1(shared["val"][space], val_split.labels, shared["train"][space], train_split.labels,
                                   len(classes), p.knn.k, p.knn.temperature) for space in shared["val"]}
            features = {split: shared[split][PIXELS if model == PIXELS else "embedding"] for split in ("train", "val")}
            shown = ({"retrieval": views.retrieval(features["train"], features["val"], val_split.labels),
                      "map": views.embedding_map(features["val"])} if dataset == VIEWS_ROLE else {})
        else:
            knn_train = open_split(data_dir, "train", crop_size=aug.crop_size)
            knn_val = open_split(data_dir, "val", crop_size=aug.crop_size)
            space_fn = (pixel_space_fn(aug, pixel_size) if model == PIXELS
                        else network_space_fn(backbone, aug, dist.device))
            found = knn_eval(space_fn, knn_train, knn_val, len(classes), p.knn.k, p.knn.temperature,
                             device=dist.device, num_workers=readout.num_workers, views=dataset == VIEWS_ROLE,
                             dist=dist)
            knn = found["knn"]
            shown = ({"retrieval": found["retrieval"], "map": views.embedding_map(found["map_features"])}
                     if dataset == VIEWS_ROLE and dist.is_main else {})
    if not dist.is_main:
        return None
    readout_protocol = readout.model_dump(mode="json", exclude={"seed", "device", "num_workers"})
    readout_protocol["amp"] = result["amp"]  # what ran, not the setting
    protocol = {"dataset": info["name"], "train_images": info["splits"]["train"], "val_images": info["splits"]["val"],
                "readout": readout_protocol, "world_size": dist.world_size,
                "knn": {**p.knn.model_dump(mode="json"), "pixel_size": pixel_size if model == PIXELS else None}}
    runs = [{"seed": r["seed"], "linear": r["layers"], "per_class": r["per_class"], "losses": _losses(r["history"])}
            for r in result["runs"]]
    record = {"model": model, "dataset": dataset, "dataset_name": info["name"],
              "arch": model_cfg.arch if model_cfg is not None else "none",
              "seeds": list(p.seeds), "runs": runs, "feature_dims": result["feature_dims"], "knn": knn,
              "knn_k": p.knn.k, "classes": classes, "protocol": protocol, "provenance": export.get("provenance") or [],
              "views": shown, "cost": cost}
    written = write_results(transfer_metrics_path(model, dataset), record, headline(runs, knn))
    log.info("transfer %s: %s", cell, wrote(*written))
    return record


def headline(runs: list[dict], knn: dict) -> dict:
    """What `dvc metrics show` lists for a cell: the best layer's and conv5's top-1 (centre crop,
    mean over seeds) and the kNN top-1 (embedding; raw pixels for the pixel baseline)."""
    layers = runs[0]["linear"]
    mean = {layer: statistics.fmean(r["linear"][layer]["top1"] for r in runs) for layer in layers}
    best = max(mean, key=mean.get)
    out = {"best_top1": round(mean[best], 2), "knn_top1": round(knn.get("embedding", knn.get(PIXELS)), 2)}
    if "conv5" in mean:
        out["conv5_top1"] = round(mean["conv5"], 2)
    return out
