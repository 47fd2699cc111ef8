"""The embedded detection set: PASCAL VOC's role on a laptop, in the exact VOCdevkit layout.

Each scene is a square crop of a real photo or texture bundled in scikit-image, with one to
a few real Fashion-MNIST product photos composited onto it; each composited item is one
annotated object whose class is the item's Fashion-MNIST label. The set is written as
VOCdevkit/VOC2007/{Annotations, JPEGImages, ImageSets/Main/{trainval,test}.txt}, so the
very code path that reads the real PASCAL VOC (`voc.prepare_voc`, then Detectron2's
`register_pascal_voc` loader and VOC evaluator) reads it too; nothing downstream knows it
is synthetic.

Design choices, and why:

- Backgrounds are real images (grass, gravel, brick and moon textures; camera, coffee,
  chelsea, rocket, astronaut and Hubble deep-field photos), all files inside the
  scikit-image wheel, so they load offline. A background is a random square crop, between
  the output size and the whole short side, resized to `image_size` (so texture scale
  varies), flipped left-right at random, and for the textures also top-bottom. Grey images
  are repeated into three channels. Real clutter makes the detector separate objects from
  background rather than from a flat colour.
- Objects are real photos too: Fashion-MNIST items, scaled by a random factor in
  `scale_range` (28 px items: 22 to 56 px at the default 0.8-2.0), placed at a random
  position fully inside the image. An item's mask is its pixels above `MASK_THRESHOLD`
  after scaling (the items are bright products on black), and only the mask is pasted:
  the item's intensity shades a random colour tint, light on a dark background and dark
  on a light one (by the mean brightness under the item), blended at `ALPHA`, so it stays
  visible on every texture while its own shading, which carries its class, is kept.
- The box is the tight bounding box of the placed mask, in VOC's 1-based inclusive pixel
  coordinates, so it always lies inside the image and covers exactly the changed pixels.
- Items may overlap a little, as VOC objects do, but a placement whose box has IoU above
  `MAX_IOU` with an earlier box is redrawn (up to `MAX_TRIES` times, then the object is
  dropped), so no object is hidden.
- trainval scenes use only the trainval items and test scenes only the test items: the
  caller passes disjoint source images, so test objects are unseen products.
- Deterministic: every image draws from its own `numpy` Generator seeded by (seed, split,
  index), its background from one stream and its objects from another; JPEGs are saved
  by PIL at fixed quality with no EXIF or timestamps. The same arguments give
  byte-identical files, and trainval images do not change when `num_test` does.
"""

from __future__ import annotations

import colorsys
import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import UserError
from ..io import atomic_path
from ..progress import track
from .voc import VocAnnotation, VocObject, write_annotation

YEAR = "VOC2007"
# skimage.data loaders whose images ship inside the scikit-image wheel (no download).
TEXTURES: tuple[str, ...] = ("grass", "gravel", "brick", "moon")
PHOTOS: tuple[str, ...] = ("camera", "coffee", "chelsea", "rocket", "astronaut", "hubble_deep_field")
BACKGROUNDS: tuple[str, ...] = TEXTURES + PHOTOS

MASK_THRESHOLD = 25  # item pixels above this (of 255) belong to the object
ALPHA = 0.9
MAX_IOU = 0.3
MAX_TRIES = 20
JPEG_QUALITY = 95
_SPLITS = ("trainval", "test")


