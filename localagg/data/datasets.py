"""torch Datasets over prepared datasets (see manifest.py), yielding uint8 tensors.

Each item is (image uint8 (3, H, W), label, index). Grey images are repeated to 3 channels
so every backbone has an RGB stem (as Detectron2 expects). Augmentation happens later, on
the device, in batches (augment.py); file datasets only decode the crop (decode.py: for
training torchvision's RandomResizedCrop box from uniforms the training loop draws, for
evaluation resize + centre crop) so that a batch has one size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from . import decode
from .manifest import read_arrays_split, read_files_split, read_info
from .roots import require_root


def _to_chw3(img: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(img))
    if t.ndim == 2:
        return t.unsqueeze(0).expand(3, -1, -1)
    return t.permute(2, 0, 1)


class ArrayImages(Dataset):
    """A split of a kind-"arrays" dataset (pixels in memory)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = np.asarray(images)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return _to_chw3(self.images[i]), self.labels[i], i

    def batch(self, indices: torch.Tensor):
        """Gather a whole batch at once (fast path for in-memory data): (B, 3, H, W) uint8, labels, indices."""
        idx = indices.numpy()
        imgs = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
        imgs = imgs.unsqueeze(1).expand(-1, 3, -1, -1) if imgs.ndim == 3 else imgs.permute(0, 3, 1, 2)
        return imgs.contiguous(), self.labels[indices], indices


class FileImages(Dataset):
    """A split of a kind-"files" dataset (ImageNet, Places205), decoded on access (decode.py).

    An item is asked for by index (the evaluation geometry: resize the shorter side to
    `resize`, centre crop `size`) or by (index, crop uniforms) when `train` (RandomResizedCrop
    at `scale`/`ratio`, the uniforms from `decode.draw_crops`). With `for_device` the worker
    returns the file's bytes and box (`decode.ImageBytes`) for the training device to decode.
    """

    def __init__(self, root: str | Path, paths: list[str], labels: np.ndarray, size: int, train: bool = False,
                 scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), resize: int | None = None, for_device: bool = False):
        self.root = Path(root)
        self.paths = paths
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.size, self.train, self.scale, self.ratio = size, train, tuple(scale), tuple(ratio)
        self.resize = resize or round(size * 256 / 224)
        self.for_device = for_device

    def __len__(self) -> int:
        return len(self.paths)

    def _box_of(self, draws):
        if draws is None:
            return lambda width, height: decode.eval_box(width, height, self.resize, self.size)
        return lambda width, height: decode.crop_box(width, height, draws, self.scale, self.ratio)

    def __getitem__(self, item):
        i, draws = item if isinstance(item, tuple) else (item, None)
        if self.train and draws is None:
            raise ValueError("a training FileImages item is (index, crop uniforms): use the training loop's sampler")
        path = self.root / self.paths[i]
        try:
            if self.for_device:
                return decode.read_for_device(path, self._box_of(draws), self.size), self.labels[i], i
            with decode.open_image(path) as im:
                return decode._resample(im, self._box_of(draws)(*im.size), self.size), self.labels[i], i
        except OSError as exc:
            raise UserError(f"{path}: cannot read image ({exc}); rerun `prepare` with check_images: true.") from None


def open_split(data_dir: str | Path, split: str, train: bool = False, crop_size: int = 224,
               crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), resize: int | None = None,
               for_device: bool = False) -> Dataset:
    """The Dataset of one split of a prepared dataset directory (`for_device`: file datasets
    hand over bytes for the training device to decode)."""
    info = read_info(data_dir)
    if split not in info.splits:
        raise UserError(f"{data_dir}: no split {split!r}; it has {', '.join(info.splits)}.")
    if info.kind == "arrays":
        images, labels = read_arrays_split(data_dir, split)
        return ArrayImages(np.asarray(images), labels)
    paths, labels = read_files_split(data_dir, split)
    return FileImages(require_root(data_dir), paths, labels, crop_size, train, crop_scale, crop_ratio, resize,
                      for_device)


def dataset_labels(ds: Dataset) -> torch.Tensor:
    return ds.labels
