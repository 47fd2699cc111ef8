"""Glue of the transfer stage: load a pretrained (or random) backbone, open readout splits, kNN.

kNN evaluation (InstDisc protocol, knn.py): every train and val image is embedded at the
evaluation geometry of pretraining (augment.evaluate_transform: resize to the crop size,
normalise) by the frozen model, and each val image is classified by its k = 200 nearest
train images, weighted by exp(cos / 0.07), in two feature spaces:
    embedding  v = normalize(head(avgpool(conv5)))   the space the objective trained
    conv5      normalize(avgpool(conv5))              the trunk's global feature
The train features are recomputed from the final network (not read from the memory bank).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..data import augment
from ..data.augment import AugmentSpec
from ..data.datasets import open_split
from ..errors import UserError
from ..knn import knn_top1
from ..models.backbone import EmbeddingNet, build_model, check_meta
from ..models.config import ModelConfig
from ..progress import track
from ..runtime import checkpoint as ckpt
from ..runtime.distributed import pick_device
from .spaces import network_spaces, pixel_space
from .linear import LinearReadoutConfig, iter_batches


def load_backbone(checkpoint_path: str | Path | None, model_cfg: ModelConfig, seed: int = 0,
                  export: dict | None = None) -> EmbeddingNet:
    """The pretrained EmbeddingNet exported by `pretrain` (models/{la,ir,supervised,random}.pt), or, for
    `checkpoint_path=None`, a randomly initialised one (the `random` baseline, seeded by `seed`
    without touching torch's global random state).

    The checkpoint's "model_meta" must equal `model_cfg`'s arch, stem and embedding_dim;
    a missing file, a file that is not a pretrain export, or another model is a UserError
    naming the file and what differs. `export`: the file's content, when the caller has read it.
    """
    if checkpoint_path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(model_cfg.arch, model_cfg.stem, model_cfg.embedding_dim)
    model = build_model(model_cfg.arch, model_cfg.stem, model_cfg.embedding_dim)
    state = export if export is not None else ckpt.load_export(checkpoint_path, "pretrained model")
    check_meta(state["model_meta"], model.meta(), str(checkpoint_path))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UserError(f"{checkpoint_path}: weights do not fit {model.meta()} ({exc}); rerun the pretrain stage.") from None
    return model


def open_readout_split(data_dir: str | Path, split: str, cfg: LinearReadoutConfig) -> Dataset:
    """A split for `train_linear_readout`: arrays datasets as stored; file datasets decoded to
    the central `cfg.resize` square (shorter side resized to it), the input of every readout view."""
    return open_split(data_dir, split, train=False, crop_size=cfg.resize, resize=cfg.resize)


@torch.no_grad()
def _embed(model: EmbeddingNet, ds: Dataset, spec: AugmentSpec, device: torch.device, batch_size: int,
           num_workers: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised (embedding (N, D), pooled conv5 (N, C)) of a dataset, in index order."""
    n = len(ds)
    emb, pooled = [], []
    batches = iter_batches(ds, list(torch.arange(n).split(batch_size)), num_workers, pin_memory=device.type == "cuda")
    for images, _, _ in track(batches, f"kNN features ({what})", total=-(-n // batch_size)):
        x = augment.evaluate_transform(images.to(device), spec)
        spaces = network_spaces(model, model.pooled(x))
        emb.append(spaces["embedding"])
        pooled.append(spaces["conv5"])
    return torch.cat(emb), torch.cat(pooled)


def knn_eval(model: EmbeddingNet, train_ds: Dataset, val_ds: Dataset, num_classes: int, k: int = 200,
             temperature: float = 0.07, *, augment_spec: AugmentSpec, batch_size: int = 256, device: str = "auto",
             num_workers: int = 0, return_features: bool = False) -> dict:
    """kNN top-1 (%) of `val_ds` against `train_ds`: {"embedding": ..., "conv5": ...}.

    File datasets are opened as for pretraining's monitor (`open_split(dir, split,
    crop_size=augment_spec.crop_size)`: resize, centre crop). `model` is moved to the device
    and put in eval mode; its weights are not changed. With `return_features`, also
    "features": {"train": (N, D), "val": (M, D)} embeddings (for retrieval and maps).
    """
    dev = pick_device(device)
    model = model.to(dev).eval()
    train_emb, train_c5 = _embed(model, train_ds, augment_spec, dev, batch_size, num_workers, "train")
    val_emb, val_c5 = _embed(model, val_ds, augment_spec, dev, batch_size, num_workers, "val")
    train_labels = train_ds.labels.to(dev)
    out = {
        "embedding": knn_top1(val_emb, val_ds.labels, train_emb, train_labels, num_classes, k, temperature),
        "conv5": knn_top1(val_c5, val_ds.labels, train_c5, train_labels, num_classes, k, temperature),
    }
    if return_features:
        out["features"] = {"train": train_emb.cpu(), "val": val_emb.cpu()}
    return out


@torch.no_grad()
def pixel_features(ds: Dataset, spec: AugmentSpec, batch_size: int = 256, num_workers: int = 0) -> torch.Tensor:
    """The raw-pixel baseline's vectors (N, 3 S S): each image at the evaluation geometry
    (resized to the crop size, normalised with the pretraining mean/std), flattened, its own
    mean subtracted, L2-normalised."""
    out = []
    batches = iter_batches(ds, list(torch.arange(len(ds)).split(batch_size)), num_workers)
    for images, _, _ in track(batches, "pixel features", total=-(-len(ds) // batch_size)):
        out.append(pixel_space(augment.evaluate_transform(images, spec)))
    return torch.cat(out)


def pixel_knn(train_ds: Dataset, val_ds: Dataset, num_classes: int, k: int = 200, temperature: float = 0.07, *,
              augment_spec: AugmentSpec, num_workers: int = 0, return_features: bool = False) -> dict:
    """kNN top-1 (%) of the raw pixels (`pixel_features`): {"pixels": ...} (and "features" on request)."""
    train, val = (pixel_features(ds, augment_spec, num_workers=num_workers) for ds in (train_ds, val_ds))
    out = {"pixels": knn_top1(val, val_ds.labels, train, train_ds.labels, num_classes, k, temperature)}
    if return_features:
        out["features"] = {"train": train, "val": val}
    return out
