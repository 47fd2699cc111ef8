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
"""

from __future__ import annotations

import logging
import math
from typing import Iterable, Iterator, Literal, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch.utils.data import DataLoader, Dataset

from ..data import augment
from ..data.augment import AugmentSpec, check_range, step_generator
from ..models.backbone import PIXELS, READOUT_LAYERS, EmbeddingNet
from ..progress import Clock, track
from ..runtime.distributed import pick_device
from ..runtime.schedule import StepSchedule
from .crops import center_crop, random_crop, resize_shorter, ten_crop
from .spaces import network_spaces, pixel_space

ReadoutLayer = Literal[(*READOUT_LAYERS, PIXELS)]  # "conv1" .. "conv5", and "pixels" (the raw-pixel baseline)
STD_EPS = 1e-5
log = logging.getLogger(__name__)


class EpochLogger(Protocol):
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...


class LinearReadoutConfig(StepSchedule, BaseModel):
    """The readout recipe (la-method.md: SGD 0.9, lr 0.01, batch 128, wd 1e-4, drops x0.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    layers: list[ReadoutLayer] = Field(default_factory=lambda: list(READOUT_LAYERS))
    pool_rule: Literal["vissl", "official"] = Field(
        "vissl", description="vissl: pool each map to about pool_target_dims; official (the authors' TF code): "
                             "pool by 2 or 4 only while it has more than pool_target_dims (200,000) dimensions")
    pool_target_dims: int = Field(9000, ge=1, description="vissl: the largest s x s with C s^2 <= this; "
                                                          "official: the dimension limit (200000)")
    conv1_point: Literal["before_maxpool", "after_maxpool"] = Field(
        "before_maxpool", description="where conv1 is read: the stem's ReLU output (VISSL) or after its max-pool "
                                      "(the authors' TF code)")
    epochs: int = Field(..., ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, description="on the classifiers (weights and biases)")
    lr_drops: list[int] = Field(default_factory=list, description="epochs at which lr *= lr_gamma")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    seed: int = 0
    crop_size: int = Field(224, ge=8)
    eval_resize: int | None = Field(None, ge=8, description="shorter side before cropping; default round(crop_size * 256 / 224)")
    train_augment: Literal["random_resized_crop_flip", "resize_random_crop_flip", "pretraining", "none"] = (
        "random_resized_crop_flip")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="area range of random_resized_crop_flip")

    _crop_scale = field_validator("crop_scale")(lambda value: check_range(value, upper=1.0))
    ten_crop: bool = Field(True, description="also evaluate on 10 crops (softmax averaged)")
    cache_features: bool = Field(False, description="train_augment none only: pool the features once, train on the cache")
    standardize: bool = Field(True, description="fixed per-dimension standardisation of the pooled features")
    standardize_images: int = Field(10000, ge=2, description="training images the standardisation statistics come from")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0, description="data-loader workers for file datasets")

    @model_validator(mode="after")
    def _check(self):
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be a non-empty list without repeats, got {self.layers}")
        self.check_lr_drops()
        if self.resize < self.crop_size:
            raise ValueError(f"eval_resize {self.resize} is smaller than crop_size {self.crop_size}")
        if self.cache_features and self.train_augment != "none":
            raise ValueError("cache_features needs train_augment: none (augmented features cannot be cached)")
        if self.ten_crop and self.train_augment == "none":
            raise ValueError("ten_crop needs a readout trained on crops and flips (train_augment other than none): "
                             "the corner and flipped crops are otherwise outside what the classifier saw")
        return self

    @property
    def resize(self) -> int:
        """The shorter side images are resized to before cropping."""
        return self.eval_resize if self.eval_resize is not None else round(self.crop_size * 256 / 224)


