"""Stage `detection` (a DVC matrix over model x seed): Faster R-CNN C4 fine-tuned on the
detection set from each model's backbone, tested with the VOC metric.

For model in {la, ir, random, supervised} (models/<model>.pt) and seed in detection.seeds,
with the `augment` (mean/std: the input normalisation of pretraining) and `detection`
sections and the manifest from `prepare`:

    checkpoints/detection/<model>-seed<s>/       converted backbone (backbone.pth), the resumable
                                                 checkpoint, identity, curve.jsonl (the logged
                                                 curve, replayed on resume); not a DVC output
    metrics/detection/<model>-seed<s>.json       AP50, AP, AP75 (percent)
    records/detection/<model>-seed<s>.json       the same, what ran (protocol, the backbone's
                                                 provenance), cost
    dvclive/detection/<model>-seed<s>/           loss curve (total and per loss), lr, test APs

A checkpoint is resumed only when it was written for the same training config, backbone
weights, detection set (the manifest's content hashes) and detection code (`identity.json`);
otherwise the folder is cleared and training starts over; a resumed cell ends where an
uninterrupted one ends (localagg.detection.train). Output folder, loader workers and
checkpoint/test periods are not part of the identity. With `num_gpus` > 1 the training runs in
one process per GPU through Detectron2's launcher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from localagg.errors import UserError
from localagg.io import file_sha256, read_json, write_json

from .common import DvcLiveLogger, err_console, measure_cost, write_results, wrote
from .launch import dispatch
from .params import load_section
from .roots import use_dataset_roots
from .paths import (DETECTION_MANIFEST, check_model, detection_cell, detection_metrics_path, detection_stage, model_path,
                    stage_of)

DATASET_PREFIX = "localagg_detection"  # Detectron2 catalog names: <prefix>_<year>_<split>
IDENTITY = "identity.json"
CURVE = "curve.jsonl"
log = logging.getLogger(__name__)


def dataset_name(manifest: dict) -> str:
    """"voc07" for real VOC tested on VOC2007 test (the benchmark's test set; which trainval sets
    were used is in the record's protocol, and the report compares it with the paper's),
    else the manifest's name ("voc" for other VOC test splits, "synthetic_voc")."""
    splits = {k: [list(s) for s in v] for k, v in manifest["splits"].items()}
    if manifest["name"] == "voc" and splits["test"] == [["VOC2007", "test"]]:
        return "voc07"
    return manifest["name"]


def run(model: str, seed: int, params: Path, resume: bool = True) -> dict:
    check_model(model, params, pixels=False)
    from localagg.detection.convert import require_resnet

    require_resnet(load_section(params, "model").arch)  # AlexNet, VGG16: refused before anything runs
    aug = load_section(params, "augment")
    det_cfg = load_section(params, "detection").for_seed(seed)
    ckpt = model_path(model)
    if not ckpt.is_file():
        raise UserError(f"{ckpt} does not exist: run `dvc repro {stage_of(model)}` first.")
    from localagg.data.voc import read_voc_manifest

    use_dataset_roots(params)
    manifest = read_voc_manifest(DETECTION_MANIFEST)
    machines = _machines()
    if det_cfg.device == "cuda":
        _check_gpus(det_cfg.num_gpus // machines["num_machines"])
    dispatch("detection", ["detection", "--model", model, "--seed", str(seed), *([] if resume else ["--no-resume"])],
             params, det_cfg.num_gpus, "detection.num_gpus", per_node_workers=True, cell=detection_stage(model, seed))

    import localagg.detection as det
    from localagg.detection.train import CHECKPOINT, EXAMPLES, checkpoint_progress
    from localagg.runtime.checkpoint import load_export

    export = load_export(ckpt)
    from localagg.models.backbone import check_meta

    model_cfg = load_section(params, "model")
    check_meta(export["model_meta"], {"arch": model_cfg.arch}, str(ckpt))  # the trunk the detector gets
    converted = det.convert_to_detectron2(export["model"], export["model_meta"])  # non-ResNet: clear error
    arch = export["model_meta"]["arch"]
    train_names, test_names = det.register_voc_manifest(manifest, DATASET_PREFIX)  # checks folders and classes

    name = detection_cell(model, seed)
    out_dir = Path("checkpoints") / "detection" / name
    # the backbone sees inputs normalised as in pretraining (augment.mean/std, in 0-255 units)
    cfg = det.build_cfg(det_cfg, arch, len(manifest["classes"]), train_names, test_names, out_dir.resolve(),
                        pixel_mean=[255.0 * v for v in aug.mean], pixel_std=[255.0 * v for v in aug.std])
    identity = _identity(cfg, ckpt, manifest)
    if out_dir.is_dir() and (not resume or _read_json_or_none(out_dir / IDENTITY) != identity):
        if (out_dir / CHECKPOINT).is_file():
            reason = "--no-resume" if not resume else "it was trained with other params, weights, data or code"
            err_console.print(f"{out_dir}: not resuming its checkpoint ({reason}); training starts over")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / IDENTITY, identity)
    weights = out_dir / "backbone.pth"
    det.save_converted(converted, weights)

    logger = CurveLogger(out_dir / CURVE, DvcLiveLogger(Path("dvclive") / "detection" / name))
    progress = checkpoint_progress(out_dir)
    if progress["iterations"]:
        err_console.print(f"{out_dir}: resuming at iteration {progress['iterations']:,} of {det_cfg.max_iter:,}")
    logger.replay(upto=progress["iterations"], final=bool(progress.get("final")))
    with measure_cost() as cost:
        aps = det.launch_training(det_cfg.num_gpus // machines["num_machines"], manifest, DATASET_PREFIX, cfg, weights,
                                  resume=resume, logger=logger, log_period=det_cfg.log_period, **machines)
    logger.close()
    if machines["machine_rank"]:  # the first machine tests, writes and reports
        return {}
    if not all(k in aps for k in ("AP50", "AP", "AP75")):
        raise UserError(f"the VOC evaluator returned no box APs on {test_names[0]} ({aps}); "
                        "check that the test split has annotated objects.")
    headline = {k: aps[k] for k in ("AP50", "AP", "AP75")}
    examples = _read_json_or_none(out_dir / EXAMPLES) or []
    record = {"model": model, "seed": seed, "arch": arch, "dataset_name": dataset_name(manifest), **headline,
              "protocol": protocol(det_cfg, manifest), "provenance": export.get("provenance") or [],
              "resumed_from": progress["iterations"], "classes": manifest["classes"],
              "views": {"detections": examples}, "cost": cost}
    written = write_results(detection_metrics_path(model, seed), record, headline)
    log.info("detection %s: %s", name, wrote(*written))
    return record


