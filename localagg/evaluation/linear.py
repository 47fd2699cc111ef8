"""Linear readout of a frozen backbone: one linear softmax classifier per readout layer.

Protocol (la-method.md, "Linear transfer (readout) protocol"): the backbone is frozen with
batch norm in eval mode; the classifiers of all readout layers (conv1 = stem output,
conv2..conv5 = layer1..layer4) are trained together from one backbone forward per batch,
with SGD (momentum 0.9, lr 0.01 with step drops, batch 128, weight decay 1e-4 on the
classifiers) and cross-entropy; evaluation reports the centre crop and the 10-crop score
(softmax outputs averaged over the ten crops of crops.py).

Per layer, for a map f (B, C, H, W), with `pool_rule` "vissl" (the default):
    p = flatten(adaptive_avg_pool(f, (s_h, s_w)))        (B, D),  D = C s_h s_w
    s = max(1, floor(sqrt(target / C)))                  the largest side with C s^2 <= target
    s_h = min(H, s), s_w = min(W, s)                     (a map is never upsampled)
    logits = W_l (p - mu) / sigma + b_l                  (B, num_classes)
and with `pool_rule` "official" (the authors' TF code, `pool_target_dims` = 200,000): f is
average-pooled by 2 when C H W > 200,000, by 4 when C H W / 4 is still above it, else kept;
ResNet-50 at 224 px with conv1 read after the max-pool gives D = 50,176 / 50,176 / 100,352 /
50,176 / 100,352. VISSL's D for conv1..conv5 (`pool_target_dims` = 9000):
    ResNet-18, 224 px, imagenet stem   7744, 7744, 8192, 6400, 8192
    ResNet-50, 224 px, imagenet stem   7744, 6400, 8192, 4096, 8192
    ResNet-18, 28 px, small stem       7744, 7744, 8192, 6400, 8192
    ResNet-50, 28 px, small stem       7744, 6400, 8192, 4096, 8192
    ResNet-18, 28 px, imagenet stem    7744, 3136, 2048, 1024, 512   (maps of 7, 4, 2, 1 px)

Standardisation (`standardize`, on by default): mu and sigma = sqrt(var + 1e-5) are per-dimension
statistics of the pooled training features, computed once before training from up to
`standardize_images` evenly spaced training images at the evaluation geometry, and fixed
thereafter. The classifier stays linear in p (this only reparametrises it, as a frozen
BatchNorm1d(affine=False) would; VISSL puts a batch norm before its linear heads), but it
makes one learning rate work for every layer and every backbone: raw pooled features of a
randomly initialised ResNet-50 are ~25 in magnitude at conv5 and ~0.1 at conv1, and the SGD
step on the logits scales with |p|^2.

Geometry (uint8 batches from the prepared datasets, processed on the device):
    eval                      resize the shorter side to `eval_resize` (default 256/224 of
                              the crop), centre crop `crop_size` (and the ten crops)
    none                      the eval geometry for training too (features may be cached)
    resize_random_crop_flip   resize to `eval_resize`, random `crop_size` crop, flip (Places205)
    random_resized_crop_flip  RandomResizedCrop(`crop_size`, scale `crop_scale`, ratio 3/4-4/3)
                              + flip (ImageNet, VISSL), resampled as augment.apply does
    pretraining               the pretraining recipe (the `augment` section: random resized crop,
                              colour jitter, grey, flip) at `crop_size` (ImageNet in the TF code)
File datasets (ImageNet, Places205) must be opened with
`open_split(dir, split, crop_size=eval_resize, resize=eval_resize)` (transfer.open_readout_split):
each image arrives as its central eval_resize square, so random crops are taken from that
square rather than from the full image, and the ten crops' corners are those of the square
(torchvision's TenCrop takes the corners of the whole resized image) -- a stated deviation.

Several processes (torchrun; `num_processes` of the transfer section): every global batch of
B images is split over the ranks (contiguous slices of the images, or, for cached features,
the images of each rank's shard of the training set, whose features it alone holds); each
rank's loss is its share of the batch's summed cross-entropy / B and the heads' gradients
are summed over the ranks, so W processes take exactly the steps of one process.
Statistics, evaluation counts and losses are summed over the ranks. On CUDA the backbone
runs under bf16 autocast (`amp`), the heads in float32; `float64` (tests) runs everything in
float64.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data import augment
from ..data.augment import AugmentSpec, step_generator
from ..models.backbone import PIXELS, EmbeddingNet
from ..progress import Clock, Heartbeat, bars_shown, track
from ..runtime.distributed import DistInfo, all_reduce_sum, pick_device, shard
from .crops import center_crop, random_crop, resize_shorter, ten_crop
from .heads import LayerReadout
from .readout_config import LinearReadoutConfig
from .spaces import network_spaces, pixel_space

STD_EPS = 1e-5
log = logging.getLogger(__name__)


class EpochLogger(Protocol):
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...


def iter_batches(ds: Dataset, index_batches: Iterable[torch.Tensor], num_workers: int = 0,
                 pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(uint8 images (B, 3, H, W), labels, indices) for each index batch: the in-memory
    fast path (`ds.batch`) for arrays datasets, a DataLoader for file datasets."""
    if hasattr(ds, "batch"):
        for idx in index_batches:
            yield ds.batch(idx)
        return
    loader = DataLoader(ds, batch_sampler=[b.tolist() for b in index_batches], num_workers=num_workers,
                        pin_memory=pin_memory)
    yield from loader


