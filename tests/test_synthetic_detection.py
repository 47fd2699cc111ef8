"""The embedded detection set: VOC layout, boxes that cover their items, determinism, splits."""

from __future__ import annotations

import socket
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from localagg.data import synthetic_detection as sd
from localagg.data.synthetic_detection import build_synthetic_voc, load_backgrounds
from localagg.data.voc import prepare_voc, read_annotation, validate_voc_year
from localagg.errors import UserError

NAMES = ["a", "b", "c"]
SIZE = 64


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("LOCALAGG_NO_PROGRESS", "1")


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Items like Fashion-MNIST's: a bright textured blob on black, random size and place."""
    rng = np.random.default_rng(seed)
    items = np.zeros((n, 28, 28), np.uint8)
    for k in range(n):
        h, w = rng.integers(8, 25, 2)
        y, x = rng.integers(0, 28 - h + 1), rng.integers(0, 28 - w + 1)
        items[k, y : y + h, x : x + w] = rng.integers(60, 256, (h, w))
    return items, rng.integers(0, len(NAMES), n)


def _build(root: Path, num_trainval: int = 6, num_test: int = 4, **kw) -> Path:
    tv, tv_labels = _blobs(20, 1)
    te, te_labels = _blobs(10, 2)
    args = dict(image_size=SIZE, objects_per_image=(1, 3), scale_range=(0.8, 2.0), seed=0) | kw
    build_synthetic_voc(root, tv, tv_labels, te, te_labels, NAMES, num_trainval, num_test, **args)
    return root


def _ids(root: Path, split: str) -> list[str]:
    return (root / "VOC2007" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def _pixels(root: Path, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(root / "VOC2007" / "JPEGImages" / f"{image_id}.jpg").convert("RGB"), np.float32)


def _ring(obj, ann) -> list[tuple]:
    """numpy indices of the one-pixel lines just outside each side of a VOC box, inside the image."""
    x0, y0, x1, y1 = obj.xmin - 1, obj.ymin - 1, obj.xmax, obj.ymax
    lines = []
    if x0 > 0:
        lines.append((slice(y0, y1), x0 - 1))
    if x1 < ann.width:
        lines.append((slice(y0, y1), x1))
    if y0 > 0:
        lines.append((y0 - 1, slice(x0, x1)))
    if y1 < ann.height:
        lines.append((y1, slice(x0, x1)))
    return lines


def test_backgrounds_load_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a background tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    load_backgrounds.cache_clear()
    images = load_backgrounds()
    assert len(images) == len(sd.BACKGROUNDS) >= 8
    for name, img in zip(sd.BACKGROUNDS, images):
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert min(img.shape[:2]) >= 128 and img.std() > 10, name
        assert not img.flags.writeable
    assert len({img.tobytes()[:4096] for img in images}) == len(images)


def test_layout_and_prepare_voc_accepts_it(tmp_path):
    root = _build(tmp_path / "VOCdevkit")
    year = root / "VOC2007"
    assert _ids(root, "trainval") == [f"{i:06d}" for i in range(1, 7)]
    assert _ids(root, "test") == [f"{i:06d}" for i in range(7, 11)]
    assert sorted(p.name for p in (year / "JPEGImages").iterdir()) == [f"{i:06d}.jpg" for i in range(1, 11)]
    assert sorted(p.name for p in (year / "Annotations").iterdir()) == [f"{i:06d}.xml" for i in range(1, 11)]
    assert validate_voc_year(year, ["trainval", "test"], NAMES, workers=1) == []
    manifest = prepare_voc(
        root, tmp_path / "prepared", trainval=(("VOC2007", "trainval"),), test=(("VOC2007", "test"),), classes=NAMES, workers=1
    )
    assert manifest["counts"]["trainval"]["images"] == 6 and manifest["counts"]["test"]["images"] == 4
    objects = [len(read_annotation(year / "Annotations" / f"{i:06d}.xml").objects) for i in range(1, 11)]
    assert all(1 <= n <= 3 for n in objects) and len(set(objects)) > 1
    assert sum(objects) == manifest["counts"]["trainval"]["objects"] + manifest["counts"]["test"]["objects"]
    for i in range(1, 11):
        with Image.open(year / "JPEGImages" / f"{i:06d}.jpg") as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (SIZE, SIZE))
            assert "exif" not in im.info


