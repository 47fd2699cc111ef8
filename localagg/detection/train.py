"""Fine-tune Faster R-CNN C4 on PASCAL VOC with Detectron2 and test it with the VOC metric.

One plain loop built from Detectron2's pieces (as its `tools/plain_train_net.py`): model,
optimizer and warm-up + multi-step schedule from the config, `PascalVOCDetectionEvaluator`
on the test set at the end (and every TEST.EVAL_PERIOD iterations if set), after precise BN
if TEST.PRECISE_BN is on (batch-norm statistics re-estimated on training batches, saved in
the checkpoint). The evaluator uses the VOC07 11-point AP when the test set's year is 2007
and the area under the curve for 2012; it reports AP50, AP75 and AP (mean over IoU
0.50:0.05:0.95), in percent.

Resuming ends where an uninterrupted run ends: the training batches are a function of the
iteration (data.IterationBatches), the model's own sampling (RPN anchors, ROI proposals) draws
from torch's generator seeded from (seed, iteration, rank) at every iteration, and the one
checkpoint (OUTPUT_DIR/checkpoint.pth: model, optimizer, scheduler, iterations done) is
replaced atomically. On the CPU a resumed run is bit-identical to an uninterrupted one (a
test kills a real run to check it); on CUDA, kernels that add in parallel are not
bit-reproducible, in a resumed run or any other. A checkpoint that cannot be read, or does
not fit the model, is reported and training starts over. Checkpoints are read with
`torch.load(weights_only=True)`: nothing in them is executed.

SIGTERM, SIGINT and SIGUSR2 (preemption, Ctrl-C, SLURM's time-limit warning;
runtime.signals) stop training at the end of the current log window (`log_period`
iterations, so the resumed curve is the uninterrupted one) with a checkpoint; the process
exits 128 + signal, and a rerun resumes there.

Several GPUs: `launch_training` runs `train_detector` once per GPU through
`detectron2.engine.launch` (NCCL; gloo on CPU) and returns what rank 0 wrote; on several
machines, each runs `launch_training` with its machine rank and the first machine's address.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import warnings
from pathlib import Path
from typing import Protocol

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_test_loader
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
from ..process import die_with_parent
from ..progress import Clock, Heartbeat, bars_shown, track
from ..runtime import checkpoint as ckpt
from ..runtime.signals import StopSignals, exit_code, stopped_by
from . import config as _config  # noqa: F401  (registers LocalAggRes5ROIHeads for build_model)
from .convert import load_converted, load_strict
from .data import IterationBatches, iteration_loader, register_voc_manifest, step_seed

TEST_METRICS = "test_metrics.json"  # written by rank 0 into OUTPUT_DIR at the end
EXAMPLES = "examples.json"          # the final detector's boxes on a few test images (rank 0)
CHECKPOINT = "checkpoint.pth"       # the one resumable checkpoint in OUTPUT_DIR
PROGRESS = "progress.json"          # {"iterations": done, "final": bool}, written after each checkpoint
METRIC_KEYS = ("AP50", "AP", "AP75")

log = logging.getLogger(__name__)
# Detectron2's anchor generator calls torch.meshgrid without `indexing` (torch >= 1.10 warns).
warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)


class StepLogger(Protocol):
    """Receives the training curve: mean losses over the last `log_period` iterations, lr, and test APs."""

    def log_step(self, iteration: int, metrics: dict[str, float]) -> None: ...


def checkpoint_progress(output_dir: str | os.PathLike) -> dict:
    """{"iterations": done, "final": bool} of the checkpoint in `output_dir` ({"iterations": 0} without one)."""
    path = Path(output_dir) / PROGRESS
    if not (path.is_file() and (Path(output_dir) / CHECKPOINT).is_file()):
        return {"iterations": 0, "final": False}
    try:
        progress = json.loads(path.read_text())
        state = ckpt.load(Path(output_dir) / CHECKPOINT, "detection checkpoint")  # a truncated one resumes nothing
    except (ValueError, ckpt.CheckpointError):
        return {"iterations": 0, "final": False}
    if state.get("iterations") != progress.get("iterations"):
        return {"iterations": 0, "final": False}
    return progress


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _save(cfg: CfgNode, model, optimizer, scheduler, iterations: int, final: bool) -> None:
    """Replace the checkpoint (rank 0), then record its progress."""
    if comm.is_main_process():
        out = Path(cfg.OUTPUT_DIR)
        ckpt.save({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                   "scheduler": scheduler.state_dict(), "iterations": iterations}, out / CHECKPOINT)
        write_json(out / PROGRESS, {"iterations": iterations, "final": final})
    comm.synchronize()


def _resume(cfg: CfgNode, model, optimizer, scheduler) -> int:
    """Load the checkpoint of OUTPUT_DIR into model, optimizer and scheduler; return the
    iterations it has done. A checkpoint that cannot be used is reported and set aside (0)."""
    path = Path(cfg.OUTPUT_DIR) / CHECKPOINT
    try:
        state = ckpt.load(path, "detection checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return int(state["iterations"])
    except (ckpt.CheckpointError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        reason = exc.reason if isinstance(exc, ckpt.CheckpointError) else f"does not fit this model ({exc})"
        log.warning("detection checkpoint %s %s: training starts over.", path, str(reason)[:300])
        comm.synchronize()
        if comm.is_main_process():
            path.unlink(missing_ok=True)
            (Path(cfg.OUTPUT_DIR) / PROGRESS).unlink(missing_ok=True)
        return -1


def train_detector(
    cfg: CfgNode,
    weights: str | os.PathLike | None = None,
    resume: bool = False,
    logger: StepLogger | None = None,
    log_period: int = 20,
) -> dict[str, float]:
    """Train the detector of `cfg` (from `config.build_cfg`) and test it; return {"AP50", "AP", "AP75"}.

    `weights`: a converted backbone (`convert.save_converted`) loaded strictly
    (`convert.load_strict`); None trains from random init. `resume`: continue from the
    checkpoint in cfg.OUTPUT_DIR if there is a usable one (module docstring).
    `logger.log_step` gets, every `log_period` iterations and at the last, the mean
    total_loss and loss components over those iterations and the lr; and the APs of every
    test. Runs in every process of a `launch`; only rank 0 logs, saves and returns the APs
    (other ranks return {}). Rank 0 also writes them to OUTPUT_DIR/test_metrics.json. Its log
    has a line per `log_period` window and, without a progress bar, one at the first
    iteration after progress.HEARTBEAT_SECONDS without a line (its running window means).
    """
    if len(cfg.DATASETS.TEST) != 1:
        raise UserError(f"detection tests on one VOC test set; got {len(cfg.DATASETS.TEST)}: {list(cfg.DATASETS.TEST)}.")
    if log_period < 1:
        raise UserError(f"log_period must be at least 1; got {log_period}.")
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    rank, world = comm.get_rank(), comm.get_world_size()
    seed_all_rng(step_seed(cfg.SEED, rank))
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)

    model, optimizer, scheduler = _build(cfg, rank)
    start_iter = -1
    if resume and (Path(cfg.OUTPUT_DIR) / CHECKPOINT).is_file():  # _resume reports one it cannot use
        start_iter = _resume(cfg, model, optimizer, scheduler)
    if start_iter < 0:  # a fresh start (or a checkpoint that could not be used)
        model, optimizer, scheduler = _build(cfg, rank)
        start_iter = 0
        if weights:
            load_strict(model, load_converted(weights))
    if world > 1:
        device_ids = [comm.get_local_rank()] if cfg.MODEL.DEVICE.startswith("cuda") else None
        model = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)

    max_iter = cfg.SOLVER.MAX_ITER
    dicts = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
    stream = IterationBatches(dicts, DatasetMapper(cfg, is_train=True), cfg.SOLVER.IMS_PER_BATCH, cfg.SEED, rank, world)
    precise = cfg.TEST.PRECISE_BN.NUM_ITER if cfg.TEST.PRECISE_BN.ENABLED else 0
    data = iteration_loader(stream, start_iter, max_iter, cfg.DATALOADER.NUM_WORKERS)
    window: dict[str, torch.Tensor] = {}
    steps_in_window = 0
    clock = Clock(done=start_iter, total=max_iter)
    heartbeat = Heartbeat(enabled=comm.is_main_process() and not bars_shown())  # a line a minute without a bar
    model.train()
    agree = _max_over_ranks if world > 1 else None
    with EventStorage(start_iter) as storage, StopSignals(agree, 1, _comm_device(cfg)) as stop:
        for iteration in track(range(start_iter, max_iter), "detection training", total=max_iter - start_iter,
                               enabled=comm.is_main_process()):
            storage.iter = iteration
            batch = next(data)
            torch.manual_seed(step_seed(cfg.SEED, iteration, rank))  # RPN and ROI sampling
            loss_dict = model(batch)
            losses = sum(loss_dict.values())
            if not torch.isfinite(losses):
                raise UserError(
                    f"detection loss became {losses.item()} at iteration {iteration + 1} "
                    f"({ {k: v.item() for k, v in loss_dict.items()} }); nothing was tested or saved for this "
                    "iteration. Lower detection.base_lr or raise detection.warmup_iters."
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
            periodic = (iteration + 1) % log_period == 0 or last
            if heartbeat.due(periodic) and not periodic:  # rank 0's running means of the window so far
                record = {k: float(v) / steps_in_window for k, v in window.items()}
                _log_iteration(iteration + 1, max_iter, record, lr, clock, cfg.SOLVER.IMS_PER_BATCH)
            if periodic:
                means = {k: v / steps_in_window for k, v in comm.reduce_dict(window).items()}  # all ranks
                if comm.is_main_process():
                    record = {k: float(v) for k, v in means.items()}
                    total = sum(record.values())
                    if logger is not None:
                        logger.log_step(iteration + 1, {"total_loss": total, **record, "lr": lr})
                    _log_iteration(iteration + 1, max_iter, record, lr, clock, cfg.SOLVER.IMS_PER_BATCH)
                window, steps_in_window = {}, 0
                signum = 0 if last else stop.requested(iteration + 1)  # every rank ends the same window
                if signum:
                    _save(cfg, model, optimizer, scheduler, iteration + 1, final=False)
                    if comm.is_main_process():
                        log.warning("detection: stopped by %s at iteration %s of %s; checkpoint saved in %s. Run the "
                                    "stage again (dvc repro) to resume from here.", signal.Signals(signum).name,
                                    f"{iteration + 1:,}", f"{max_iter:,}", cfg.OUTPUT_DIR)
                    raise SystemExit(exit_code(signum))
            test_now = last or (cfg.TEST.EVAL_PERIOD and (iteration + 1) % cfg.TEST.EVAL_PERIOD == 0)
            if test_now and precise:  # before saving, so the checkpoint is what is tested
                _precise_bn(cfg, model, dicts, iteration + 1, precise)
            if last or (iteration + 1) % cfg.SOLVER.CHECKPOINT_PERIOD == 0:
                _save(cfg, model, optimizer, scheduler, iteration + 1, final=last)
            if test_now and not last:
                aps = _test(cfg, model)
                if logger is not None and aps:
                    logger.log_step(iteration + 1, aps)
        aps = _test(cfg, model)
    if comm.is_main_process():
        log.info("detection test on %s: %s", cfg.DATASETS.TEST[0], ", ".join(f"{k} {v:.2f}" for k, v in aps.items()))
        if logger is not None:
            logger.log_step(max_iter, aps)
        write_json(Path(cfg.OUTPUT_DIR) / EXAMPLES, predict_examples(cfg, _unwrap(model)))
        write_json(Path(cfg.OUTPUT_DIR) / TEST_METRICS, aps)
    return aps


def _log_iteration(done: int, max_iter: int, losses: dict[str, float], lr: float, clock: Clock,
                   images_per_batch: int) -> None:
    """'detection iteration 40/100: total_loss 1.234 (loss_cls 0.5, ...), lr 0.02, 9 img/s, elapsed .., ETA ..'
    (img/s: the global batches since this run started)."""
    rate = images_per_batch * (done - clock.first) / max(clock.elapsed(), 1e-9)
    log.info("detection iteration %s/%s: total_loss %.3f (%s), lr %g, %s img/s, %s", f"{done:,}", f"{max_iter:,}",
             sum(losses.values()), ", ".join(f"{k} {v:.3f}" for k, v in losses.items()), lr, f"{rate:,.1f}",
             clock.text(done))


@torch.no_grad()
def predict_examples(cfg: CfgNode, model: torch.nn.Module, count: int = 4, min_score: float = 0.1,
                     max_boxes: int = 10) -> list[dict]:
    """The detector's boxes on the first `count` test images: [{"image_id", "boxes": [[x0, y0, x1,
    y1, score, class]] (score >= min_score, at most max_boxes, original pixels), "truth": [[x0, y0,
    x1, y1, class]]}], for the report's pictures."""
    dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:count]
    mapper = DatasetMapper(cfg, is_train=False)
    was_training = model.training
    model.eval()
    out = []
    for d in dicts:
        instances = model([mapper(d)])[0]["instances"].to("cpu")
        keep = (instances.scores >= min_score).nonzero().flatten()[:max_boxes]
        boxes = instances.pred_boxes.tensor[keep].tolist()
        out.append({"image_id": d["image_id"],
                    "boxes": [[*(round(v, 1) for v in b), round(float(instances.scores[i]), 3), int(instances.pred_classes[i])]
                              for b, i in zip(boxes, keep.tolist())],
                    "truth": [[*a["bbox"], a["category_id"]] for a in d["annotations"]]})
    model.train(was_training)
    return out