def pool_side(channels: int, target: int) -> int:
    """The largest s >= 1 with channels * s * s <= target (1 when even s = 1 exceeds it)."""
    return max(1, math.isqrt(target // channels))


def pooled_dim(channels: int, spatial: int, target: int = 9000) -> int:
    """Feature size of a (channels, spatial, spatial) map after the readout pooling."""
    s = min(spatial, pool_side(channels, target))
    return channels * s * s


def official_factor(channels: int, height: int, width: int, max_dims: int = 200_000) -> int:
    """The authors' TF rule: no pooling when C H W <= max_dims, else average-pool by 2, or by 4
    when a quarter of the size is still above max_dims."""
    size = channels * height * width
    return 1 if size <= max_dims else (2 if size / 4 <= max_dims else 4)


class LayerReadout(nn.Module):
    """Average pool -> flatten -> fixed standardisation -> linear, for one layer.

    rule "vissl": adaptive pool to (min(H, s), min(W, s)), s = pool_side(C, target);
    rule "official": pool by f = official_factor(C, H, W, target) with stride f, windows that
    run past the edge averaged over what they hold (TF's SAME padding), to (ceil(H/f), ceil(W/f)).
    """

    def __init__(self, channels: int, height: int, width: int, num_classes: int, target: int,
                 rule: str = "vissl"):
        super().__init__()
        self.rule = rule
        if rule == "official":
            self.factor = official_factor(channels, height, width, target)
            self.pool_size = (-(-height // self.factor), -(-width // self.factor))
        else:
            s = pool_side(channels, target)
            self.pool_size = (min(height, s), min(width, s))
        self.dim = channels * self.pool_size[0] * self.pool_size[1]
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("inv_std", torch.ones(self.dim))
        self.fc = nn.Linear(self.dim, num_classes)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, D)."""
        if self.rule == "official":
            if self.factor > 1:
                fmap = F.avg_pool2d(fmap, self.factor, self.factor, ceil_mode=True, count_include_pad=False)
            return fmap.flatten(1)
        return F.adaptive_avg_pool2d(fmap, self.pool_size).flatten(1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, D) pooled features -> (B, num_classes) logits."""
        return self.fc((pooled - self.mean) * self.inv_std)


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
    """The state of one readout run: frozen model, heads, optimiser, geometry."""

    def __init__(self, model: EmbeddingNet, num_classes: int, cfg: LinearReadoutConfig, spec: AugmentSpec):
        self.cfg, self.num_classes = cfg, num_classes
        self.device = pick_device(cfg.device)
        self.spec = spec
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            probe = torch.zeros(1, 3, cfg.crop_size, cfg.crop_size, device=self.device)
            shapes = {n: f.shape[1:] for n, f in self._features(probe).items()}
        self.heads = nn.ModuleDict({name: LayerReadout(*shapes[name], num_classes, cfg.pool_target_dims, cfg.pool_rule)
                                    for name in cfg.layers})
        self.heads.to(self.device)
        self.reset_heads(cfg.seed)
        # geometry of random_resized_crop_flip: augment.apply without colour or grey changes
        self.rrc = AugmentSpec(crop_size=cfg.crop_size, crop_scale=cfg.crop_scale, hflip=True,
                               color_jitter=(0.0, 0.0, 0.0, 0.0), grayscale_p=0.0, mean=spec.mean, std=spec.std)
        # train_augment "pretraining" (the authors' TF readout): the pretraining recipe at the readout's crop size
        self.pretraining = spec.model_copy(update={"crop_size": cfg.crop_size})

    @torch.no_grad()
    def reset_heads(self, seed: int) -> None:
        """Fresh classifiers for a run with `seed` (weights N(0, 0.01), biases 0); the fixed
        standardisation statistics are kept."""
        g = torch.Generator().manual_seed(seed)
        for head in self.heads.values():
            head.fc.weight.copy_(torch.empty_like(head.fc.weight, device="cpu").normal_(0.0, 0.01, generator=g))
            head.fc.bias.zero_()

    # ------------------------------------------------------------------ geometry and features

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.features(x, self.cfg.layers, conv1_after_maxpool=self.cfg.conv1_point == "after_maxpool")

    def _batches(self, ds: Dataset, index_batches: list[torch.Tensor]):
        return iter_batches(ds, index_batches, self.cfg.num_workers, pin_memory=self.device.type == "cuda")

    def eval_view(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> resized (B, 3, >=R, >=R) float in [0, 1], R = cfg.resize."""
        return resize_shorter(images.to(self.device).float().div_(255), self.cfg.resize)

    def train_view(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised training crops (B, 3, S, S)."""
        cfg = self.cfg
        if cfg.train_augment in ("random_resized_crop_flip", "pretraining"):
            spec = self.rrc if cfg.train_augment == "random_resized_crop_flip" else self.pretraining
            d = augment.draw(spec, images.shape[0], images.shape[2], images.shape[3], g)
            return augment.apply(images.to(self.device), d, spec)
        x = self.eval_view(images)
        if cfg.train_augment == "none":
            return augment.normalize(center_crop(x, cfg.crop_size), self.spec)
        B, _, H, W = x.shape
        top_left = torch.stack([torch.randint(0, H - cfg.crop_size + 1, (B,), generator=g),
                                torch.randint(0, W - cfg.crop_size + 1, (B,), generator=g)], dim=1)
        flip = torch.rand(B, generator=g) < 0.5
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

    # ------------------------------------------------------------------ passes over the training set

    @torch.no_grad()
    def standardize(self, train_ds: Dataset, cached: dict[str, torch.Tensor] | None = None) -> None:
        """Fix each head's mean and 1/std from evenly spaced training images (eval geometry);
        taken from `cached` (the output of `cache`) when given instead of a pass over the images."""
        n, m = len(train_ds), min(len(train_ds), self.cfg.standardize_images)
        idx = torch.arange(m) * n // m
        sums = {k: torch.zeros(h.dim, dtype=torch.float64, device=self.device) for k, h in self.heads.items()}
        squares = {k: torch.zeros_like(v) for k, v in sums.items()}
        if cached is not None:
            pooled_batches = ({k: cached[k][i].to(self.device) for k in sums} for i in idx.split(self.cfg.batch_size))
        else:
            pooled_batches = (self._eval_pooled(images) for images, _, _ in track(
                self._batches(train_ds, list(idx.split(self.cfg.batch_size))), "readout statistics",
                total=-(-m // self.cfg.batch_size)))
        for pooled in pooled_batches:
            for k, p in pooled.items():
                p = p.double()
                sums[k] += p.sum(0)
                squares[k] += (p * p).sum(0)
        for k, head in self.heads.items():
            mean = sums[k] / m
            var = (squares[k] / m - mean * mean).clamp_(min=0)
            head.mean.copy_(mean.float())
            head.inv_std.copy_((var + STD_EPS).rsqrt().float())

    @torch.no_grad()
    def cache(self, train_ds: Dataset, extras: dict | None = None) -> dict[str, torch.Tensor]:
        """Pooled features {layer: (N, D) float32 on the CPU} of a whole split (eval geometry);
        `extras` (a dict) receives the kNN features of the same forwards, (N, D) each."""
        n, bs = len(train_ds), self.cfg.batch_size
        out = {k: torch.empty(n, h.dim) for k, h in self.heads.items()}
        for images, _, idx in track(self._batches(train_ds, list(torch.arange(n).split(bs))), "readout feature cache",
                                    total=-(-n // bs)):
            found: dict | None = {} if extras is not None else None
            for k, p in self._eval_pooled(images, found).items():
                out[k][idx] = p.cpu()
            for k, v in (found or {}).items():
                extras.setdefault(k, torch.empty(n, v.shape[1]))[idx] = v.cpu()
        return out

    def train(self, train_ds: Dataset, logger: EpochLogger | None,
              cached: dict[str, torch.Tensor] | None = None, seed: int | None = None) -> list[dict[str, float]]:
        """SGD on the heads: over `cached` pooled features when given, else over (augmented) images.
        `seed` (default cfg.seed) draws the order of the images and their augmentation."""
        cfg = self.cfg
        seed = cfg.seed if seed is None else seed
        labels_all = train_ds.labels
        opt = torch.optim.SGD(self.heads.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        history = []
        n = len(train_ds)
        clock = Clock(total=cfg.epochs)
        for epoch in range(cfg.epochs):
            lr = cfg.lr_at(epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            order = torch.randperm(n, generator=step_generator(seed, epoch))
            index_batches = list(order.split(cfg.batch_size))
            if cached is None:
                source = self._batches(train_ds, index_batches)
            else:
                source = ((None, labels_all[idx], idx) for idx in index_batches)
            loss_sums = {k: torch.zeros((), device=self.device) for k in cfg.layers}
            for step, (images, labels, idx) in enumerate(track(source, f"readout epoch {epoch + 1}/{cfg.epochs}",
                                                               total=len(index_batches))):
                if cached is None:
                    feats = self.pooled(self.train_view(images, step_generator(seed, epoch, step)))
                else:
                    feats = {k: cached[k][idx].to(self.device) for k in cfg.layers}
                y = labels.to(self.device)
                losses = {k: F.cross_entropy(self.heads[k](feats[k]), y) for k in cfg.layers}
                opt.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
                opt.step()
                for k, loss in losses.items():
                    loss_sums[k] += loss.detach() * y.shape[0]
            metrics = {f"loss_{k}": v.item() / n for k, v in loss_sums.items()}
            metrics["lr"] = lr
            history.append({"epoch": epoch + 1, **metrics})
            if logger is not None:
                logger.log_epoch(epoch + 1, metrics)
            if (epoch + 1) % max(1, cfg.epochs // 5) == 0 or epoch + 1 == cfg.epochs:  # about five lines a run
                losses = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("loss_"))
                log.info("readout seed %d epoch %d/%d: %s, lr %g, %s", seed, epoch + 1, cfg.epochs, losses, lr,
                         clock.text(epoch + 1))
        return history

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, val_ds: Dataset, cached: dict[str, torch.Tensor] | None = None) -> dict:
        """Top-1/top-5 (%) per layer on the centre crop and, with cfg.ten_crop, on 10 crops; and the
        centre-crop top-1 of every class. `cached`: the centre-crop pooled features of `val_ds`
        (from `cache`, when there are no 10 crops to compute)."""
        cfg = self.cfg
        n, bs = len(val_ds), cfg.batch_size
        k5 = min(5, self.num_classes)
        views = ("", "_10crop") if cfg.ten_crop else ("",)
        centre = 4 if cfg.ten_crop else 0  # crop 4 of ten_crop is the centre crop
        correct = {(k, v, top): 0 for k in cfg.layers for v in views for top in (1, k5)}
        per_class = {k: torch.zeros(self.num_classes, dtype=torch.long) for k in cfg.layers}  # centre-crop hits
        index_batches = list(torch.arange(n).split(bs))
        if cached is not None:
            source = ((None, val_ds.labels[idx], idx) for idx in index_batches)
        else:
            source = self._batches(val_ds, index_batches)
        for images, labels, idx in track(source, "readout evaluation", total=len(index_batches)):
            y = labels.to(self.device)
            if cached is not None:
                views_feats = [{k: cached[k][idx].to(self.device) for k in cfg.layers}]
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
                correct[(k, v, 1)] += hit[:, 0].sum().item()
                correct[(k, v, k5)] += hit.any(1).sum().item()
                if v == "":
                    per_class[k] += torch.bincount(y[hit[:, 0]].cpu(), minlength=self.num_classes)
        counts = torch.bincount(val_ds.labels, minlength=self.num_classes).clamp(min=1)
        out = {"layers": {}, "per_class": {}}
        for k in cfg.layers:
            out["layers"][k] = {f"{m}{v}": 100.0 * correct[(k, v, top)] / n
                                for v in views for m, top in (("top1", 1), ("top5", k5))}
            out["per_class"][k] = (100.0 * per_class[k] / counts).tolist()
        return out


def train_linear_readouts(model: EmbeddingNet, train_ds: Dataset, val_ds: Dataset, num_classes: int,
                          cfg: LinearReadoutConfig, augment_spec: AugmentSpec, seeds: list[int],
                          logger_for=None) -> dict:
    """Train the per-layer linear classifiers on `train_ds` once per seed and score them on `val_ds`.

    `model` is moved to cfg.device and frozen in place (eval mode, requires_grad False); its
    weights and batch-norm statistics are never changed. `augment_spec` gives the input
    mean/std. The backbone's work is shared by the seeds: with `cache_features` the pooled
    features of the training set (and, without 10 crops, of the validation set) are computed
    once, and the standardisation statistics always are. Deterministic for a seed on the CPU.
    `logger_for(seed)` gives the logger whose `log_epoch(epoch, {"loss_<layer>", "lr"})` is
    called after every epoch of that seed's run (None: no logging).

    Returns {"runs": [{"seed", "layers": {layer: {"top1", "top5"[, "top1_10crop",
    "top5_10crop"]}}, "per_class": {layer: [top-1 per class]}, "history": [...]}, ...],
    "feature_dims": {layer: D}, "knn_features": {"train": {space: (N, D)}, "val": ...} or None}
    (percent; top-5 is top-min(5, num_classes)). The kNN features (`knn_features`) come from
    the cached centre-crop forwards when both splits are cached (no 10 crops): a caller whose
    kNN geometry is the readout's then needs no other pass over the images.
    """
    run = _Readout(model, num_classes, cfg, augment_spec)
    both = cfg.cache_features and not cfg.ten_crop
    extras: dict[str, dict] = {"train": {}, "val": {}} if both else {}
    cached = run.cache(train_ds, extras.get("train")) if cfg.cache_features else None  # one pass serves every seed
    val_cached = run.cache(val_ds, extras.get("val")) if both else None
    if cfg.standardize:
        run.standardize(train_ds, cached)
    runs = []
    for seed in seeds:
        run.reset_heads(seed)
        history = run.train(train_ds, logger_for(seed) if logger_for else None, cached, seed)
        runs.append({"seed": seed, **run.evaluate(val_ds, val_cached), "history": history})
    return {"runs": runs, "feature_dims": {k: h.dim for k, h in run.heads.items()}, "knn_features": extras or None}


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