def test_boxes_lie_inside_and_cover_their_items(tmp_path):
    """Same seed with no objects gives the bare backgrounds: the change is exactly in the boxes."""
    with_items = _build(tmp_path / "items", num_trainval=8, num_test=4)
    bare = _build(tmp_path / "bare", num_trainval=8, num_test=4, objects_per_image=(0, 0))
    n_boxes = 0
    for image_id in _ids(with_items, "trainval") + _ids(with_items, "test"):
        ann = read_annotation(with_items / "VOC2007" / "Annotations" / f"{image_id}.xml")
        assert read_annotation(bare / "VOC2007" / "Annotations" / f"{image_id}.xml").objects == []
        diff = np.abs(_pixels(with_items, image_id) - _pixels(bare, image_id)).mean(axis=2)
        outside = np.ones_like(diff, bool)
        boxes = []
        for obj in ann.objects:
            others = np.zeros_like(diff, bool)  # pixels of the other boxes
            for other in ann.objects:
                if other is not obj:
                    others[other.ymin - 1 : other.ymax, other.xmin - 1 : other.xmax] = True
            assert 1 <= obj.xmin < obj.xmax <= ann.width and 1 <= obj.ymin < obj.ymax <= ann.height
            x0, y0, x1, y1 = obj.xmin - 1, obj.ymin - 1, obj.xmax, obj.ymax  # numpy slice bounds
            assert 5 <= x1 - x0 <= 56 and 5 <= y1 - y0 <= 56  # blobs of 8-24 px scaled 0.8-2
            inside = diff[y0:y1, x0:x1]
            assert inside.mean() > 20, (image_id, obj)
            # tight: the first and last row and column of the box hold pasted pixels
            for edge in (inside[0], inside[-1], inside[:, 0], inside[:, -1]):
                assert edge.max() > 10, (image_id, obj)
            # ... and the line just outside each side holds none (JPEG ringing stays below 20)
            for line in _ring(obj, ann):
                free = diff[line][~others[line]]
                assert free.size == 0 or free.max() < 20, (image_id, obj)
            outside[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = False
            boxes.append((x0, y0, x1 - 1, y1 - 1))
            n_boxes += 1
        for a, b in combinations(boxes, 2):
            assert sd._iou(a, b) <= sd.MAX_IOU
        if outside.any():
            assert diff[outside].mean() < 2.0, image_id
    assert n_boxes >= 12


def test_same_arguments_give_identical_bytes(tmp_path):
    first = _build(tmp_path / "one")
    second = _build(tmp_path / "two")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 22  # 10 JPEG + 10 XML + 2 split lists
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    other = _build(tmp_path / "three", seed=1)
    assert (other / files[0]).read_bytes() != (first / files[0]).read_bytes()
    # trainval images do not depend on how many test images are made
    more_test = _build(tmp_path / "four", num_test=2)
    for image_id in _ids(first, "trainval"):
        rel = Path("VOC2007", "JPEGImages", f"{image_id}.jpg")
        assert (more_test / rel).read_bytes() == (first / rel).read_bytes()


def test_trainval_and_test_use_their_own_items(tmp_path):
    """trainval items are squares of class 0, test items wide bars of class 1."""
    squares = np.zeros((5, 28, 28), np.uint8)
    squares[:] = 200
    bars = np.zeros((5, 28, 28), np.uint8)
    bars[:, 10:18, :] = 200
    root = tmp_path / "VOCdevkit"
    build_synthetic_voc(
        root, squares, np.zeros(5, int), bars, np.ones(5, int), ["square", "bar"], 6, 6, image_size=SIZE, seed=3
    )
    for split, name in (("trainval", "square"), ("test", "bar")):
        for image_id in _ids(root, split):
            for obj in read_annotation(root / "VOC2007" / "Annotations" / f"{image_id}.xml").objects:
                w, h = obj.xmax - obj.xmin + 1, obj.ymax - obj.ymin + 1
                assert obj.name == name
                if name == "square":
                    assert abs(w - h) <= 1, (image_id, obj)
                else:
                    assert w >= 2.5 * h, (image_id, obj)


def test_bad_arguments_are_user_errors(tmp_path):
    items, labels = _blobs(4, 0)
    with pytest.raises(UserError, match="image_size 48 is too small"):
        build_synthetic_voc(tmp_path / "a", items, labels, items, labels, NAMES, 2, 2, image_size=48)
    with pytest.raises(UserError, match="labels must lie in 0..2"):
        build_synthetic_voc(tmp_path / "b", items, labels + 3, items, labels, NAMES, 2, 2, image_size=SIZE)
    with pytest.raises(UserError, match="all blank"):
        build_synthetic_voc(tmp_path / "c", items, labels, np.zeros_like(items), labels, NAMES, 2, 2, image_size=SIZE)
    assert not any(tmp_path.iterdir())
