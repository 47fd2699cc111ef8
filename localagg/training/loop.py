"""The pretraining loop, written once for every method (methods/: IR, LA, the supervised reference).

Per step (global batch B over W processes, b = B / W per process):

    x_i = augment(image_i)                 drawn for the global batch, sliced per rank
    out = trainable(x_i)                   (b, D) embeddings, or (b, C) logits (supervised)
    L = method.loss(out, labels, i, seed)  seed: the step's, for the method's draws (NCE noise)
    SGD step (DDP averages gradients); method.after_step(out, i) (the bank update)

At the start of every epoch `method.begin_epoch` runs (LA re-clusters its bank). Every
random draw (data order, augmentation, NCE noise) comes from a generator keyed by (seed,
epoch, step), so 1 process and W processes see the same global batch, and a resumed run
continues exactly where an uninterrupted one would be. Checkpoints (model, optimiser, the
method's state, position, history) are written atomically at every epoch end and every
`checkpoint_every_steps` steps; one is resumed only by a run of the same identity (method,
config, model, augmentation, data and warm start).

Rank 0 logs a line per epoch (loss, lr, img/s, kNN, what the method adds: LA's clustering
statistics), one every `log_every_steps` steps (default: a tenth of an epoch of 200 steps or
more), and, without a progress bar, one at the first step after progress.HEARTBEAT_SECONDS
without a line (step i/n of the epoch, running loss, img/s, elapsed, ETA).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data import augment, decode
from ..data.datasets import ArrayImages, open_split
from ..data.manifest import dataset_digest, read_info
from ..errors import UserError
from ..io import file_sha256
from ..models.backbone import EmbeddingNet, build_model, check_meta
from ..models.batchnorm import set_bn_groups, set_sync_bn
from ..models.config import ModelConfig
from ..progress import Clock, Heartbeat, bars_shown, duration, track
from ..runtime import checkpoint as ckpt
from ..runtime.signals import StopSignals, exit_code
from ..knn import TopK, correct_count, knn_scores
from ..runtime.distributed import (DistInfo, all_gather_cat, all_reduce_sum, barrier, broadcast, gather_rows,
                                   init_distributed)
from .batches import EpochSampler, GlobalBatches, init_worker
from .methods.base import Method

LAST = "last.pt"
CHECKPOINT_FORMAT = 2  # the layout of last.pt: the method's state under "method"
GUARD_EVERY_STEPS = 50  # the finite-loss guard reads the device this often (and before every checkpoint)
# config keys that change how a run goes (processes, threads, logging, checkpoints, the kNN
# monitor's rhythm), not what it trains: left out of the resume match and the protocol
RUN_ONLY_KEYS = frozenset({"num_processes", "num_workers", "threads", "checkpoint_every_steps", "log_every_steps",
                           "knn_every_epochs", "collective_timeout_s"})
log = logging.getLogger(__name__)


class EpochLogger(Protocol):
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...


@dataclass
class PretrainResult:
    epochs: int
    history: list[dict[str, float]]
    summary: dict[str, Any]
    interrupted: bool = False


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed inside `epoch`
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    loss_sum: float = 0.0  # this epoch so far, for its mean loss across an interruption
    epoch_stats: dict[str, float] = field(default_factory=dict)  # what the method's epoch start measured


def _max_over_ranks(flag: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return flag


class _FiniteGuard:
    """Stops every rank when any rank's loss was not finite, without a host sync per step.

    `record` keeps, on the device, the global step and value of the first non-finite loss;
    `check` (every GUARD_EVERY_STEPS steps, before every checkpoint and at every epoch end)
    reads it, the minimum over the ranks, and raises. Nothing is saved after a bad step, so
    the last checkpoint is from before it; the steps in between are thrown away with it.
    """

    NONE = 2**62

    def __init__(self, trainer: "Trainer", steps_per_epoch: int):
        self.trainer, self.steps_per_epoch = trainer, steps_per_epoch
        self.first = torch.full((1,), self.NONE, dtype=torch.int64, device=trainer.device)
        self.value = torch.zeros((), dtype=torch.float64, device=trainer.device)

    def record(self, loss: torch.Tensor, global_step: int) -> None:
        bad = ~torch.isfinite(loss.detach()) & (self.first == self.NONE)  # (1,), first bad step only
        self.first = torch.where(bad, global_step, self.first)
        self.value = torch.where(bad[0], loss.detach().to(torch.float64), self.value)

    def check(self) -> None:
        first = self.first.clone()
        if self.trainer.dist.enabled:
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        step = int(first.item())
        if step == self.NONE:
            return
        t, cfg = self.trainer, self.trainer.cfg
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        section = t.method.section
        hints = [f"{section}.lr = {cfg.lr_at(epoch):g} may be too high", f"augment.std = {list(t.aug.std)}",
                 f"augment.mean = {list(t.aug.mean)}", *t.method.loss_hints()]
        value = self.value.item() if int(self.first.item()) == step else float("nan")
        raise UserError(
            f"{t.method.name} training stopped: the loss is {value} at epoch {epoch + 1}, step {in_epoch + 1} "
            f"(global step {step + 1}). Nothing was exported; the last checkpoint is from before this step. "
            f"Check {'; '.join(hints)}."
        )


def _file_digest(path: Path) -> str:
    return file_sha256(path)[:16]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on every trainable parameter except batch-norm weights and biases."""
    bn = set()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            bn.update(id(p) for p in m.parameters(recurse=False))
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in bn]
    no_decay = [p for p in model.parameters() if p.requires_grad and id(p) in bn]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Builds the model, data and optimiser for `method` and runs (or resumes) its training."""

    def __init__(
        self,
        method: Method,
        model_cfg: ModelConfig,
        aug: augment.AugmentSpec,
        train_dir: str | Path,
        checkpoint_dir: str | Path,
        val_dir: str | Path | None = None,
        init_from: str | Path | None = None,
        logger: EpochLogger | None = None,
        dist: DistInfo | None = None,
    ):
        self.method, self.cfg, self.model_cfg, self.aug = method, method.cfg, model_cfg, aug
        cfg = self.cfg
        self.dist = dist or init_distributed(cfg.device, cfg.collective_timeout_s)
        self.device = self.dist.device
        self.ckpt_dir = Path(checkpoint_dir)
        self.logger = logger
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        on_cuda = self.device.type == "cuda"
        self.amp = cfg.amp == "on" or (cfg.amp == "auto" and on_cuda and not cfg.float64)
        self.dtype = torch.float64 if cfg.float64 else torch.float32  # parameters, bank, losses
        self.decode_on_device = cfg.jpeg_decode == "device" or (cfg.jpeg_decode == "auto" and on_cuda)
        self._loader = self._sampler = None  # the training DataLoader of file datasets, made at first use
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and on_cuda)

        if cfg.batch_size % (self.dist.world_size * cfg.bn_groups):
            raise UserError(f"batch_size {cfg.batch_size} is not divisible by {self.dist.world_size} processes "
                            f"x bn_groups {cfg.bn_groups}; change batch_size or the process count.")
        info = read_info(train_dir)
        self.train_info = info
        self.data_digest = dataset_digest(train_dir)  # in the resume identity and the export
        self.train = open_split(train_dir, "train", train=True, crop_size=aug.crop_size,
                                crop_scale=aug.crop_scale, crop_ratio=aug.crop_ratio, for_device=self.decode_on_device)
        self.train_eval = open_split(train_dir, "train", train=False, crop_size=aug.crop_size)
        self.val = open_split(val_dir, "val", train=False, crop_size=aug.crop_size) if val_dir else None
        self.num_items = len(self.train)
        self.num_classes = len(info.classes)
        self._check_sizes()

        torch.manual_seed(cfg.seed)
        self.model: EmbeddingNet = build_model(model_cfg.arch, model_cfg.stem, model_cfg.embedding_dim,
                                                   model_cfg.bn_momentum)
        if cfg.bn_groups > 1:
            set_bn_groups(self.model, cfg.bn_groups)
        if cfg.sync_bn:
            set_sync_bn(self.model, native=on_cuda)  # torch's fused SyncBatchNorm under NCCL
        self.model.to(self.device, self.dtype)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        method.setup(self)

        self.init_from = Path(init_from) if init_from else None
        self.parent_provenance: list[dict] = []  # the warm start's stages (IR for LA)
        if self.init_from is not None:
            self._warm_start(self.init_from)

        self.trainable: nn.Module = method.trainable(self.model).to(self.device, self.dtype)
        self.optimizer = torch.optim.SGD(param_groups(self.trainable, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
        self.net = (DistributedDataParallel(self.trainable, device_ids=[self.device.index] if on_cuda else None)
                    if self.dist.enabled else self.trainable)
        self.identity = self._identity()
        self.state = _State()

    def _check_sizes(self) -> None:
        """Params that do not fit the training set stop here, before any compute."""
        n, section = self.num_items, self.method.section
        bad = [f"{section}.{key} = {value:,}" for key, value in self.method.size_limits().items() if value > n]
        if bad:
            raise UserError(f"{'; '.join(bad)}: larger than the {n:,} training images of {self.train_info.name}; "
                            "lower it (or prepare a larger object set).")
        if isinstance(self.train, ArrayImages):
            side = min(self.train.images.shape[1:3])
            if self.aug.crop_size > side:
                log.warning("augment.crop_size %d is larger than the %dx%d images of %s: crops are upsampled.",
                            self.aug.crop_size, side, side, self.train_info.name)

    def protocol(self) -> dict:
        """What this stage trained, for the report's comparability check (no timing, no paths)."""
        cfg = self.cfg.model_dump(mode="json", exclude=RUN_ONLY_KEYS | {"device"})
        cfg["amp"] = "bf16" if self.amp else "off"  # what ran, not the setting ("auto")
        cfg["jpeg_decode"] = "device" if self.decode_on_device else "workers"
        return {"objective": self.method.name, **self.model.meta(), "bn_momentum": self.model.bn_momentum(),
                "augment": self.aug.model_dump(mode="json"),
                "dataset": self.train_info.name, "train_images": self.num_items,
                "val_images": len(self.val) if self.val is not None else None,
                "world_size": self.dist.world_size, "config": cfg}

    # ------------------------------------------------------------------ identity / warm start

    def _identity(self) -> dict:
        """Everything a checkpoint must share with this run to be resumed."""
        return {
            "format": CHECKPOINT_FORMAT,
            "objective": self.method.name,
            "config": self.cfg.model_dump(mode="json", exclude=RUN_ONLY_KEYS),
            "model": self.model.meta(),
            "augment": self.aug.model_dump(mode="json"),
            "dataset": {"name": self.train_info.name, "num_items": self.num_items, "digest": self.data_digest},
            "init": _file_digest(self.init_from) if self.init_from else None,
        }

    def _warm_start(self, path: Path) -> None:
        """Start from another stage's export (LA: the IR model and bank, not its optimiser)."""
        state = ckpt.load_export(path, "warm-start checkpoint")
        self.method.check_warm_start(state, path)
        check_meta(state["model_meta"], self.model.meta(), f"warm-start checkpoint {path}")
        found = state["dataset"]
        if found.get("num_items") != self.num_items or found.get("name") != self.train_info.name:
            raise UserError(
                f"warm-start checkpoint {path} was trained on {found.get('name')} with {found.get('num_items')} images; "
                f"this run trains on {self.train_info.name} with {self.num_items}. Rerun the IR stage on this dataset."
            )
        if found.get("digest") != self.data_digest:
            raise UserError(
                f"warm-start checkpoint {path} was trained on other data than this run's {self.train_info.name} "
                f"(dataset digest {found.get('digest')} vs {self.data_digest}: same name and size, other images or "
                "labels). Rerun the IR stage on this dataset (`dvc repro pretrain_ia`)."
            )
        self.model.load_state_dict(state["model"])
        self.method.warm_start(self, state)
        self.parent_provenance = list(state.get("provenance") or [])

    # ------------------------------------------------------------------ checkpoints

    def _save(self) -> None:
        if not self.dist.is_main:
            return
        s = self.state
        ckpt.save({
            "identity": self.identity,
            "model": self.trainable.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "epoch": s.epoch, "step": s.step, "global_step": s.global_step,
            "history": s.history, "extra": s.extra, "loss_sum": s.loss_sum, "epoch_stats": s.epoch_stats,
        }, self.ckpt_dir / LAST)

    def try_resume(self) -> bool:
        """Load the last checkpoint if it belongs to this exact run; returns whether it did."""
        path = self.ckpt_dir / LAST
        if not path.is_file():
            return False
        try:
            state = ckpt.load(path)
        except ckpt.CheckpointError as exc:
            log.warning("checkpoint %s %s: starting this stage over (it will be overwritten).", path, exc.reason)
            return False
        if state.get("identity") != self.identity:
            log.warning("%s belongs to other params, data or warm start: starting over (it will be overwritten).", path)
            return False
        self.trainable.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.method.load_state_dict(state["method"], self.device)
        self.state = _State(state["epoch"], state["step"], state["global_step"], state["history"], state["extra"],
                            state["loss_sum"], state["epoch_stats"])
        return True

    # ------------------------------------------------------------------ pieces of a step

    def _train_batches(self, batches: GlobalBatches, epoch: int, step: int):
        """(uint8 images (b, 3, H, W), labels, indices) of this rank from global batch `step` on.

        In-memory datasets are sliced directly. File datasets go through one DataLoader for the
        whole run (persistent workers) whose sampler carries each image's crop uniforms; with
        device decoding the workers hand over JPEG bytes and the crops are decoded here."""
        if isinstance(self.train, ArrayImages):
            yield from (self.train.batch(batches.local(st)) for st in range(step, batches.steps))
            return
        cfg = self.cfg
        if self._loader is None:
            self._sampler = EpochSampler(cfg.seed, crops=True)
            self._loader = DataLoader(
                self.train, batch_sampler=self._sampler, num_workers=cfg.num_workers,
                pin_memory=self.device.type == "cuda" and not self.decode_on_device,
                persistent_workers=cfg.num_workers > 0, collate_fn=decode.collate_bytes if self.decode_on_device else None,
                worker_init_fn=functools.partial(init_worker, cfg.seed, self.dist.rank))
        self._sampler.start(batches, epoch, step)
        for images, labels, idx in self._loader:
            if self.decode_on_device:
                images = decode.decode_on_device(images, self.aug.crop_size, self.device)
            yield images, labels, idx

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def embed_batches(self, ds, batch_size: int = 512, pooled: bool = False):
        """(first index, eval-mode embeddings (b, D)) of this rank's shard of `ds`, batch by batch
        (L2-normalised pooled conv5 (b, C) when `pooled`)."""
        part = self.dist.shard(len(ds))
        self._share_buffers()
        self.model.eval()
        try:
            if isinstance(ds, ArrayImages):
                batches = (ds.batch(torch.arange(s, min(s + batch_size, part.stop)))
                           for s in range(part.start, part.stop, batch_size))
            else:
                batches = iter(DataLoader(torch.utils.data.Subset(ds, part), batch_size=batch_size,
                                          num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda"))
            first = part.start
            for x, _, _ in track(batches, "embedding", total=-(-len(part) // batch_size), enabled=self.dist.is_main):
                x = augment.evaluate_transform(x.to(self.device, non_blocking=True), self.aug).to(self.dtype)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with self._autocast():
                    out = (F.normalize(self.model.pooled(x).to(self.dtype), dim=1) if pooled
                           else self.model(x).to(self.dtype))
                yield first, out
                first += out.shape[0]
        finally:
            self.model.train()

    def _share_buffers(self) -> None:
        """Rank 0's batch-norm running statistics on every rank, so that an evaluation pass split
        over the ranks evaluates one network (with per-device batch norm each rank has updated
        its own; DDP would broadcast rank 0's at the next forward)."""
        if self.dist.enabled:
            for buffer in self.model.buffers():
                broadcast(buffer)

    def embed(self, ds, batch_size: int = 512, pooled: bool = False) -> torch.Tensor:
        """Eval-mode embeddings (N, D) of a dataset, in index order, on every rank: each rank
        embeds its shard and the shards are gathered (`embed_batches` for the rest)."""
        parts = [out for _, out in self.embed_batches(ds, batch_size, pooled)]
        mine = torch.cat(parts) if parts else torch.empty(0, device=self.device, dtype=self.dtype)
        return gather_rows(mine, len(ds))

    def knn_top1(self, query_ds, bank: torch.Tensor, bank_labels: torch.Tensor, pooled: bool = False) -> float:
        """kNN top-1 (%) of `query_ds`'s embeddings against a bank held by every rank (the
        memory bank): each rank classifies its shard of the queries, the hits are summed."""
        cfg = self.cfg
        hits, seen = 0, 0
        queries = [out for _, out in self.embed_batches(query_ds, pooled=pooled)]
        part = self.dist.shard(len(query_ds))
        if queries:
            scores = knn_scores(torch.cat(queries), bank, bank_labels, self.num_classes, cfg.knn_k, cfg.knn_temperature)
            hits, seen = correct_count(scores, query_ds.labels[part.start : part.stop]), len(part)
        counts = all_reduce_sum(torch.tensor([hits, seen], dtype=torch.float64, device=self.device))
        return 100.0 * counts[0].item() / counts[1].item()

    def knn_top1_streamed(self, query_ds, bank_ds, pooled: bool = False) -> float:
        """kNN top-1 (%) of `query_ds` against the embeddings of `bank_ds`, which are never held
        at once: every rank keeps a running top-k of all queries over its shard of `bank_ds`,
        and the ranks' top-k are merged. Memory O(Q k + Q BANK_CHUNK), flat in len(bank_ds)."""
        cfg = self.cfg
        top = TopK(self.embed(query_ds, pooled=pooled), min(cfg.knn_k, len(bank_ds)))
        for first, rows in self.embed_batches(bank_ds, pooled=pooled):
            top.feed(rows, first)
        top.merge()
        scores = top.scores(bank_ds.labels, self.num_classes, cfg.knn_temperature)
        return 100.0 * correct_count(scores, query_ds.labels) / len(query_ds)

    # ------------------------------------------------------------------ the loop

    def run(self, stop_after_steps: int | None = None) -> PretrainResult:
        """Train to `cfg.epochs` (resuming if possible); `stop_after_steps` simulates an interruption."""
        cfg = self.cfg
        resumed = self.try_resume()
        s = self.state
        if not resumed:
            s.extra.update(self.method.begin(self))
        self._replay_history()
        self.model.train()
        steps_per_epoch = self.num_items // cfg.batch_size
        clock = Clock(done=s.epoch * steps_per_epoch + s.step, total=cfg.epochs * steps_per_epoch)
        every = cfg.log_every_steps or (steps_per_epoch // 10 if steps_per_epoch >= 200 else 0)
        guard = _FiniteGuard(self, steps_per_epoch)
        agree = _max_over_ranks if self.dist.enabled else None  # each rank gets a SIGTERM at its own step
        with StopSignals(agree, GUARD_EVERY_STEPS, self.device) as signals:
            return self._epochs(stop_after_steps, resumed, steps_per_epoch, clock, every, guard, signals)

    def _epochs(self, stop_after_steps, resumed, steps_per_epoch, clock, every, guard, signals) -> PretrainResult:
        """The epochs of `run`, under its signal handlers."""
        cfg, dist, method, s, name = self.cfg, self.dist, self.method, self.state, self.method.name
        steps_done_now = 0
        if dist.is_main:
            log.info("%s: %s training images, %d epochs of %d steps (batch %d over %d process(es))%s", name,
                     f"{self.num_items:,}", cfg.epochs, steps_per_epoch, cfg.batch_size, dist.world_size,
                     f"; resuming at epoch {s.epoch + 1}, step {s.step}" if resumed else "")
        heartbeat = Heartbeat(enabled=dist.is_main and not bars_shown())  # a line a minute without a bar
        while s.epoch < cfg.epochs:
            epoch = s.epoch
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr_at(epoch)
            if s.step == 0:
                s.loss_sum, s.epoch_stats = 0.0, method.begin_epoch(self, epoch)
            batches = GlobalBatches(self.num_items, cfg.seed, cfg.batch_size, epoch, dist)
            loss_sum, seen, t0 = torch.zeros((), device=self.device, dtype=torch.float64), 0, time.perf_counter()
            arrays = isinstance(self.train, ArrayImages)
            source = self._train_batches(batches, epoch, s.step)
            bar = track(source, f"{name} epoch {epoch + 1}/{cfg.epochs}", total=batches.steps - s.step,
                        enabled=dist.is_main)
            for images, labels, idx in bar:
                g = augment.step_generator(cfg.seed, epoch, s.step, 1)
                H, W = images.shape[-2:]
                d = augment.draw(self.aug, cfg.batch_size, H, W, g, crop=arrays)
                d = d.slice(dist.rank * batches.b, (dist.rank + 1) * batches.b)
                x = augment.apply(images.to(self.device, non_blocking=True), d, self.aug).to(self.dtype)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                idx = idx.to(self.device, non_blocking=True)
                with self._autocast():
                    out = self.net(x)
                loss = method.loss(out, labels, idx, augment.step_generator(cfg.seed, epoch, s.step, 2).initial_seed())
                guard.record(loss, s.global_step)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                method.after_step(out, idx)
                loss_sum += loss.detach()
                seen += 1
                s.step += 1
                s.global_step += 1
                steps_done_now += 1
                log_now = heartbeat.due(bool(every) and s.step % every == 0) and dist.is_main
                if log_now or dist.is_main and not bar.disable and s.step % 20 == 0:
                    # the epoch's running mean loss (its steps before a checkpoint or resume included)
                    line = (f"loss {(s.loss_sum + loss_sum.item()) / s.step:.4f}, lr {cfg.lr_at(epoch):g}, "
                            f"{seen * cfg.batch_size / max(time.perf_counter() - t0, 1e-9):,.0f} img/s")
                    bar.set_postfix_str(line, refresh=False)
                    if log_now:
                        log.info("%s epoch %d/%d, step %s/%s: %s, %s", name, epoch + 1, cfg.epochs,
                                 f"{s.step:,}", f"{batches.steps:,}", line,
                                 clock.text(epoch * steps_per_epoch + s.step))
                if s.global_step % GUARD_EVERY_STEPS == 0:
                    guard.check()
                if cfg.checkpoint_every_steps and s.global_step % cfg.checkpoint_every_steps == 0 and s.step < batches.steps:
                    guard.check()
                    s.loss_sum += loss_sum.item()
                    loss_sum.zero_()
                    self._save()
                if stop_after_steps is not None and steps_done_now >= stop_after_steps:
                    guard.check()
                    barrier()
                    return PretrainResult(s.epoch, s.history, {}, interrupted=True)
                signum = signals.requested(s.global_step)
                if signum:
                    guard.check()
                    s.loss_sum += loss_sum.item()
                    loss_sum.zero_()
                    self._save()
                    if dist.is_main:
                        log.warning("%s: stopped by %s at epoch %d, step %s of %s; checkpoint saved in %s. Run the "
                                    "stage again (dvc repro) to resume from here.", name, signal.Signals(signum).name,
                                    s.epoch + 1, f"{s.step:,}", f"{batches.steps:,}", self.ckpt_dir)
                    barrier()
                    raise SystemExit(exit_code(signum))
            guard.check()
            seconds = time.perf_counter() - t0
            local_mean = torch.tensor([(s.loss_sum + loss_sum.item()) / batches.steps], device=self.device,
                                      dtype=torch.float64)
            loss_mean = all_gather_cat(local_mean).mean().item()
            metrics = {"loss": loss_mean, "lr": cfg.lr_at(epoch),
                       "img_per_s": seen * cfg.batch_size / max(seconds, 1e-9), **s.epoch_stats}
            monitor = (epoch + 1) % cfg.knn_every_epochs == 0 or epoch + 1 == cfg.epochs
            knn = method.monitor(self) if monitor else None  # every rank takes part
            if knn is not None:
                metrics["knn_top1"] = knn
            # this epoch's SGD steps (since the resume, if it resumed mid-epoch) + the epoch start + kNN monitor
            metrics["epoch_seconds"] = time.perf_counter() - t0 + s.epoch_stats.get("kmeans_seconds", 0.0)
            s.epoch, s.step = epoch + 1, 0
            s.history.append({"epoch": s.epoch, **metrics})
            self._save()
            if dist.is_main:
                knn_text = f", kNN {metrics['knn_top1']:.2f}%" if "knn_top1" in metrics else ""
                extra = method.epoch_text(metrics)
                log.info("%s epoch %d/%d: loss %.4f, lr %g, %s img/s%s%s, epoch %s, %s", name, s.epoch, cfg.epochs,
                         metrics["loss"], metrics["lr"], f"{metrics['img_per_s']:,.0f}", knn_text,
                         f", {extra}" if extra else "", duration(metrics["epoch_seconds"]),
                         clock.text(s.epoch * steps_per_epoch))
                heartbeat.printed()
            if self.logger is not None and dist.is_main:
                self.logger.log_epoch(s.epoch, metrics)
            barrier()
        return PretrainResult(s.epoch, s.history, self.summary())

    def _replay_history(self) -> None:
        """Send the curves so far to the logger: the kNN before training at epoch 0 (the warm
        start's, for LA), then every finished epoch (all of them again after a resume)."""
        if self.logger is not None and self.dist.is_main:
            if self.state.extra.get("knn_top1_init") is not None:
                self.logger.log_epoch(0, {"knn_top1": self.state.extra["knn_top1_init"]})
            for row in self.state.history:
                self.logger.log_epoch(row["epoch"], {k: v for k, v in row.items() if k != "epoch"})

    def summary(self) -> dict[str, Any]:
        last = self.state.history[-1] if self.state.history else {}
        out = {"objective": self.method.name, "epochs": self.state.epoch, "steps": self.state.global_step,
               "num_items": self.num_items, **{k: v for k, v in self.state.extra.items() if v is not None}}
        out.update({f"final_{k}": v for k, v in last.items() if k != "epoch"})
        return out

    def provenance(self) -> list[dict]:
        """The protocol of every stage that built this model, warm start first (IR, then LA)."""
        return [*self.parent_provenance, {**self.protocol(), "epochs_done": self.state.epoch}]

    def views(self) -> dict:
        """What the method shows besides numbers (LA: a gallery of its clusters)."""
        return self.method.views(self)

    def export(self, path: str | Path) -> None:
        """Final weights for later stages (checkpoint.save_export): model, dataset seen, and the
        method's entries (bank, classifier)."""
        if not self.dist.is_main:
            return
        ckpt.save_export(path, self.model, self.method.name,
                         dataset={"name": self.train_info.name, "num_items": self.num_items,
                                  "digest": self.data_digest}, epochs=self.state.epoch,
                         provenance=self.provenance(), **self.method.export_fields())