class _Readout:
    """The state of one readout run: frozen model, heads, optimiser, geometry, this rank's share."""

    def __init__(self, model: EmbeddingNet, num_classes: int, cfg: LinearReadoutConfig, spec: AugmentSpec,
                 dist: DistInfo | None = None):
        self.cfg, self.num_classes = cfg, num_classes
        self.dist = dist or DistInfo(device=pick_device(cfg.device))
        self.device = self.dist.device
        self.dtype = torch.float64 if cfg.float64 else torch.float32
        self.amp = cfg.amp == "on" or (cfg.amp == "auto" and self.device.type == "cuda" and not cfg.float64)
        self.spec = spec
        self.model = model.to(self.device, self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            probe = torch.zeros(1, 3, cfg.crop_size, cfg.crop_size, device=self.device, dtype=self.dtype)
            shapes = {n: f.shape[1:] for n, f in self._features(probe).items()}
        self.heads = nn.ModuleDict({name: LayerReadout(*shapes[name], num_classes, cfg.pool_target_dims, cfg.pool_rule)
                                    for name in cfg.layers})
        self.heads.to(self.device, self.dtype)
        self.reset_heads(cfg.seed)
        # geometry of random_resized_crop_flip: augment.apply without colour or grey changes
        self.rrc = AugmentSpec(crop_size=cfg.crop_size, crop_scale=cfg.crop_scale, hflip=True,
                               color_jitter=(0.0, 0.0, 0.0, 0.0), grayscale_p=0.0, mean=spec.mean, std=spec.std)
        # train_augment "pretraining" (the authors' TF readout): the pretraining recipe at the readout's crop size
        self.pretraining = spec.model_copy(update={"crop_size": cfg.crop_size})
        self.cache_range: range | None = None  # the training images whose features this rank caches

    @torch.no_grad()
    def reset_heads(self, seed: int) -> None:
        """Fresh classifiers for a run with `seed` (weights N(0, 0.01), biases 0); the fixed
        standardisation statistics are kept."""
        g = torch.Generator().manual_seed(seed)
        for head in self.heads.values():
            head.fc.weight.copy_(torch.empty(head.fc.weight.shape).normal_(0.0, 0.01, generator=g))
            head.fc.bias.zero_()

    # ------------------------------------------------------------------ geometry and features

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            maps = self.model.features(x, self.cfg.layers, conv1_after_maxpool=self.cfg.conv1_point == "after_maxpool")
        return {name: fmap.to(self.dtype) for name, fmap in maps.items()}

    def _batches(self, ds: Dataset, index_batches: list[torch.Tensor]):
        return iter_batches(ds, index_batches, self.cfg.num_workers, pin_memory=self.device.type == "cuda")

    def eval_view(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> resized (B, 3, >=R, >=R) float in [0, 1], R = cfg.resize."""
        return resize_shorter(images.to(self.device).to(self.dtype).div_(255), self.cfg.resize)

    def train_view(self, images: torch.Tensor, g: torch.Generator, part: slice, batch: int) -> torch.Tensor:
        """uint8 images (b, 3, H, W), rows `part` of a global batch of `batch` images -> their
        normalised training crops (b, 3, S, S), drawn for the whole global batch."""
        cfg = self.cfg
        if cfg.train_augment in ("random_resized_crop_flip", "pretraining"):
            spec = self.rrc if cfg.train_augment == "random_resized_crop_flip" else self.pretraining
            d = augment.draw(spec, batch, images.shape[2], images.shape[3], g).slice(part.start, part.stop)
            return augment.apply(images.to(self.device), d, spec).to(self.dtype)
        x = self.eval_view(images)
        if cfg.train_augment == "none":
            return augment.normalize(center_crop(x, cfg.crop_size), self.spec)
        H, W = x.shape[-2:]
        top_left = torch.stack([torch.randint(0, H - cfg.crop_size + 1, (batch,), generator=g),
                                torch.randint(0, W - cfg.crop_size + 1, (batch,), generator=g)], dim=1)[part]
        flip = (torch.rand(batch, generator=g) < 0.5)[part]
        return augment.normalize(random_crop(x, cfg.crop_size, top_left, flip), self.spec)

    @torch.no_grad()
    def pooled(self, x: torch.Tensor, extras: dict | None = None) -> dict[str, torch.Tensor]:
        """Normalised images (B, 3, S, S) -> {layer: pooled features (B, D)}, one backbone forward.
        `extras` (a dict) receives the kNN features of the same forward (`knn_features`)."""
        maps = self._features(x)
        if extras is not None:
            extras.update(knn_features(self.model, maps))
        return {n: self.heads[n].pool(maps[n]) for n in self.cfg.layers}

    def _eval_pooled(self, images: torch.Tensor, extras: dict | None = None) -> dict[str, torch.Tensor]:
        x = augment.normalize(center_crop(self.eval_view(images), self.cfg.crop_size), self.spec)
        return self.pooled(x, extras)

    def _mine(self, n: int) -> range:
        return self.dist.shard(n)

    # ------------------------------------------------------------------ passes over the training set

    @torch.no_grad()
    def standardize(self, train_ds: Dataset, cached: dict[str, torch.Tensor] | None = None) -> None:
        """Fix each head's mean and 1/std from evenly spaced training images (eval geometry);
        taken from `cached` (the output of `cache`) when given instead of a pass over the images.
        Each rank sums its share (float64); the sums are added over the ranks."""
        n, m = len(train_ds), min(len(train_ds), self.cfg.standardize_images)
        idx = torch.arange(m) * n // m
        if cached is not None:
            start, stop = self.cache_range.start, self.cache_range.stop
            idx = idx[(idx >= start) & (idx < stop)]
        else:
            part = self._mine(m)
            idx = idx[part.start : part.stop]
        sums = {k: torch.zeros(h.dim, dtype=torch.float64, device=self.device) for k, h in self.heads.items()}
        squares = {k: torch.zeros_like(v) for k, v in sums.items()}
        if cached is not None:
            pooled_batches = ({k: cached[k][i - start].to(self.device) for k in sums}
                              for i in idx.split(self.cfg.batch_size))
        else:
            pooled_batches = (self._eval_pooled(images) for images, _, _ in track(
                self._batches(train_ds, list(idx.split(self.cfg.batch_size))), "readout statistics",
                total=-(-len(idx) // self.cfg.batch_size), enabled=self.dist.is_main))
        for pooled in pooled_batches:
            for k, p in pooled.items():
                p = p.double()
                sums[k] += p.sum(0)
                squares[k] += (p * p).sum(0)
        for k, head in self.heads.items():
            mean = all_reduce_sum(sums[k]) / m
            var = (all_reduce_sum(squares[k]) / m - mean * mean).clamp_(min=0)
            head.mean.copy_(mean.to(self.dtype))
            head.inv_std.copy_((var + STD_EPS).rsqrt().to(self.dtype))

    @torch.no_grad()
    def cache(self, train_ds: Dataset, extras: dict | None = None) -> dict[str, torch.Tensor]:
        """Pooled features {layer: (n_r, D) on the CPU} of this rank's shard of a split (eval
        geometry; all of it with one process); `extras` (a dict) receives the kNN features of
        the same forwards, (n_r, D) each."""
        part, bs = self._mine(len(train_ds)), self.cfg.batch_size
        n = len(part)
        out = {k: torch.empty(n, h.dim, dtype=self.dtype) for k, h in self.heads.items()}
        index_batches = list(torch.arange(part.start, part.stop).split(bs))
        for images, _, idx in track(self._batches(train_ds, index_batches), "readout feature cache",
                                    total=len(index_batches), enabled=self.dist.is_main):
            found: dict | None = {} if extras is not None else None
            rows = idx - part.start
            for k, p in self._eval_pooled(images, found).items():
                out[k][rows] = p.cpu()
            for k, v in (found or {}).items():
                extras.setdefault(k, torch.empty(n, v.shape[1], dtype=v.dtype))[rows] = v.cpu()
        return out

    def _step_losses(self, feats: dict[str, torch.Tensor], y: torch.Tensor, batch: int):
        """(the objective per head, the summed cross-entropy per head) of this rank's share of a
        global batch of `batch` images: with one process the mean cross-entropy; with several,
        this rank's summed cross-entropy / batch, whose gradients the ranks add."""
        if not self.dist.enabled:
            losses = {k: F.cross_entropy(self.heads[k](feats[k]), y) for k in self.cfg.layers}
            return losses, {k: v.detach() * y.shape[0] for k, v in losses.items()}
        sums = {k: F.cross_entropy(self.heads[k](feats[k]), y, reduction="sum") for k in self.cfg.layers}
        return {k: v / batch for k, v in sums.items()}, {k: v.detach() for k, v in sums.items()}

    def _add_gradients_over_ranks(self) -> None:
        if not self.dist.enabled:
            return
        for p in self.heads.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            all_reduce_sum(p.grad)

    def train(self, train_ds: Dataset, logger: EpochLogger | None,
              cached: dict[str, torch.Tensor] | None = None, seed: int | None = None) -> list[dict[str, float]]:
        """SGD on the heads: over `cached` pooled features when given, else over (augmented) images.
        `seed` (default cfg.seed) draws the order of the images and their augmentation. Rank 0
        logs the losses every epochs/5 epochs and, without a progress bar, a step line at the
        first step after progress.HEARTBEAT_SECONDS without a line."""
        cfg = self.cfg
        seed = cfg.seed if seed is None else seed
        labels_all = train_ds.labels
        opt = torch.optim.SGD(self.heads.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        history = []
        n = len(train_ds)
        clock = Clock(total=cfg.epochs)
        heartbeat = Heartbeat(enabled=self.dist.is_main and not bars_shown())  # a line a minute without a bar
        world, rank = self.dist.world_size, self.dist.rank
        for epoch in range(cfg.epochs):
            lr = cfg.lr_at(epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            order = torch.randperm(n, generator=step_generator(seed, epoch))
            global_batches = list(order.split(cfg.batch_size))
            if cached is None:  # this rank's contiguous slice of every global batch
                parts = [slice(r.start, r.stop) for r in (shard(len(b), rank, world) for b in global_batches)]
                source = self._batches(train_ds, [b[part] for b, part in zip(global_batches, parts)])
            else:  # the images of every global batch that this rank's cache holds
                start, stop = self.cache_range.start, self.cache_range.stop
                mine = [b[(b >= start) & (b < stop)] for b in global_batches]
                source = ((None, labels_all[idx], idx) for idx in mine)
            loss_sums = {k: torch.zeros((), device=self.device, dtype=torch.float64) for k in cfg.layers}
            mine_seen, images_seen, t0 = 0, 0, time.perf_counter()  # this rank's images, the global batches'
            for step, (images, labels, idx) in enumerate(track(source, f"readout epoch {epoch + 1}/{cfg.epochs}",
                                                               total=len(global_batches), enabled=self.dist.is_main)):
                batch = len(global_batches[step])
                opt.zero_grad(set_to_none=True)
                if idx.numel():
                    if cached is None:
                        feats = self.pooled(self.train_view(images, step_generator(seed, epoch, step), parts[step],
                                                            batch))
                    else:
                        feats = {k: cached[k][idx - start].to(self.device) for k in cfg.layers}
                    losses, totals = self._step_losses(feats, labels.to(self.device), batch)
                    sum(losses.values()).backward()
                    for k, total in totals.items():
                        loss_sums[k] += total
                self._add_gradients_over_ranks()
                opt.step()
                mine_seen, images_seen = mine_seen + idx.numel(), images_seen + batch
                if heartbeat.due():  # the running mean losses of this rank's images so far
                    running = ", ".join(f"loss_{k} {v.item() / max(mine_seen, 1):.3f}" for k, v in loss_sums.items())
                    log.info("readout seed %d epoch %d/%d, step %s/%s: %s, lr %g, %s img/s, %s", seed, epoch + 1,
                             cfg.epochs, f"{step + 1:,}", f"{len(global_batches):,}", running, lr,
                             f"{images_seen / max(time.perf_counter() - t0, 1e-9):,.0f}",
                             clock.text(epoch + (step + 1) / len(global_batches)))
            metrics = {f"loss_{k}": all_reduce_sum(v).item() / n for k, v in loss_sums.items()}
            metrics["lr"] = lr
            history.append({"epoch": epoch + 1, **metrics})
            if logger is not None:
                logger.log_epoch(epoch + 1, metrics)
            if self.dist.is_main and ((epoch + 1) % max(1, cfg.epochs // 5) == 0 or epoch + 1 == cfg.epochs):
                losses = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("loss_"))
                log.info("readout seed %d epoch %d/%d: %s, lr %g, %s", seed, epoch + 1, cfg.epochs, losses, lr,
                         clock.text(epoch + 1))
                heartbeat.printed()
        return history

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, val_ds: Dataset, cached: dict[str, torch.Tensor] | None = None) -> dict:
        """Top-1/top-5 (%) per layer on the centre crop and, with cfg.ten_crop, on 10 crops; and the
        centre-crop top-1 of every class. `cached`: the centre-crop pooled features of this rank's
        shard of `val_ds` (from `cache`, when there are no 10 crops to compute). Each rank
        scores its shard; the counts are added over the ranks."""
        cfg = self.cfg
        n, bs = len(val_ds), cfg.batch_size
        part = self._mine(n)
        k5 = min(5, self.num_classes)
        views = ("", "_10crop") if cfg.ten_crop else ("",)
        centre = 4 if cfg.ten_crop else 0  # crop 4 of ten_crop is the centre crop
        correct = {(k, v, top): torch.zeros((), dtype=torch.float64, device=self.device)
                   for k in cfg.layers for v in views for top in (1, k5)}
        per_class = {k: torch.zeros(self.num_classes, dtype=torch.long, device=self.device) for k in cfg.layers}
        index_batches = list(torch.arange(part.start, part.stop).split(bs))
        if cached is not None:
            source = ((None, val_ds.labels[idx], idx) for idx in index_batches)
        else:
            source = self._batches(val_ds, index_batches)
        for images, labels, idx in track(source, "readout evaluation", total=len(index_batches),
                                         enabled=self.dist.is_main):
            y = labels.to(self.device)
            if cached is not None:
                views_feats = [{k: cached[k][idx - part.start].to(self.device) for k in cfg.layers}]
            else:
                x = self.eval_view(images)
                crops = ten_crop(x, cfg.crop_size) if cfg.ten_crop else center_crop(x, cfg.crop_size)[:, None]
                views_feats = (self.pooled(augment.normalize(crops[:, j], self.spec)) for j in range(crops.shape[1]))
            probs = {(k, v): 0.0 for k in cfg.layers for v in views}  # softmax outputs (B, classes)
            for j, feats in enumerate(views_feats):  # crops (B, V, 3, S, S), one view at a time
                for k in cfg.layers:
                    p = F.softmax(self.heads[k](feats[k]), dim=1)
                    if j == centre:
                        probs[(k, "")] = p
                    if cfg.ten_crop:
                        probs[(k, "_10crop")] = probs[(k, "_10crop")] + p / 10
            for (k, v), p in probs.items():
                hit = p.topk(k5, dim=1).indices == y[:, None]  # (B, k5)
                correct[(k, v, 1)] += hit[:, 0].sum()
                correct[(k, v, k5)] += hit.any(1).sum()
                if v == "":
                    per_class[k] += torch.bincount(y[hit[:, 0]], minlength=self.num_classes)
        counts = torch.bincount(val_ds.labels, minlength=self.num_classes).clamp(min=1)
        out = {"layers": {}, "per_class": {}}
        for k in cfg.layers:
            out["layers"][k] = {f"{m}{v}": 100.0 * all_reduce_sum(correct[(k, v, top)]).item() / n
                                for v in views for m, top in (("top1", 1), ("top5", k5))}
            out["per_class"][k] = (100.0 * all_reduce_sum(per_class[k]).cpu() / counts).tolist()
        return out


def train_linear_readouts(model: EmbeddingNet, train_ds: Dataset, val_ds: Dataset, num_classes: int,
                          cfg: LinearReadoutConfig, augment_spec: AugmentSpec, seeds: list[int],
                          logger_for=None, dist: DistInfo | None = None) -> dict:
    """Train the per-layer linear classifiers on `train_ds` once per seed and score them on `val_ds`.

    `model` is moved to cfg.device (the rank's device with `dist`) and frozen in place (eval
    mode, requires_grad False); its weights and batch-norm statistics are never changed.
    `augment_spec` gives the input mean/std. The backbone's work is shared by the seeds: with
    `cache_features` the pooled features of the training set (and, without 10 crops, of the
    validation set) are computed once, each rank caching its shard, and the standardisation
    statistics always are. Deterministic for a seed on the CPU; with `dist` (W processes) the
    same steps as one process. `logger_for(seed)` gives the logger whose `log_epoch(epoch,
    {"loss_<layer>", "lr"})` is called after every epoch of that seed's run (None: no logging).

    Returns {"runs": [{"seed", "layers": {layer: {"top1", "top5"[, "top1_10crop",
    "top5_10crop"]}}, "per_class": {layer: [top-1 per class]}, "history": [...]}, ...],
    "feature_dims": {layer: D}, "amp": "bf16" or "off", "knn_features": {"train": {space:
    (N, D)}, "val": ...} or None} (percent; top-5 is top-min(5, num_classes)). The kNN
    features come from the cached centre-crop forwards when both splits are cached (no 10
    crops) on one process: a caller whose kNN geometry is the readout's then needs no other
    pass over the images.
    """
    run = _Readout(model, num_classes, cfg, augment_spec, dist)
    both = cfg.cache_features and not cfg.ten_crop
    extras: dict[str, dict] = {"train": {}, "val": {}} if both and not run.dist.enabled else {}
    cached = run.cache(train_ds, extras.get("train")) if cfg.cache_features else None  # one pass serves every seed
    val_cached = run.cache(val_ds, extras.get("val")) if both else None
    if cached is not None:
        run.cache_range = run._mine(len(train_ds))  # the training images whose features this rank holds
    if cfg.standardize:
        run.standardize(train_ds, cached)
    runs = []
    for seed in seeds:
        run.reset_heads(seed)
        history = run.train(train_ds, logger_for(seed) if logger_for else None, cached, seed)
        runs.append({"seed": seed, **run.evaluate(val_ds, val_cached), "history": history})
    return {"runs": runs, "feature_dims": {k: h.dim for k, h in run.heads.items()},
            "amp": "bf16" if run.amp else "off", "knn_features": extras or None}


@torch.no_grad()
def knn_features(model, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The kNN spaces of transfer.knn_eval from readout maps of one forward: `knn.network_spaces`
    of the pooled conv5 for a network (when conv5 was read out), `knn.pixel_space` of the input
    for the pixel baseline."""
    if PIXELS in maps:
        return {PIXELS: pixel_space(maps[PIXELS])}
    if "conv5" not in maps or not hasattr(model, "head"):
        return {}
    return network_spaces(model, maps["conv5"].mean(dim=(2, 3)))  # pooled conv5 (B, C)


def train_linear_readout(model: EmbeddingNet, train_ds: Dataset, val_ds: Dataset, num_classes: int,
                         cfg: LinearReadoutConfig, augment_spec: AugmentSpec, logger: EpochLogger | None = None) -> dict:
    """One seed (cfg.seed) of `train_linear_readouts`: {"layers", "per_class", "feature_dims", "history"}."""
    result = train_linear_readouts(model, train_ds, val_ds, num_classes, cfg, augment_spec, [cfg.seed],
                                   (lambda seed: logger) if logger is not None else None)
    run = result["runs"][0]
    return {"layers": run["layers"], "per_class": run["per_class"], "feature_dims": result["feature_dims"],
            "history": run["history"]}
