"""Glue of the transfer stage: load a pretrained (or random) backbone, open readout splits, kNN.

kNN evaluation (InstDisc protocol, knn.py): every train and val image is embedded at the
evaluation geometry of pretraining (augment.evaluate_transform: resize to the crop size,
normalise) by the frozen model, and each val image is classified by its k = 200 nearest
train images, weighted by exp(cos / 0.07), in two feature spaces:
    embedding  v = normalize(head(avgpool(conv5)))   the space the objective trained
    conv5      normalize(avgpool(conv5))              the trunk's global feature
The train features are recomputed from the final network (not read from the memory bank),
and streamed: they are never all in memory (knn_eval). The raw-pixel baseline's space is the
normalised image at a fixed size (`pixel_space_fn`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data import augment
from ..data.augment import AugmentSpec
from ..data.datasets import open_split
from ..errors import UserError
from ..knn import TopK, correct_count
from ..models.backbone import PIXELS, EmbeddingNet, build_model, check_meta
from ..models.config import ModelConfig
from ..progress import track
from ..runtime import checkpoint as ckpt
from ..runtime.distributed import DistInfo, pick_device
from .linear import iter_batches
from .readout_config import LinearReadoutConfig
from .spaces import network_spaces, pixel_space
from .views import query_indices

RETRIEVAL_QUERIES, RETRIEVAL_NEIGHBOURS = 8, 8


def load_backbone(checkpoint_path: str | Path | None, model_cfg: ModelConfig, seed: int = 0,
                  export: dict | None = None) -> EmbeddingNet:
    """The pretrained EmbeddingNet exported by `pretrain` (models/{la,ir,supervised,random}.pt), or, for
    `checkpoint_path=None`, a randomly initialised one (the `random` baseline, seeded by `seed`
    without touching torch's global random state).

    The checkpoint's "model_meta" must equal `model_cfg`'s arch, stem and embedding_dim (an
    imported model keeps its own embedding_dim: its file's head, or the trunk width);
    a missing file, a file that is not a pretrain export, or another model is a UserError
    naming the file and what differs. `export`: the file's content, when the caller has read it.
    """
    if checkpoint_path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(model_cfg.arch, model_cfg.stem, model_cfg.embedding_dim)
    state = export if export is not None else ckpt.load_export(checkpoint_path, "pretrained model")
    dim = model_cfg.embedding_dim
    if state.get("objective") == "imported":  # its embedding is the file's own (its head, or the pooled trunk)
        dim = state["model_meta"].get("embedding_dim", dim)
    model = build_model(model_cfg.arch, model_cfg.stem, dim)
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


SpaceFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]  # uint8 images (B, 3, H, W) -> {space: (B, D)}


def network_space_fn(model: EmbeddingNet, spec: AugmentSpec, device: str | torch.device = "auto") -> SpaceFn:
    """The kNN spaces of a frozen network (moved to `device`, eval mode, weights unchanged):
    `spaces.network_spaces` at the evaluation geometry."""
    model = model.to(device if isinstance(device, torch.device) else pick_device(device)).eval()
    dtype = next(model.parameters()).dtype  # float64 after a float64 readout
    return lambda images: network_spaces(model, model.pooled(augment.evaluate_transform(images, spec).to(dtype)))


def pixel_space_fn(spec: AugmentSpec, size: int) -> SpaceFn:
    """The raw-pixel baseline's space: each image at the evaluation geometry (resized to the
    crop size, normalised with the pretraining mean/std), resized to `size` x `size`
    (antialiased), flattened, its own mean subtracted, L2-normalised: (B, 3 size^2) whatever
    the crop size, so its memory does not grow with the crop."""

    def fn(images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = augment.evaluate_transform(images, spec)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return {PIXELS: pixel_space(x)}

    return fn


@torch.no_grad()
def space_batches(space_fn: SpaceFn, ds: Dataset, device: torch.device, batch_size: int, num_workers: int, what: str,
                  part: range | None = None) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(first index, {space: (b, D)}) for the images of `part` (default: all of `ds`), in order."""
    part = part if part is not None else range(len(ds))
    index_batches = list(torch.arange(part.start, part.stop).split(batch_size))
    batches = iter_batches(ds, index_batches, num_workers, pin_memory=device.type == "cuda")
    first = part.start
    for images, _, _ in track(batches, f"kNN features ({what})", total=len(index_batches)):
        spaces = space_fn(images.to(device, non_blocking=True))
        yield first, spaces
        first += images.shape[0]


@torch.no_grad()
def knn_eval(space_fn: SpaceFn, train_ds: Dataset, val_ds: Dataset, num_classes: int, k: int = 200,
             temperature: float = 0.07, *, device: str | torch.device = "auto", batch_size: int = 256,
             num_workers: int = 0, views: bool = False, dist: DistInfo | None = None) -> dict:
    """kNN top-1 (%) of `val_ds` against `train_ds` in every space of `space_fn`.

    The validation features (M, D) are computed once; the training set is streamed through a
    running top-k per space (knn.TopK), so memory is O(M (D + k)) whatever len(train_ds). With
    `dist`, each rank streams its shard of the training set and the top-k are merged.
    Returns {"knn": {space: top-1}} and, with `views`, "retrieval" ({"queries": val indices,
    "neighbours": their 8 nearest training images in the first space, by cosine}) and
    "map_features" (the first space's validation features, for the embedding map).
    File datasets are opened as for pretraining's monitor (`open_split(dir, split,
    crop_size=augment_spec.crop_size)`: resize, centre crop).
    """
    dev = torch.device(device) if isinstance(device, torch.device) else pick_device(device)
    dist = dist or DistInfo(device=dev)
    val: dict[str, list] = {}
    for _, spaces in space_batches(space_fn, val_ds, dev, batch_size, num_workers, "val"):
        for name, rows in spaces.items():
            val.setdefault(name, []).append(rows)
    val = {name: torch.cat(rows) for name, rows in val.items()}
    first_space = next(iter(val))
    tops = {name: TopK(rows, min(k, len(train_ds))) for name, rows in val.items()}
    chosen = query_indices(val_ds.labels, RETRIEVAL_QUERIES) if views else []
    nearest = TopK(F.normalize(val[first_space][chosen].float(), dim=1), min(RETRIEVAL_NEIGHBOURS, len(train_ds)))
    for first, spaces in space_batches(space_fn, train_ds, dev, batch_size, num_workers, "train",
                                       dist.shard(len(train_ds))):
        for name, rows in spaces.items():
            tops[name].feed(rows, first)
        if views:
            nearest.feed(F.normalize(spaces[first_space].float(), dim=1), first)
    out: dict = {"knn": {}}
    for name, top in tops.items():
        top.merge()
        out["knn"][name] = 100.0 * correct_count(top.scores(train_ds.labels, num_classes, temperature),
                                                 val_ds.labels) / len(val_ds)
    if views:
        nearest.merge()
        out["retrieval"] = {"queries": chosen, "neighbours": nearest.indices.cpu().tolist()}
        out["map_features"] = val[first_space].cpu()
    return out