@functools.lru_cache(maxsize=None)
def load_backgrounds() -> tuple[np.ndarray, ...]:
    """The `BACKGROUNDS` images as read-only (H, W, 3) uint8 arrays, in that order."""
    from skimage import data

    out = []
    for name in BACKGROUNDS:
        img = np.asarray(getattr(data, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)
        img.setflags(write=False)
        out.append(img)
    return tuple(out)


def build_synthetic_voc(
    out_root: str | os.PathLike,
    items_trainval: np.ndarray,
    labels_trainval: np.ndarray,
    items_test: np.ndarray,
    labels_test: np.ndarray,
    class_names: Sequence[str],
    num_trainval: int,
    num_test: int,
    image_size: int = 128,
    objects_per_image: tuple[int, int] = (1, 3),
    scale_range: tuple[float, float] = (0.8, 2.0),
    seed: int = 0,
) -> None:
    """Write the synthetic set as `out_root`/VOC2007 (`out_root` plays the VOCdevkit).

    Items are (N, H, W) uint8 grey images (Fashion-MNIST: 28x28) with int labels indexing
    `class_names`. Writes `num_trainval` trainval images ("000001", ...) then `num_test`
    test images numbered on, each `image_size` square with between `objects_per_image`
    [0] and [1] objects. The VOC2007 folder appears atomically, replacing an old one.
    """
    class_names = [str(c) for c in class_names]
    items = {
        "trainval": _check_items(items_trainval, labels_trainval, len(class_names), "trainval"),
        "test": _check_items(items_test, labels_test, len(class_names), "test"),
    }
    counts = {"trainval": int(num_trainval), "test": int(num_test)}
    _check_args(class_names, counts, image_size, objects_per_image, scale_range, seed, items)
    backgrounds = load_backgrounds()
    jobs = [(split, k) for split in _SPLITS for k in range(counts[split])]
    ids = {split: [] for split in _SPLITS}
    with atomic_path(Path(out_root) / YEAR) as year_dir:
        ann_dir, jpg_dir, sets_dir = year_dir / "Annotations", year_dir / "JPEGImages", year_dir / "ImageSets" / "Main"
        for folder in (ann_dir, jpg_dir, sets_dir):
            folder.mkdir(parents=True)
        for n, (split, k) in enumerate(track(jobs, "building synthetic VOC", total=len(jobs)), start=1):
            code = _SPLITS.index(split)
            rng_bg = np.random.default_rng([seed, code, k, 0])
            rng_obj = np.random.default_rng([seed, code, k, 1])
            canvas = _background(rng_bg, backgrounds, image_size)
            split_items, split_labels = items[split]
            objects = _place_objects(
                rng_obj, canvas, split_items, split_labels, class_names, objects_per_image, scale_range
            )
            image_id = f"{n:06d}"
            ids[split].append(image_id)
            pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(jpg_dir / f"{image_id}.jpg", "JPEG", quality=JPEG_QUALITY, subsampling=0)
            ann = VocAnnotation(filename=f"{image_id}.jpg", width=image_size, height=image_size, depth=3, objects=objects)
            write_annotation(ann, ann_dir / f"{image_id}.xml", folder=YEAR)
        for split in _SPLITS:
            (sets_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids[split]))


