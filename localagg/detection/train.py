"""Fine-tune Faster R-CNN C4 on PASCAL VOC with Detectron2 and test it with the VOC metric.

One plain loop built from Detectron2's pieces (as its `tools/plain_train_net.py`): model,
optimizer and warm-up + multi-step schedule from the config, its train/test loaders, its
checkpointer for resuming, and `PascalVOCDetectionEvaluator` on the test set at the end
(and every TEST.EVAL_PERIOD iterations if set), after precise BN if TEST.PRECISE_BN is on
(re-estimated batch-norm statistics on training batches, saved in the checkpoint). The evaluator uses the VOC07 11-point AP
when the test set's year is 2007 (`meta.year == 2007`) and the area under the curve for
2012; it reports AP50, AP75 and AP (mean over IoU 0.50:0.05:0.95), in percent.

Several GPUs: `launch_training` runs `train_detector` once per GPU through
`detectron2.engine.launch` (NCCL; gloo on CPU) and returns what rank 0 wrote.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Protocol, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.data.datasets import register_pascal_voc
from detectron2.engine import launch
from detectron2.evaluation import PascalVOCDetectionEvaluator, inference_on_dataset
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from fvcore.nn.precise_bn import update_bn_stats
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError
from ..io import read_json, write_json
from ..progress import track
from ..data.voc import read_annotation
from . import config as _config  # noqa: F401  (registers LocalAggRes5ROIHeads for build_model)
from .convert import load_detectron2_pkl, load_strict

TEST_METRICS = "test_metrics.json"  # written by rank 0 into OUTPUT_DIR at the end
METRIC_KEYS = ("AP50", "AP", "AP75")

log = logging.getLogger(__name__)
# Detectron2's anchor generator calls torch.meshgrid without `indexing` (torch >= 1.10 warns).
warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)


class StepLogger(Protocol):
    """Receives the training curve: mean losses over the last `log_period` iterations, lr, and test APs."""

    def log_step(self, iteration: int, metrics: dict[str, float]) -> None: ...


# --------------------------------------------------------------------------- datasets


def register_voc_manifest(manifest: dict, name_prefix: str) -> tuple[list[str], list[str]]:
    """Register each (year, split) of a `voc.prepare_voc` manifest with Detectron2.

    Names are "{name_prefix}_{year}_{split}"; returns (train names, test names). The
    manifest's "root" must be absolute. Before registering, checks that every year folder
    and split list exists and that every object in the listed annotations has a class in
    manifest["classes"] (`UserError` naming what is wrong). A name already registered
    with the same folder, split, year and classes is kept; with others it is an error.
    """
    root = Path(manifest["root"])
    classes = list(manifest["classes"])
    if not root.is_dir():
        raise UserError(f"VOC root {root} does not exist; run the prepare stage or fix the detection root.")
    pairs = [(set_name, year, split) for set_name in ("trainval", "test") for year, split in manifest["splits"][set_name]]
    for set_name, year, split in pairs:  # everything is checked before anything is registered
        if set_name == "test" and _year_number(year) not in (2007, 2012):
            raise UserError(
                f"test split {year}/{split}: Detectron2's VOC evaluator knows only VOC2007 "
                "(11-point AP) and VOC2012 (area AP) test years."
            )
        check_voc_split(root / year, split, classes)
    names: dict[str, list[str]] = {"trainval": [], "test": []}
    for set_name, year, split in pairs:
        name = f"{name_prefix}_{year}_{split}"
        _register(name, root / year, split, _year_number(year), classes)
        names[set_name].append(name)
    return names["trainval"], names["test"]


def _year_number(year: str) -> int:
    match = re.fullmatch(r"VOC(\d{4})", str(year))
    if match is None:
        raise UserError(f"VOC year folder {year!r} is not named VOC<year> (e.g. VOC2007).")
    return int(match[1])


def check_voc_split(year_dir: Path, split: str, classes: Sequence[str]) -> None:
    """Raise `UserError` if `year_dir` or its split list is missing, or if an object's class
    is not in `classes` (listing every such class with its count and one file)."""
    if not year_dir.is_dir():
        raise UserError(f"VOC year folder {year_dir} does not exist; expected Annotations/, JPEGImages/, ImageSets/Main/ in it.")
    list_path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not list_path.is_file():
        raise UserError(f"VOC split list {list_path} does not exist.")
    ids = [line.split()[0] for line in list_path.read_text().splitlines() if line.strip()]
    if not ids:
        raise UserError(f"VOC split list {list_path} lists no image ids.")
    known = set(classes)
    unknown: Counter[str] = Counter()
    example: dict[str, Path] = {}
    for image_id in ids:
        xml_path = year_dir / "Annotations" / f"{image_id}.xml"
        for obj in read_annotation(xml_path).objects:
            if obj.name not in known:
                unknown[obj.name] += 1
                example.setdefault(obj.name, xml_path)
    if unknown:
        listed = "; ".join(f"{n!r} ({c} object(s), e.g. {example[n]})" for n, c in sorted(unknown.items()))
        raise UserError(
            f"{year_dir.name}/{split}: annotations name classes that are not in the class list "
            f"({', '.join(classes)}): {listed}. Make the class list match the annotations."
        )


def _register(name: str, year_dir: Path, split: str, year: int, classes: list[str]) -> None:
    wanted = {"dirname": str(year_dir), "split": split, "year": year, "thing_classes": classes}
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        found = {k: meta.get(k, None) for k in wanted}
        found["thing_classes"] = list(found["thing_classes"] or [])
        if found != wanted:
            raise UserError(
                f"Detectron2 dataset {name!r} is already registered as {found}, not {wanted}; "
                "use another name prefix."
            )
        return
    register_pascal_voc(name, str(year_dir), split, year, class_names=classes)


# --------------------------------------------------------------------------- training


def train_detector(
    cfg: CfgNode,
    weights_pkl: str | os.PathLike | None = None,
    resume: bool = False,
    logger: StepLogger | None = None,
    log_period: int = 20,
) -> dict[str, float]:
    """Train the detector of `cfg` (from `config.build_cfg`) and test it; return {"AP50", "AP", "AP75"}.

    `weights_pkl`: a converted backbone (`convert.save_detectron2_pkl`) loaded strictly
    (`convert.load_strict`); None trains from random init. `resume`: continue from the last
    checkpoint in cfg.OUTPUT_DIR if there is one (then `weights_pkl` is not read).
    `logger.log_step` gets, every `log_period` iterations and at the last, the mean
    total_loss and loss components over those iterations and the lr; and the APs of every
    test. Runs in every process of a `launch`; only rank 0 logs, saves and returns the APs
    (other ranks return {}). Rank 0 also writes them to OUTPUT_DIR/test_metrics.json.
    """
    if len(cfg.DATASETS.TEST) != 1:
        raise UserError(f"detection tests on one VOC test set; got {len(cfg.DATASETS.TEST)}: {list(cfg.DATASETS.TEST)}.")
    if log_period < 1:
        raise UserError(f"log_period must be at least 1; got {log_period}.")
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(weights_pkl or "")
    cfg.freeze()
    seed_all_rng(cfg.SEED + comm.get_rank())
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)

    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, optimizer=optimizer, scheduler=scheduler)
    start_iter, saved = 0, None
    if resume and checkpointer.has_checkpoint():
        saved = Path(checkpointer.get_checkpoint_file()).stem
        start_iter = checkpointer.resume_or_load("", resume=True).get("iteration", -1) + 1
    elif weights_pkl:
        load_strict(model, load_detectron2_pkl(weights_pkl))
    if comm.get_world_size() > 1:
        device_ids = [comm.get_local_rank()] if cfg.MODEL.DEVICE.startswith("cuda") else None
        model = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)

    max_iter = cfg.SOLVER.MAX_ITER
    data = iter(build_detection_train_loader(cfg))
    window: dict[str, torch.Tensor] = {}
    steps_in_window = 0
    model.train()
    with EventStorage(start_iter) as storage:
        for iteration in track(range(start_iter, max_iter), "detection training", total=max_iter - start_iter,
                               enabled=comm.is_main_process()):
            storage.iter = iteration
            loss_dict = model(next(data))
            losses = sum(loss_dict.values())
            if not torch.isfinite(losses):
                raise UserError(
                    f"detection loss became {losses.item()} at iteration {iteration} "
                    f"({ {k: v.item() for k, v in loss_dict.items()} }); lower base_lr or raise warmup_iters."
                )
            optimizer.zero_grad()
            losses.backward()
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()

            for k, v in loss_dict.items():
                window[k] = window.get(k, 0.0) + v.detach()
            steps_in_window += 1
            last = iteration == max_iter - 1
            if (iteration + 1) % log_period == 0 or last:
                means = {k: v / steps_in_window for k, v in comm.reduce_dict(window).items()}  # all ranks
                if logger is not None and comm.is_main_process():
                    record = {k: float(v) for k, v in means.items()}
                    logger.log_step(iteration + 1, {"total_loss": sum(record.values()), **record, "lr": lr})
                window, steps_in_window = {}, 0
            test_now = last or (cfg.TEST.EVAL_PERIOD and (iteration + 1) % cfg.TEST.EVAL_PERIOD == 0)
            if test_now and cfg.TEST.PRECISE_BN.ENABLED:  # before saving, so the checkpoint is what is tested
                update_bn_stats(model, data, cfg.TEST.PRECISE_BN.NUM_ITER)
            if last or (iteration + 1) % cfg.SOLVER.CHECKPOINT_PERIOD == 0:
                saved = _save(checkpointer, "model_final" if last else f"model_{iteration + 1:07d}", iteration, saved)
            if test_now and not last:
                aps = _test(cfg, model)
                if logger is not None and aps:
                    logger.log_step(iteration + 1, aps)
        aps = _test(cfg, model)
    if comm.is_main_process():
        if logger is not None:
            logger.log_step(max_iter, aps)
        write_json(Path(cfg.OUTPUT_DIR) / TEST_METRICS, aps)
    return aps


def _save(checkpointer: DetectionCheckpointer, name: str, iteration: int, previous: str | None) -> str:
    """Save checkpoint `name` (model, optimizer, scheduler, iteration), then delete the
    previous one: one checkpoint on disk, never none."""
    checkpointer.save(name, iteration=iteration)
    if previous and previous != name and comm.is_main_process():
        (Path(checkpointer.save_dir) / f"{previous}.pth").unlink(missing_ok=True)
    return name


def _test(cfg: CfgNode, model: torch.nn.Module) -> dict[str, float]:
    """The VOC evaluator on the test set: {"AP50", "AP", "AP75"} on rank 0, {} elsewhere."""
    name = cfg.DATASETS.TEST[0]
    results = inference_on_dataset(model, build_detection_test_loader(cfg, name), PascalVOCDetectionEvaluator(name))
    comm.synchronize()
    bbox = results.get("bbox") if results else None
    if not bbox:
        return {}
    aps = {k: float(bbox[k]) for k in METRIC_KEYS}
    if not all(math.isfinite(v) for v in aps.values()):
        log.warning("non-finite VOC APs on %s: %s", name, aps)
    return aps


def launch_training(
    num_gpus: int,
    manifest: dict,
    name_prefix: str,
    cfg: CfgNode,
    weights_pkl: str | os.PathLike | None = None,
    resume: bool = False,
    logger: StepLogger | None = None,
    log_period: int = 20,
) -> dict[str, float]:
    """`train_detector` in this process (num_gpus 1) or in one process per GPU (Detectron2's
    `launch` on a free local port); returns rank 0's APs.

    Detectron2's dataset catalog lives in each process, so every process registers the
    manifest under `name_prefix` (as the caller did to build `cfg`). With several
    processes, `logger` is pickled into them and used by rank 0 only.
    """
    if num_gpus <= 1:
        return _register_and_train(manifest, name_prefix, cfg, weights_pkl, resume, logger, log_period)
    launch(_register_and_train, num_gpus, dist_url="auto",
           args=(manifest, name_prefix, cfg, weights_pkl, resume, logger, log_period))
    return read_json(Path(cfg.OUTPUT_DIR) / TEST_METRICS)


def _register_and_train(manifest, name_prefix, cfg, weights_pkl, resume, logger, log_period) -> dict[str, float]:
    register_voc_manifest(manifest, name_prefix)
    return train_detector(cfg, weights_pkl, resume, logger, log_period)
