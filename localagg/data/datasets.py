"""torch Datasets over prepared datasets (see manifest.py), yielding uint8 tensors.

Each item is (image uint8 (3, H, W), label, index). Grey images are repeated to 3 channels
so every backbone has an RGB stem (as Detectron2 expects). Augmentation happens later, on
the device, in batches (augment.py); file datasets only decode (and, for training, crop at
the full resolution as torchvision's RandomResizedCrop does, or resize + centre-crop for
evaluation) so that a batch has one size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from ..errors import UserError
from .manifest import read_arrays_split, read_files_split, read_info


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
    """A split of a kind-"files" dataset (ImageNet, Places205): decoded with PIL on access."""

    def __init__(self, root: str | Path, paths: list[str], labels: np.ndarray, transform: Callable):
        self.root = Path(root)
        self.paths = paths
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.root / self.paths[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except OSError as exc:
            raise UserError(f"{path}: cannot read image ({exc}); rerun `prepare` with check_images: true.") from None
        return self.transform(img), self.labels[i], i


def file_transform(crop_size: int, train: bool, crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), resize: int | None = None):
    """Decode-time geometry for file datasets; output uint8 (3, crop_size, crop_size).

    train: RandomResizedCrop on the full image (its randomness is the loader worker's,
    seeded per epoch); eval: resize the shorter side to `resize` (default 256/224 of the
    crop) and centre-crop.
    """
    if train:
        geo = T.RandomResizedCrop(crop_size, scale=crop_scale, ratio=crop_ratio, antialias=True)
    else:
        geo = T.Compose([T.Resize(resize or round(crop_size * 256 / 224), antialias=True), T.CenterCrop(crop_size)])
    return T.Compose([T.PILToTensor(), geo])


def open_split(data_dir: str | Path, split: str, train: bool = False, crop_size: int = 224,
               crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), resize: int | None = None) -> Dataset:
    """The Dataset of one split of a prepared dataset directory."""
    info = read_info(data_dir)
    if split not in info.splits:
        raise UserError(f"{data_dir}: no split {split!r}; it has {', '.join(info.splits)}.")
    if info.kind == "arrays":
        images, labels = read_arrays_split(data_dir, split)
        return ArrayImages(np.asarray(images), labels)
    paths, labels = read_files_split(data_dir, split)
    return FileImages(info.root, paths, labels, file_transform(crop_size, train, crop_scale, crop_ratio, resize))


def dataset_labels(ds: Dataset) -> torch.Tensor:
    return ds.labels