def _build(cfg: CfgNode, rank: int):
    """Model, optimizer and lr scheduler of `cfg`, the model initialised from (seed, rank)."""
    torch.manual_seed(step_seed(cfg.SEED, 0, rank))
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    return model, optimizer, build_lr_scheduler(cfg, optimizer)


def _precise_bn(cfg: CfgNode, model, dicts: list[dict], iteration: int, num_iter: int) -> None:
    """Re-estimate batch-norm statistics on `num_iter` training batches of a stream of their own
    (seeded from the iteration), so the training stream's batch i stays a function of i."""
    stream = IterationBatches(dicts, DatasetMapper(cfg, is_train=True), cfg.SOLVER.IMS_PER_BATCH,
                              step_seed(cfg.SEED, iteration, 1), comm.get_rank(), comm.get_world_size())
    update_bn_stats(model, iteration_loader(stream, 0, num_iter, cfg.DATALOADER.NUM_WORKERS), num_iter)


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


def _max_over_ranks(flag: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return flag


def _comm_device(cfg: CfgNode) -> torch.device:
    """Where a tensor for a collective lives: NCCL takes CUDA tensors, gloo CPU ones."""
    return torch.device("cuda", comm.get_local_rank()) if cfg.MODEL.DEVICE.startswith("cuda") else torch.device("cpu")


def launch_training(
    num_gpus: int,
    manifest: dict,
    name_prefix: str,
    cfg: CfgNode,
    weights: str | os.PathLike | None = None,
    resume: bool = False,
    logger: StepLogger | None = None,
    log_period: int = 20,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
) -> dict[str, float]:
    """`train_detector` in this process (one process in all) or in `num_gpus` processes on each
    of `num_machines` machines (Detectron2's `launch`; `dist_url` tcp://<first machine>:<port>
    on several, a free local port on one); returns rank 0's APs ({} on the other machines).

    Detectron2's dataset catalog lives in each process, so every process registers the
    manifest under `name_prefix` (as the caller did to build `cfg`). With several
    processes, `logger` is pickled into them and used by rank 0 only. The workers stop
    themselves on a stop signal (module docstring); this process waits for them and exits
    with their status.
    """
    if num_gpus * num_machines <= 1:
        return _register_and_train(manifest, name_prefix, cfg, weights, resume, logger, log_period)
    with StopSignals():  # noted, not acted on: the workers checkpoint and end, then so does this process
        try:
            launch(_launched_worker, num_gpus, num_machines=num_machines, machine_rank=machine_rank,
                   dist_url=dist_url, args=(manifest, name_prefix, cfg, weights, resume, logger, log_period))
        except torch.multiprocessing.ProcessExitedException as exc:
            if stopped_by(exc.exit_code):
                raise SystemExit(exc.exit_code) from None
            raise
    return read_json(Path(cfg.OUTPUT_DIR) / TEST_METRICS) if machine_rank == 0 else {}


def _launched_worker(*args) -> dict[str, float]:
    die_with_parent()  # a worker never outlives the process that launched it
    return _register_and_train(*args)


def _register_and_train(manifest, name_prefix, cfg, weights, resume, logger, log_period) -> dict[str, float]:
    register_voc_manifest(manifest, name_prefix)
    return train_detector(cfg, weights, resume, logger, log_period)
