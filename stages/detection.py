"""Stage `detection` (a DVC matrix over model x seed): Faster R-CNN C4 fine-tuned on the
detection set from each model's backbone, tested with the VOC metric.

For model in {la, ir, random, supervised} (models/<model>.pt) and seed in detection.seeds,
with the `model`, `augment` (mean/std: the input normalisation of pretraining) and
`detection` sections and the manifest from `prepare`:

    checkpoints/detection/<model>-seed<s>/       converted backbone (backbone.pkl), Detectron2
                                                 checkpoint (resumable; persist: true), identity
    metrics/detection/<model>-seed<s>.json       AP50, AP, AP75 (percent), schedule, cost
    dvclive/detection/<model>-seed<s>/           loss curve (total and per loss), lr, test APs

A checkpoint is resumed only when it was written for the same Detectron2 config and the same
backbone weights (`identity.json`); otherwise the folder is cleared and training starts over.
With `num_gpus` > 1 the training runs in one process per GPU through Detectron2's launcher.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from localagg.errors import UserError
from localagg.io import read_json, write_json

from .common import err_console, measure_cost
from .params import load_section
from .prepare import read_detection_manifest
from .paths import MODELS, STAGE_OF_MODEL, detection_cell, detection_metrics_path, model_path
from .pretrain import DvcLiveLogger

DATASET_PREFIX = "localagg_detection"  # Detectron2 catalog names: <prefix>_<year>_<split>
IDENTITY = "identity.json"


def dataset_name(manifest: dict) -> str:
    """"voc07" for real VOC tested on VOC2007 test (the paper's benchmark), else the manifest's name."""
    if manifest["name"] == "voc" and [list(s) for s in manifest["splits"]["test"]] == [["VOC2007", "test"]]:
        return "voc07"
    return manifest["name"]


def run(model: str, seed: int, params: Path, resume: bool = True) -> dict:
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; expected one of: {', '.join(MODELS)}.")
    load_section(params, "model")  # the whole file must be valid before compute is spent
    aug = load_section(params, "augment")
    p = load_section(params, "detection")
    det_cfg = p.for_seed(seed)
    ckpt = model_path(model)
    if not ckpt.is_file():
        raise UserError(f"{ckpt} does not exist: run `dvc repro {STAGE_OF_MODEL[model]}` first.")
    manifest = read_detection_manifest()
    if det_cfg.device == "cuda":
        _check_gpus(det_cfg.num_gpus)

    from localagg.detection import build_cfg, convert_to_detectron2, launch_training, register_voc_manifest
    from localagg.detection import save_detectron2_pkl
    from localagg.training.checkpoint import load_export

    export = load_export(ckpt)
    converted = convert_to_detectron2(export["model"], export["model_meta"])  # non-ResNet: clear error
    arch = export["model_meta"]["arch"]
    train_names, test_names = register_voc_manifest(manifest, DATASET_PREFIX)  # checks folders and classes

    name = detection_cell(model, seed)
    out_dir = Path("checkpoints") / "detection" / name
    # the backbone sees inputs normalised as in pretraining (augment.mean/std, in 0-255 units)
    cfg = build_cfg(det_cfg, arch, len(manifest["classes"]), train_names, test_names, out_dir.resolve(),
                    pixel_mean=[255.0 * v for v in aug.mean], pixel_std=[255.0 * v for v in aug.std])
    identity = {"config": hashlib.sha256(cfg.dump().encode()).hexdigest(), "backbone": _sha256(ckpt)}
    if out_dir.is_dir() and (not resume or _read_identity(out_dir) != identity):
        if any(out_dir.glob("*.pth")):
            err_console.print(f"{out_dir}: checkpoint of other params or weights (or --no-resume); starting over")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / IDENTITY, identity)
    pkl = out_dir / "backbone.pkl"
    save_detectron2_pkl(converted, pkl)

    logger = DvcLiveLogger(Path("dvclive") / "detection" / name)
    with measure_cost() as cost:
        aps = launch_training(det_cfg.num_gpus, manifest, DATASET_PREFIX, cfg, pkl, resume=resume,
                              logger=logger, log_period=det_cfg.log_period)
    logger.close()
    metrics = {"model": model, "seed": seed, "arch": arch, "dataset_name": dataset_name(manifest),
               **{k: aps[k] for k in ("AP50", "AP", "AP75")},
               "max_iter": det_cfg.max_iter, "ims_per_batch": det_cfg.ims_per_batch, "num_gpus": det_cfg.num_gpus,
               "cost": cost}
    write_json(detection_metrics_path(model, seed), metrics)
    return metrics


def _check_gpus(wanted: int) -> None:
    import torch

    found = torch.cuda.device_count()
    if found < wanted:
        raise UserError(
            f"detection.num_gpus is {wanted} with device cuda, but this machine has {found} GPU(s); "
            "set detection.num_gpus (and ims_per_batch divisible by it), or device: cpu with norm: BN and num_gpus: 1."
        )


def _read_identity(out_dir: Path) -> dict | None:
    try:
        return read_json(out_dir / IDENTITY)
    except (OSError, ValueError):
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