def _check_items(items, labels, n_classes: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    items = np.asarray(items)
    labels = np.asarray(labels)
    if items.ndim != 3 or items.dtype != np.uint8 or len(items) == 0:
        raise UserError(
            f"{split} items must be a non-empty (N, H, W) uint8 array; got shape {items.shape}, dtype {items.dtype}."
        )
    if labels.shape != (len(items),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"{split} labels must be {len(items)} integers, one per item; got shape {labels.shape}, dtype {labels.dtype}."
        )
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        raise UserError(
            f"{split} labels must lie in 0..{n_classes - 1} (one per class name); "
            f"item {bad[0]} has label {labels[bad[0]]}."
        )
    if not (items.reshape(len(items), -1) > MASK_THRESHOLD).any():
        raise UserError(f"{split} items are all blank (no pixel above {MASK_THRESHOLD}); nothing could be pasted.")
    return items, labels


def _check_args(class_names, counts, image_size, objects_per_image, scale_range, seed, items) -> None:
    if not class_names:
        raise UserError("class_names is empty.")
    for split, n in counts.items():
        if n < 1:
            raise UserError(f"num_{split} must be at least 1; got {n}.")
    lo, hi = objects_per_image
    if not 0 <= lo <= hi:
        raise UserError(f"objects_per_image must be (min, max) with 0 <= min <= max; got {tuple(objects_per_image)}.")
    s_lo, s_hi = scale_range
    if not 0 < s_lo <= s_hi:
        raise UserError(f"scale_range must be (min, max) with 0 < min <= max; got {tuple(scale_range)}.")
    if int(seed) < 0:
        raise UserError(f"seed must be non-negative; got {seed}.")
    for split, (arr, _) in items.items():
        largest = int(round(max(arr.shape[1:]) * s_hi))
        if largest > image_size:
            raise UserError(
                f"image_size {image_size} is too small for {split} items of {max(arr.shape[1:])} px scaled by up to "
                f"{s_hi} ({largest} px); raise image_size or lower scale_range."
            )


def _background(rng: np.random.Generator, backgrounds: Sequence[np.ndarray], size: int) -> np.ndarray:
    """A random square crop of a random background, resized to size x size; float32 RGB."""
    index = int(rng.integers(len(backgrounds)))
    img = backgrounds[index]
    h, w = img.shape[:2]
    short = min(h, w)
    side = int(rng.integers(min(size, short), short + 1))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = img[y0 : y0 + side, x0 : x0 + side]
    flip_lr, flip_ud = rng.random(2) < 0.5
    if flip_lr:
        crop = crop[:, ::-1]
    if flip_ud and BACKGROUNDS[index] in TEXTURES:
        crop = crop[::-1]
    resized = Image.fromarray(np.ascontiguousarray(crop), "RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32).copy()


def _place_objects(
    rng: np.random.Generator,
    canvas: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    objects_per_image: tuple[int, int],
    scale_range: tuple[float, float],
) -> list[VocObject]:
    """Paste items onto `canvas` in place; return their objects (1-based VOC boxes)."""
    size_h, size_w = canvas.shape[:2]
    item_h, item_w = items.shape[1:]
    boxes: list[tuple[int, int, int, int]] = []  # 0-based inclusive
    objects: list[VocObject] = []
    for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
        for _attempt in range(MAX_TRIES):
            j = int(rng.integers(len(items)))
            scale = float(rng.uniform(*scale_range))
            sh, sw = max(1, int(round(item_h * scale))), max(1, int(round(item_w * scale)))
            y0 = int(rng.integers(0, size_h - sh + 1))
            x0 = int(rng.integers(0, size_w - sw + 1))
            hue, sat = rng.random(), rng.uniform(0.4, 1.0)
            scaled = np.asarray(Image.fromarray(items[j], "L").resize((sw, sh), Image.BILINEAR), dtype=np.float32)
            mask = scaled > MASK_THRESHOLD
            if not mask.any():
                continue
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]), y0 + int(rows[-1]))
            if any(_iou(box, other) > MAX_IOU for other in boxes):
                continue
            region = canvas[y0 : y0 + sh, x0 : x0 + sw]
            _paste(region, scaled, mask, colorsys.hsv_to_rgb(hue, sat, 1.0))
            boxes.append(box)
            name = class_names[int(labels[j])]
            objects.append(VocObject(name, box[0] + 1, box[1] + 1, box[2] + 1, box[3] + 1))
            break
    return objects


def _paste(region: np.ndarray, scaled: np.ndarray, mask: np.ndarray, tint: tuple[float, float, float]) -> None:
    """Blend the item's tinted shading into `region` (a view of the canvas) where `mask`."""
    value = scaled[mask] / 255.0  # the item's own shading, 0..1
    under = region[mask].mean(axis=1).mean()
    if under < 128:  # dark background: a light object
        shade = 0.35 + 0.65 * value
    else:  # light background: a dark object with the same shading order
        shade = 0.05 + 0.45 * value
    color = shade[:, None] * (255.0 * np.asarray(tint, dtype=np.float32))[None, :]
    region[mask] = (1.0 - ALPHA) * region[mask] + ALPHA * color


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two 0-based inclusive pixel boxes (x0, y0, x1, y1)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / float(area(a) + area(b) - inter)
