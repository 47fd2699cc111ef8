"""One training loop for Instance Recognition and Local Aggregation.

Per step (global batch B over W processes, b = B / W per process):

    x_i = augment(image_i)                          drawn for the global batch, sliced per rank
    v_i = normalize(head(trunk(x_i)))                (b, D)
    IR:  L = NCE(v, bank[i], noise)                  lemniscate, Z fixed after the first batch
    LA:  L = local_aggregation_loss(v, i, bank, cluster_labels, k, tau)
    supervised (the reference): L = cross_entropy(W · avgpool(f(x)), y), no bank
    SGD step (DDP averages gradients)
    bank[i] <- normalize(m bank[i] + (1 - m) v_i)    for the all-gathered global batch

LA re-clusters the bank (H k-means of m clusters) at the start of every epoch, on rank 0,
and broadcasts the labels. Every random draw (data order, augmentation, NCE noise) comes
from a generator keyed by (seed, epoch, step), so 1 process and W processes see the same
global batch, and a resumed run continues exactly where an uninterrupted one would be.
Checkpoints (model, optimiser, bank, objective state, cluster labels, position, history)
are written atomically at every epoch end and every `checkpoint_every_steps` steps.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data import augment
from ..data.datasets import ArrayImages, open_split
from ..data.manifest import read_info
from ..errors import UserError
from ..io import file_sha256
from ..evaluation.knn import knn_top1
from ..memory_bank import MemoryBank
from ..models.backbone import EmbeddingNet, build_model, check_meta
from ..models.batchnorm import set_bn_groups, set_sync_bn
from ..objectives import InstanceRecognitionLoss, local_aggregation_loss
from ..progress import Clock, duration, track
from . import checkpoint as ckpt
from .config import IRConfig, LAConfig, ModelConfig, SupervisedConfig, TrainingConfig
from .distributed import DistInfo, all_gather_cat, barrier, broadcast, init_distributed

LAST = "last.pt"
# config keys that change how a run goes (processes, threads, logging, checkpoints, the kNN
# monitor's rhythm), not what it trains: left out of the resume match and the protocol
RUN_ONLY_KEYS = frozenset({"num_processes", "num_workers", "threads", "checkpoint_every_steps", "log_every_steps",
                           "knn_every_epochs"})
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
    cluster_labels: torch.Tensor | None = None  # (H, N) int64, LA only
    history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    loss_sum: float = 0.0  # this epoch so far, for its mean loss across an interruption
    epoch_stats: dict[str, float] = field(default_factory=dict)  # this epoch's clustering statistics


def objective_name(cfg: TrainingConfig) -> str:
    if isinstance(cfg, SupervisedConfig):
        return "supervised"
    return "la" if isinstance(cfg, LAConfig) else "ir"


class SupervisedNet(nn.Module):
    """Backbone + linear classifier on pooled conv5: logits (B, C)."""

    def __init__(self, model: EmbeddingNet, num_classes: int):
        super().__init__()
        self.model = model
        self.classifier = nn.Linear(model.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.model.pooled(x))


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


class _Batches:
    """Global-batch order for one epoch; each rank takes its contiguous slice of every batch."""

    def __init__(self, n: int, cfg: TrainingConfig, epoch: int, dist: DistInfo):
        self.perm = torch.randperm(n, generator=augment.step_generator(cfg.seed, epoch))
        self.B = cfg.batch_size
        self.b = cfg.batch_size // dist.world_size
        self.rank = dist.rank
        self.steps = n // self.B  # drop the last incomplete batch

    def local(self, step: int) -> torch.Tensor:
        start = step * self.B + self.rank * self.b
        return self.perm[start : start + self.b]


class _BatchSampler(torch.utils.data.Sampler):
    def __init__(self, batches: _Batches, start_step: int):
        self.batches, self.start = batches, start_step

    def __iter__(self):
        for s in range(self.start, self.batches.steps):
            yield self.batches.local(s).tolist()

    def __len__(self):
        return self.batches.steps - self.start


class Pretrainer:
    """Builds everything from configs and runs (or resumes) IR or LA pretraining."""

    def __init__(
        self,
        cfg: IRConfig | LAConfig,
        model_cfg: ModelConfig,
        aug: augment.AugmentSpec,
        train_dir: str | Path,
        checkpoint_dir: str | Path,
        val_dir: str | Path | None = None,
        init_from: str | Path | None = None,
        logger: EpochLogger | None = None,
        dist: DistInfo | None = None,
    ):
        self.cfg, self.model_cfg, self.aug = cfg, model_cfg, aug
        self.kind = objective_name(cfg)
        self.dist = dist or init_distributed(cfg.device)
        self.device = self.dist.device
        self.ckpt_dir = Path(checkpoint_dir)
        self.logger = logger
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        on_cuda = self.device.type == "cuda"
        self.amp = cfg.amp == "on" or (cfg.amp == "auto" and on_cuda)
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and on_cuda)

        if cfg.batch_size % (self.dist.world_size * cfg.bn_groups):
            raise UserError(f"batch_size {cfg.batch_size} is not divisible by {self.dist.world_size} processes "
                            f"x bn_groups {cfg.bn_groups}; change batch_size or the process count.")
        info = read_info(train_dir)
        self.train_info = info
        self.train = open_split(train_dir, "train", train=True, crop_size=aug.crop_size,
                                crop_scale=aug.crop_scale, crop_ratio=aug.crop_ratio)
        self.train_eval = open_split(train_dir, "train", train=False, crop_size=aug.crop_size)
        self.val = open_split(val_dir, "val", train=False, crop_size=aug.crop_size) if val_dir else None
        self.num_items = len(self.train)
        self.num_classes = len(info.classes)
        self._check_sizes()

        torch.manual_seed(cfg.seed)
        self.model: EmbeddingNet = build_model(model_cfg.arch, model_cfg.stem, model_cfg.embedding_dim)
        if cfg.bn_groups > 1:
            set_bn_groups(self.model, cfg.bn_groups)
        if cfg.sync_bn:
            set_sync_bn(self.model)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.bank = MemoryBank(self.num_items, model_cfg.embedding_dim, cfg.bank_momentum, cfg.bank_normalize_init,
                               generator=torch.Generator().manual_seed(cfg.seed), device=self.device)
        self.ir_loss = (InstanceRecognitionLoss(self.num_items, cfg.num_negatives, cfg.temperature,
                                                normalizer_per_item=cfg.nce_z_per_image).to(self.device)
                        if isinstance(cfg, IRConfig) else None)

        self.init_from = Path(init_from) if init_from else None
        self.parent_provenance: list[dict] = []  # the warm start's stages (IR for LA)
        if self.init_from is not None:
            self._warm_start(self.init_from)

        self.trainable: nn.Module = self.model
        if self.kind == "supervised":
            self.trainable = SupervisedNet(self.model, self.num_classes).to(self.device)
        self.optimizer = torch.optim.SGD(param_groups(self.trainable, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)
        self.net = (DistributedDataParallel(self.trainable, device_ids=[self.device.index] if on_cuda else None)
                    if self.dist.enabled else self.trainable)
        self.identity = self._identity()
        self.state = _State()

    def _check_sizes(self) -> None:
        """Params that do not fit the training set stop here, before any compute."""
        cfg, n = self.cfg, self.num_items
        section = {"ir": "pretrain_ia", "la": "pretrain_la", "supervised": "supervised"}[self.kind]
        too_big = [(f"{section}.batch_size", cfg.batch_size), (f"{section}.knn_k", cfg.knn_k)]
        if isinstance(cfg, LAConfig):
            too_big += [(f"{section}.k", cfg.k), (f"{section}.num_clusters", cfg.num_clusters)]
        bad = [f"{key} = {value:,}" for key, value in too_big if value > n]
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
        return {"objective": self.kind, **self.model.meta(), "augment": self.aug.model_dump(mode="json"),
                "dataset": self.train_info.name, "train_images": self.num_items,
                "val_images": len(self.val) if self.val is not None else None,
                "world_size": self.dist.world_size, "config": cfg}

    # ------------------------------------------------------------------ identity / warm start

    def _identity(self) -> dict:
        """Everything a checkpoint must share with this run to be resumed."""
        return {
            "objective": self.kind,
            "config": self.cfg.model_dump(mode="json", exclude=RUN_ONLY_KEYS),
            "model": self.model.meta(),
            "augment": self.aug.model_dump(mode="json"),
            "dataset": {"name": self.train_info.name, "num_items": self.num_items},
            "init": _file_digest(self.init_from) if self.init_from else None,
        }

    def _warm_start(self, path: Path) -> None:
        """LA starts from the IR run's model and memory bank (not its optimiser)."""
        state = ckpt.load_export(path, "warm-start checkpoint")
        if state.get("bank") is None or state.get("dataset") is None:
            raise UserError(f"warm-start checkpoint {path} ({state['objective']}) has no memory bank: LA starts from an IR model.")
        check_meta(state["model_meta"], self.model.meta(), f"warm-start checkpoint {path}")
        found = state["dataset"]
        if found.get("num_items") != self.num_items or found.get("name") != self.train_info.name:
            raise UserError(
                f"warm-start checkpoint {path} was trained on {found.get('name')} with {found.get('num_items')} images; "
                f"this run trains on {self.train_info.name} with {self.num_items}. Rerun the IR stage on this dataset."
            )
        self.model.load_state_dict(state["model"])
        self.bank.memory.copy_(state["bank"].to(self.device))
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
            "bank": self.bank.memory.cpu(),
            "ir_loss": self.ir_loss.state_dict() if self.ir_loss is not None else None,
            "cluster_labels": s.cluster_labels.cpu() if s.cluster_labels is not None else None,
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
        self.bank.memory.copy_(state["bank"].to(self.device))
        if self.ir_loss is not None:
            self.ir_loss.load_state_dict(state["ir_loss"])
        labels = state["cluster_labels"]
        self.state = _State(state["epoch"], state["step"], state["global_step"],
                            labels.to(self.device) if labels is not None else None, state["history"], state["extra"],
                            state["loss_sum"], state["epoch_stats"])
        return True

    # ------------------------------------------------------------------ pieces of a step

    def _fetch(self, ds, idx: torch.Tensor):
        if isinstance(ds, ArrayImages):
            return ds.batch(idx)
        items = [ds[i] for i in idx.tolist()]
        return torch.stack([x for x, _, _ in items]), torch.stack([y for _, y, _ in items]), idx

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _loss(self, emb: torch.Tensor, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        emb = emb.float()
        if self.ir_loss is not None:
            noise = None
            if self.cfg.num_negatives > 0:
                B, b = self.cfg.batch_size, emb.shape[0]
                all_noise = torch.randint(0, self.num_items, (B, self.cfg.num_negatives), generator=g)
                noise = all_noise[self.dist.rank * b : (self.dist.rank + 1) * b].to(self.device)
            return self.ir_loss(emb, idx, self.bank.memory, noise_indices=noise)
        cfg: LAConfig = self.cfg
        return local_aggregation_loss(emb, idx, self.bank.memory, self.state.cluster_labels, k=cfg.k,
                                      temperature=cfg.temperature)

    def _cluster(self) -> dict[str, float]:
        """H k-means on the bank (rank 0), labels broadcast; returns cluster statistics."""
        from .. import clustering  # faiss is only needed here

        cfg: LAConfig = self.cfg
        H, N = cfg.num_kmeans, self.num_items
        stats: dict[str, float] = {}
        labels = torch.empty(H, N, dtype=torch.long, device=self.device)
        if self.dist.is_main:
            t0 = time.perf_counter()
            found = clustering.run_kmeans(self.bank.memory.cpu().numpy(), cfg.num_clusters, H,
                                          iterations=cfg.kmeans_iterations, seed=cfg.kmeans_seed)
            seconds = time.perf_counter() - t0
            labels.copy_(torch.from_numpy(found))
            full = clustering.cluster_statistics(found, self.train.labels.numpy())
            stats = {f"cluster_{k}": float(v) for k, v in full.items()
                     if isinstance(v, (int, float)) and k not in ("num_clusterings", "num_points")}
            stats["kmeans_seconds"] = seconds
        self.state.cluster_labels = broadcast(labels)
        return stats

    @torch.no_grad()
    def embed(self, ds, batch_size: int = 512, pooled: bool = False) -> torch.Tensor:
        """Eval-mode embeddings (N, D) of a dataset, in index order (L2-normalised pooled
        conv5 features (N, C) when `pooled`)."""
        self.model.eval()
        out = []
        if isinstance(ds, ArrayImages):
            batches = (ds.batch(torch.arange(s, min(s + batch_size, len(ds)))) for s in range(0, len(ds), batch_size))
        else:
            batches = iter(DataLoader(ds, batch_size=batch_size, num_workers=self.cfg.num_workers))
        for x, _, _ in track(batches, "embedding", total=-(-len(ds) // batch_size)):
            x = augment.evaluate_transform(x.to(self.device), self.aug)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                out.append(F.normalize(self.model.pooled(x).float(), dim=1) if pooled else self.model(x).float())
        self.model.train()
        return torch.cat(out)

    def knn_monitor(self) -> float | None:
        """kNN top-1 (%) of the held-out split against the memory bank with the train labels
        (supervised: pooled conv5 of the held-out split against that of the train split)."""
        if self.val is None:
            return None
        if self.kind == "supervised":
            queries, bank = self.embed(self.val, pooled=True), self.embed(self.train_eval, pooled=True)
        else:
            queries, bank = self.embed(self.val), self.bank.memory
        return knn_top1(queries, self.val.labels, bank, self.train.labels.to(bank.device), self.num_classes,
                        k=self.cfg.knn_k, temperature=self.cfg.knn_temperature)

    # ------------------------------------------------------------------ the loop

    def run(self, stop_after_steps: int | None = None) -> PretrainResult:
        """Train to `cfg.epochs` (resuming if possible); `stop_after_steps` simulates an interruption."""
        cfg, dist = self.cfg, self.dist
        resumed = self.try_resume()
        s = self.state
        if not resumed and self.init_from is None:
            initial = self.embed(self.train_eval) if (cfg.bank_init == "features" or self.val is not None) else None
            if self.val is not None and dist.is_main:
                s.extra["knn_top1_init"] = knn_top1(self.embed(self.val), self.val.labels, initial, self.train.labels,
                                                    self.num_classes, cfg.knn_k, cfg.knn_temperature)
            if cfg.bank_init == "features":
                self.bank.memory.copy_(broadcast(initial.to(self.device)))
        if not resumed and self.init_from is not None and dist.is_main:
            s.extra["knn_top1_init"] = self.knn_monitor()
        self._replay_history()
        steps_done_now = 0
        self.model.train()
        steps_per_epoch = self.num_items // cfg.batch_size
        clock = Clock(done=s.epoch * steps_per_epoch + s.step, total=cfg.epochs * steps_per_epoch)
        every = cfg.log_every_steps or (steps_per_epoch // 10 if steps_per_epoch >= 200 else 0)
        if dist.is_main:
            log.info("%s: %s training images, %d epochs of %d steps (batch %d over %d process(es))%s", self.kind,
                     f"{self.num_items:,}", cfg.epochs, steps_per_epoch, cfg.batch_size, dist.world_size,
                     f"; resuming at epoch {s.epoch + 1}, step {s.step}" if resumed else "")
        while s.epoch < cfg.epochs:
            epoch = s.epoch
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr_at(epoch)
            if s.step == 0:
                s.loss_sum, s.epoch_stats = 0.0, (self._cluster() if self.kind == "la" else {})
            batches = _Batches(self.num_items, cfg, epoch, dist)
            loss_sum, seen, t0 = torch.zeros((), device=self.device), 0, time.perf_counter()
            arrays = isinstance(self.train, ArrayImages)
            if arrays:
                source = (self._fetch(self.train, batches.local(st)) for st in range(s.step, batches.steps))
            else:
                source = iter(DataLoader(self.train, batch_sampler=_BatchSampler(batches, s.step),
                                         num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                                         worker_init_fn=functools.partial(_init_worker, cfg.seed, epoch, dist.rank, s.step)))
            bar = track(source, f"{self.kind} epoch {epoch + 1}/{cfg.epochs}", total=batches.steps - s.step,
                        enabled=dist.is_main)
            for images, labels, idx in bar:
                g = augment.step_generator(cfg.seed, epoch, s.step, 1)
                H, W = images.shape[-2:]
                d = augment.draw(self.aug, cfg.batch_size, H, W, g, crop=arrays)
                d = d.slice(dist.rank * batches.b, (dist.rank + 1) * batches.b)
                x = augment.apply(images.to(self.device, non_blocking=True), d, self.aug)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                idx = idx.to(self.device)
                with self._autocast():
                    out = self.net(x)
                if self.kind == "supervised":
                    loss = F.cross_entropy(out.float(), labels.to(self.device))
                else:
                    loss = self._loss(out, idx, g)
                self._check_finite(loss, epoch, s.step)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if self.kind != "supervised":
                    self.bank.update(all_gather_cat(idx), all_gather_cat(out.detach().float()))
                loss_sum += loss.detach()
                seen += 1
                s.step += 1
                s.global_step += 1
                steps_done_now += 1
                if dist.is_main and (every and s.step % every == 0 or not bar.disable and s.step % 20 == 0):
                    line = (f"loss {loss_sum.item() / seen:.4f}, lr {cfg.lr_at(epoch):g}, "
                            f"{seen * cfg.batch_size / max(time.perf_counter() - t0, 1e-9):,.0f} img/s")
                    bar.set_postfix_str(line, refresh=False)
                    if every and s.step % every == 0:
                        log.info("%s epoch %d/%d, step %s/%s: %s, %s", self.kind, epoch + 1, cfg.epochs,
                                 f"{s.step:,}", f"{batches.steps:,}", line,
                                 clock.text(epoch * steps_per_epoch + s.step))
                if cfg.checkpoint_every_steps and s.global_step % cfg.checkpoint_every_steps == 0 and s.step < batches.steps:
                    s.loss_sum += loss_sum.item()
                    loss_sum.zero_()
                    self._save()
                if stop_after_steps is not None and steps_done_now >= stop_after_steps:
                    barrier()
                    return PretrainResult(s.epoch, s.history, {}, interrupted=True)
            seconds = time.perf_counter() - t0
            local_mean = torch.tensor([(s.loss_sum + loss_sum.item()) / batches.steps], device=self.device)
            loss_mean = all_gather_cat(local_mean).mean().item()
            metrics = {"loss": loss_mean, "lr": cfg.lr_at(epoch),
                       "img_per_s": seen * cfg.batch_size / max(seconds, 1e-9), **s.epoch_stats}
            monitor = (epoch + 1) % cfg.knn_every_epochs == 0 or epoch + 1 == cfg.epochs
            knn = self.knn_monitor() if dist.is_main and monitor else None
            if knn is not None:
                metrics["knn_top1"] = knn
            # this epoch's SGD steps (since the resume, if it resumed mid-epoch) + clustering + kNN monitor
            metrics["epoch_seconds"] = time.perf_counter() - t0 + s.epoch_stats.get("kmeans_seconds", 0.0)
            s.epoch, s.step = epoch + 1, 0
            s.history.append({"epoch": s.epoch, **metrics})
            self._save()
            if dist.is_main:
                knn_text = f", kNN {metrics['knn_top1']:.2f}%" if "knn_top1" in metrics else ""
                log.info("%s epoch %d/%d: loss %.4f, lr %g, %s img/s%s, epoch %s, %s", self.kind, s.epoch, cfg.epochs,
                         metrics["loss"], metrics["lr"], f"{metrics['img_per_s']:,.0f}", knn_text,
                         duration(metrics["epoch_seconds"]), clock.text(s.epoch * steps_per_epoch))
            if self.logger is not None and dist.is_main:
                self.logger.log_epoch(s.epoch, metrics)
            barrier()
        return PretrainResult(s.epoch, s.history, self.summary())

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Stop every rank at once when any rank's loss is not finite; nothing is saved or exported."""
        ok = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
        if self.dist.enabled:
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        if ok.item():
            return
        cfg, section = self.cfg, {"ir": "pretrain_ia", "la": "pretrain_la", "supervised": "supervised"}[self.kind]
        hints = [f"{section}.lr = {cfg.lr_at(epoch):g} may be too high", f"augment.std = {list(self.aug.std)}",
                 f"augment.mean = {list(self.aug.mean)}"]
        if self.kind != "supervised":
            hints.append(f"{section}.temperature = {cfg.temperature:g}")
        raise UserError(
            f"{self.kind} training stopped: the loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} (global step "
            f"{self.state.global_step + 1}). Nothing was exported; the last checkpoint is from before this step. "
            f"Check {'; '.join(hints)}."
        )

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
        out = {"objective": self.kind, "epochs": self.state.epoch, "steps": self.state.global_step,
               "num_items": self.num_items, **{k: v for k, v in self.state.extra.items() if v is not None}}
        out.update({f"final_{k}": v for k, v in last.items() if k != "epoch"})
        return out

    def provenance(self) -> list[dict]:
        """The protocol of every stage that built this model, warm start first (IR, then LA)."""
        return [*self.parent_provenance, {**self.protocol(), "epochs_done": self.state.epoch}]

    def export(self, path: str | Path) -> None:
        """Final weights for later stages (checkpoint.save_export): model, bank, dataset seen."""
        if not self.dist.is_main:
            return
        ckpt.save_export(
            path, self.model, self.kind, bank=self.bank.memory.cpu() if self.kind != "supervised" else None,
            dataset={"name": self.train_info.name, "num_items": self.num_items}, epochs=self.state.epoch,
            provenance=self.provenance(),
            classifier=self.trainable.classifier.state_dict() if self.kind == "supervised" else None,
        )


def _init_worker(seed: int, epoch: int, rank: int, start_step: int, worker_id: int) -> None:
    """Seed a loader worker from (seed, epoch, rank, start step, worker): the crops of file datasets."""
    value = augment.step_generator(seed, epoch, rank, start_step, worker_id).initial_seed()
    torch.manual_seed(value)
    np.random.seed(value % (2**32))
