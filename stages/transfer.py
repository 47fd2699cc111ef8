"""Stage `transfer` (a DVC matrix over model x dataset): per-layer linear readout and kNN.

For model in {la, ir, random, supervised} (models/<model>.pt), dataset in {object,
transfer} (data/prepared/<dataset>) and seed in transfer.seeds, with the `model`, `augment`
and `transfer` sections:

    metrics/transfer/<model>-<dataset>-seed<s>.json   per-layer top-1 (centre and 10-crop), kNN top-1
    records/transfer/<model>-<dataset>-seed<s>.json   also top-5, feature sizes, what ran (readout
                                                      protocol, the model's provenance), cost
    dvclive/transfer/<model>-<dataset>-seed<s>/       readout training curves (loss per layer, lr)
"""

from __future__ import annotations

from pathlib import Path

from localagg.errors import UserError
from localagg.io import read_json

from .common import DvcLiveLogger, measure_cost, write_results
from .params import check_seed, load_section
from .paths import DATASETS as DATASET_NAMES
from .paths import MODELS, STAGE_OF_MODEL, model_path, transfer_cell, transfer_metrics_path

DATASETS = {name: Path("data/prepared") / name for name in DATASET_NAMES}


def run(model: str, dataset: str, params: Path, seed: int = 0) -> dict:
    from localagg.evaluation.linear import train_linear_readout
    from localagg.evaluation.transfer import knn_eval, load_backbone, open_readout_split
    from localagg.training.checkpoint import load_export

    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; expected one of: {', '.join(MODELS)}.")
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; expected one of: {', '.join(DATASETS)}.")
    model_cfg = load_section(params, "model")
    aug = load_section(params, "augment")
    p = load_section(params, "transfer")
    check_seed("transfer", seed, p.seeds)
    readout = getattr(p, dataset).model_copy(update={"seed": seed})
    ckpt = model_path(model)
    if not ckpt.is_file():
        raise UserError(f"{ckpt} does not exist: run `dvc repro {STAGE_OF_MODEL[model]}` first.")
    data_dir = DATASETS[dataset]
    classes = read_json(data_dir / "dataset.json")["classes"] if (data_dir / "dataset.json").is_file() else None
    if classes is None:
        raise UserError(f"{data_dir}/dataset.json does not exist: run `dvc repro prepare` first.")
    from localagg.data.datasets import open_split

    name = transfer_cell(model, dataset, seed)
    train_split = open_readout_split(data_dir, "train", readout)
    if p.knn.k > len(train_split):
        raise UserError(f"transfer.knn.k = {p.knn.k:,} is larger than the {len(train_split):,} training images of the "
                        f"{dataset} set; lower it.")
    logger = DvcLiveLogger(Path("dvclive") / "transfer" / name)
    with measure_cost() as cost:
        export = load_export(ckpt, "pretrained model")
        backbone = load_backbone(ckpt, model_cfg, export=export)
        val = open_readout_split(data_dir, "val", readout)
        result = train_linear_readout(backbone, train_split, val, len(classes), readout, aug, logger=logger)
        logger.close()
        knn = knn_eval(backbone, open_split(data_dir, "train", crop_size=aug.crop_size),
                       open_split(data_dir, "val", crop_size=aug.crop_size), len(classes), k=p.knn.k,
                       temperature=p.knn.temperature, augment_spec=aug, device=readout.device,
                       num_workers=readout.num_workers)
    info = read_json(data_dir / "dataset.json")
    protocol = {"dataset": info["name"], "train_images": info["splits"]["train"], "val_images": info["splits"]["val"],
                "readout": readout.model_dump(mode="json", exclude={"seed", "device", "num_workers"}),
                "knn": p.knn.model_dump(mode="json")}
    knn_top1 = {"embedding": knn["embedding"], "conv5": knn["conv5"]}
    record = {"model": model, "dataset": dataset, "dataset_name": info["name"], "arch": model_cfg.arch, "seed": seed,
              "linear": result["layers"], "feature_dims": result["feature_dims"], "knn": knn_top1,
              "knn_k": p.knn.k, "epochs": readout.epochs, "protocol": protocol,
              "provenance": export.get("provenance") or [], "cost": cost}
    headline = {"linear": {layer: {k: v for k, v in m.items() if k.startswith("top1")}
                           for layer, m in result["layers"].items()}, "knn": knn_top1}
    write_results(transfer_metrics_path(model, dataset, seed), record, headline)
    return record