DETECTOR = "Detectron2 Faster R-CNN R50-C4"


def protocol(det_cfg, manifest: dict) -> dict:
    """What the detection cell ran: its schedule and the (year, split) sets with their sizes."""
    return {"detector": DETECTOR, "train_sets": manifest["splits"]["trainval"], "test_sets": manifest["splits"]["test"],
            "train_images": manifest["counts"]["trainval"]["images"],
            "test_images": manifest["counts"]["test"]["images"],
            **det_cfg.model_dump(mode="json", exclude={"seed", "num_workers", "checkpoint_period", "log_period",
                                                        "eval_period", "device"})}


class CurveLogger:
    """Appends every logged record to a JSON-lines file in the checkpoint folder and forwards it
    to dvclive; `replay` re-sends the records a resumed run already logged, so the curve stays
    whole. Picklable before use (records are written by rank 0 of a launch)."""

    def __init__(self, path: Path, live: DvcLiveLogger):
        self.path, self.live = Path(path), live

    def replay(self, upto: int, final: bool) -> None:
        """Forward the saved records with step <= `upto` (the resumed checkpoint's) and drop the
        rest; when the checkpoint is the final one, also its test APs, which the resumed run
        measures again."""
        if not self.path.is_file():
            return
        kept = [r for r in map(json.loads, self.path.read_text().splitlines())
                if r["step"] < upto or (r["step"] == upto and not (final and "AP50" in r["metrics"]))]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        for r in kept:
            self.live.log_step(r["step"], r["metrics"])

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "metrics": metrics}) + "\n")
        self.live.log_step(step, metrics)

    def close(self) -> None:
        self.live.close()


def _identity(cfg, ckpt: Path, manifest: dict) -> dict:
    """What the trained detector depends on: config (less output folder, workers, periods),
    backbone file, detection set (manifest content, hashes included) and detection code."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR, cfg.DATALOADER.NUM_WORKERS, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD = "", 0, 0, 0
    code = hashlib.sha256()
    import localagg.detection

    for path in sorted(Path(localagg.detection.__file__).parent.glob("*.py")) + [Path(__file__)]:
        code.update(path.read_bytes())
    # where the workspace and the images are is not what the detector depends on: the manifest's
    # content is (the annotations' sha256 included), so a moved workspace resumes
    data = {k: v for k, v in manifest.items() if k not in ("root", "annotations")}
    return {"config": hashlib.sha256(cfg.dump().encode()).hexdigest(), "backbone": file_sha256(ckpt),
            "data": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest(),
            "code": code.hexdigest()}


def _machines() -> dict:
    """This machine's place among the job's (a SLURM task per node sets NUM_NODES, NODE_RANK and
    MASTER_ADDR/PORT, slurm_task.py); one machine otherwise."""
    import os

    nodes = int(os.environ.get("NUM_NODES", "1"))
    if nodes <= 1:
        return {"num_machines": 1, "machine_rank": 0, "dist_url": "auto"}
    return {"num_machines": nodes, "machine_rank": int(os.environ["NODE_RANK"]),
            "dist_url": f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"}


def _check_gpus(wanted: int) -> None:
    import torch

    found = torch.cuda.device_count()
    if found < wanted:
        raise UserError(
            f"detection.num_gpus is {wanted} with device cuda, but this machine has {found} GPU(s); "
            "set detection.num_gpus (and ims_per_batch divisible by it), or device: cpu with norm: BN and num_gpus: 1."
        )


def _read_json_or_none(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None
