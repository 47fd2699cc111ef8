"""ImageNet and Places205 manifests from tiny real-layout trees built in tmp_path."""

from __future__ import annotations


import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from localagg.data.manifest import read_files_split, read_info
from localagg.data.real_classification import prepare_imagenet, prepare_places205
from localagg.errors import DatasetError, UserError

PLACES_IMAGES = "data/vision/torralba/deeplearning/images256"
PLACES_TRAIN = "trainvalsplit_places205/train_places205.csv"
PLACES_VAL = "trainvalsplit_places205/val_places205.csv"


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("LOCALAGG_NO_PROGRESS", "1")


def _image_bytes(fmt: str = "JPEG", seed: int = 0, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _imagenet(root: Path) -> Path:
    """3 classes; train: 3 images each (mixed extension case, one PNG), val: 2 each; plus non-images."""
    for i, wnid in enumerate(["n03", "n01", "n02"]):
        for name, fmt in [("a.JPEG", "JPEG"), ("b.jpg", "JPEG"), ("c.PNG", "PNG")]:
            _write(root / "train" / wnid / name, _image_bytes(fmt, seed=i))
        for name in ["v1.JPEG", "v2.jpeg"]:
            _write(root / "val" / wnid / name, _image_bytes(seed=10 + i))
        _write(root / "train" / wnid / "notes.txt", b"not an image")
    _write(root / "val" / "LOC_val_solution.csv", b"ignored")
    return root


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_imagenet_manifest_from_good_tree(tmp_path):
    root = _imagenet(tmp_path / "imagenet")
    info = prepare_imagenet(root, tmp_path / "out", workers=1)

    assert info.name == "imagenet" and info.kind == "files"
    assert info.classes == ["n01", "n02", "n03"]
    assert info.splits == {"train": 9, "val": 6}
    assert read_info(tmp_path / "out").root == root.resolve()  # known to this process, not written
    assert "root" not in json.loads((tmp_path / "out/dataset.json").read_text())
    paths, labels, sizes = read_files_split(tmp_path / "out", "train", sizes=True)
    assert paths[:3] == ["train/n01/a.JPEG", "train/n01/b.jpg", "train/n01/c.PNG"]
    assert sizes.tolist() == [(root / p).stat().st_size for p in paths]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    paths, labels = read_files_split(tmp_path / "out", "val")
    assert paths == [f"val/{w}/{n}" for w in ["n01", "n02", "n03"] for n in ["v1.JPEG", "v2.jpeg"]]
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_the_same_tree_at_another_root_prepares_to_the_same_bytes_and_a_changed_file_is_named(tmp_path):
    from localagg.data import roots

    root = _imagenet(tmp_path / "imagenet")
    prepare_imagenet(root, tmp_path / "one", workers=1)
    moved = tmp_path / "nvme" / "imagenet"
    moved.parent.mkdir()
    root.rename(moved)
    prepare_imagenet(moved, tmp_path / "two", workers=1)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    paths, _, sizes = read_files_split(tmp_path / "two", "train", sizes=True)
    roots.check_sample(tmp_path / "two", moved, paths, sizes)  # the same files: silent
    (moved / paths[4]).write_bytes((moved / paths[4]).read_bytes()[:-7])
    with pytest.raises(UserError, match=rf"{paths[4]} is .* bytes, but .* recorded .*changed since `prepare`"):
        roots.check_sample(tmp_path / "two", moved, paths, sizes)
    (moved / paths[4]).unlink()
    with pytest.raises(UserError, match=rf"{paths[4]} does not exist, but the dataset prepared in"):
        roots.check_sample(tmp_path / "two", moved, paths, sizes)


def test_imagenet_is_byte_identical_when_prepared_twice(tmp_path):
    root = _imagenet(tmp_path / "imagenet")
    prepare_imagenet(root, tmp_path / "one", workers=1)
    prepare_imagenet(root, tmp_path / "two", workers=1)
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(one) == ["dataset.json", "train.csv", "val.csv"]
    assert one == two


def _break_imagenet(root: Path) -> None:
    _write(root / "train" / "n02" / "random.JPEG", b"\x00not a jpeg at all" * 10)
    good = _image_bytes(size=64)
    _write(root / "val" / "n01" / "truncated.JPEG", good[: len(good) // 2])
    (root / "train" / "n04").mkdir()
    _write(root / "val" / "n09" / "x.JPEG", _image_bytes())


def test_imagenet_reports_every_problem_and_writes_nothing(tmp_path):
    root = _imagenet(tmp_path / "imagenet")
    _break_imagenet(root)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        prepare_imagenet(root, out, workers=1)

    assert len(err.value.problems) == 4
    message = str(err.value)
    assert f"ImageNet at {root}: 4 problem(s)" in message
    assert "train/n02/random.JPEG: does not decode" in message
    assert "val/n01/truncated.JPEG: does not decode" in message
    assert "train/n04/: no images" in message
    assert "val/n09/: class n09 has no folder in train/" in message
    assert "`exclude`" in message and "check_images: false" in message
    assert not out.exists()


def test_imagenet_exclude_and_check_images_false_skip_corrupt_images(tmp_path):
    root = _imagenet(tmp_path / "imagenet")
    _write(root / "train" / "n02" / "random.JPEG", b"\x00not a jpeg at all" * 10)

    with pytest.raises(DatasetError, match="train/n02/random.JPEG"):
        prepare_imagenet(root, tmp_path / "out", workers=1)

    info = prepare_imagenet(root, tmp_path / "excluded", workers=1, exclude=["train/n02/random.JPEG"])
    assert info.splits["train"] == 9
    assert "train/n02/random.JPEG" not in read_files_split(tmp_path / "excluded", "train")[0]

    info = prepare_imagenet(root, tmp_path / "unchecked", check_images=False)
    assert info.splits["train"] == 10
    assert "train/n02/random.JPEG" in read_files_split(tmp_path / "unchecked", "train")[0]


def test_imagenet_missing_split_and_loose_val_images(tmp_path):
    root = tmp_path / "imagenet"
    _write(root / "train" / "n01" / "a.JPEG", _image_bytes())
    _write(root / "val" / "ILSVRC2012_val_00000001.JPEG", _image_bytes())
    with pytest.raises(DatasetError) as err:
        prepare_imagenet(root, tmp_path / "out", workers=1)
    assert err.value.problems == ["val/: 1 image(s) lie directly in val/; sort them into one folder per class"]

    (root / "val" / "ILSVRC2012_val_00000001.JPEG").unlink()
    (root / "val").rmdir()
    with pytest.raises(DatasetError, match=r"val/: folder does not exist"):
        prepare_imagenet(root, tmp_path / "out", workers=1)


def test_missing_root_is_a_user_error_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"ImageNet root {missing} does not exist"):
        prepare_imagenet(missing, tmp_path / "out")
    with pytest.raises(UserError, match=f"Places205 root {missing} does not exist"):
        prepare_places205(missing, tmp_path / "out")
    assert not (tmp_path / "out").exists()


PLACES_GOOD_TRAIN = [
    "a/abbey/00000001.jpg 0",
    "a/abbey/00000002.jpg 0",
    "b/bus_interior/00000001.jpg 1",
    "f/field/wild/00000001.jpg 2",
    "f/field/wild/00000002.jpg 2",
]
PLACES_GOOD_VAL = ["b/bus_interior/00000009.jpg 1", "a/abbey/00000009.jpg 0", "f/field/wild/00000009.jpg 2"]


def _places(root: Path, train: list[str], val: list[str], make_images: bool = True) -> Path:
    for list_file, lines in [(PLACES_TRAIN, train), (PLACES_VAL, val)]:
        _write(root / list_file, ("\n".join(lines) + "\n").encode())
        for line in lines if make_images else []:
            fields = line.split()
            if len(fields) == 2 and fields[0].count("/") >= 2:
                _write(root / PLACES_IMAGES / fields[0], _image_bytes(seed=len(line)))
    (root / PLACES_IMAGES).mkdir(parents=True, exist_ok=True)
    return root


def test_places205_manifest_from_good_release(tmp_path):
    root = _places(tmp_path / "places", PLACES_GOOD_TRAIN, PLACES_GOOD_VAL)
    info = prepare_places205(root, tmp_path / "out", workers=1)

    assert info.name == "places205" and info.kind == "files"
    assert info.classes == ["abbey", "bus_interior", "field/wild"]
    assert info.splits == {"train": 5, "val": 3}
    paths, labels = read_files_split(tmp_path / "out", "val")
    assert paths == [
        f"{PLACES_IMAGES}/a/abbey/00000009.jpg",
        f"{PLACES_IMAGES}/b/bus_interior/00000009.jpg",
        f"{PLACES_IMAGES}/f/field/wild/00000009.jpg",
    ]
    assert labels.tolist() == [0, 1, 2]
    assert all((root / p).is_file() for p in paths)
    prepare_places205(root, tmp_path / "again", workers=1)
    assert _files(tmp_path / "out") == _files(tmp_path / "again")


def test_places205_custom_locations(tmp_path):
    root = tmp_path / "places"
    _write(root / "lists" / "train.txt", b"a/abbey/1.jpg 0\nb/bus_interior/1.jpg 1\n")
    _write(root / "lists" / "val.txt", b"a/abbey/2.jpg 0\n")
    for rel in ["a/abbey/1.jpg", "b/bus_interior/1.jpg", "a/abbey/2.jpg"]:
        _write(root / "imgs" / rel, _image_bytes())
    info = prepare_places205(root, tmp_path / "out", "lists/train.txt", "lists/val.txt", "imgs", workers=1)
    assert info.classes == ["abbey", "bus_interior"]
    assert read_files_split(tmp_path / "out", "train")[0] == ["imgs/a/abbey/1.jpg", "imgs/b/bus_interior/1.jpg"]


def test_places205_reports_malformed_lines_missing_images_and_conflicts(tmp_path):
    train = PLACES_GOOD_TRAIN + ["a/abbey/00000003.jpg", "abbey.jpg 0", "a/abbey/00000004.jpg zero"]
    val = PLACES_GOOD_VAL + ["c/cafe/00000001.jpg 0"]
    root = _places(tmp_path / "places", train, val)
    _write(root / PLACES_TRAIN, (root / PLACES_TRAIN).read_bytes() + b"b/bus_interior/00000404.jpg 1\n")
    _write(root / PLACES_IMAGES / "f/field/wild/00000002.jpg", b"garbage")
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        prepare_places205(root, out, workers=1)

    problems = err.value.problems
    assert f"{PLACES_TRAIN}:6: malformed line 'a/abbey/00000003.jpg'" in problems[0]
    assert f"{PLACES_TRAIN}:7: malformed line 'abbey.jpg 0'" in problems[1]
    assert f"{PLACES_TRAIN}:8: malformed line 'a/abbey/00000004.jpg zero'" in problems[2]
    assert problems[3] == f"{PLACES_IMAGES}/b/bus_interior/00000404.jpg: listed in {PLACES_TRAIN} but does not exist"
    assert problems[4] == f"label 0 names several classes: 'abbey' ({PLACES_TRAIN}:1), 'cafe' ({PLACES_VAL}:4)"
    assert problems[5].startswith(f"{PLACES_IMAGES}/f/field/wild/00000002.jpg: does not decode")
    assert len(problems) == 6
    assert str(err.value).startswith(f"Places205 at {root}: 6 problem(s)")
    assert not out.exists()


def test_places205_missing_list_name_with_two_labels_and_label_gap(tmp_path):
    root = _places(tmp_path / "places", ["a/abbey/1.jpg 0", "a/abbey/2.jpg 3"], [])
    (root / PLACES_VAL).unlink()
    with pytest.raises(DatasetError) as err:
        prepare_places205(root, tmp_path / "out", check_images=False)
    assert err.value.problems == [
        f"{PLACES_VAL}: list file does not exist",
        f"class 'abbey' has several labels: 0 ({PLACES_TRAIN}:1), 3 ({PLACES_TRAIN}:2)",
        "labels must run 0..N-1: 2 labels are used, up to 3, but label 1 never is",
    ]


def test_places205_exclude_skips_missing_and_corrupt_images(tmp_path):
    root = _places(tmp_path / "places", PLACES_GOOD_TRAIN + ["a/abbey/00000404.jpg 0"], PLACES_GOOD_VAL)
    (root / PLACES_IMAGES / "a/abbey/00000404.jpg").unlink()
    _write(root / PLACES_IMAGES / "a/abbey/00000002.jpg", b"garbage")
    exclude = [f"{PLACES_IMAGES}/a/abbey/00000404.jpg", f"{PLACES_IMAGES}/a/abbey/00000002.jpg"]
    info = prepare_places205(root, tmp_path / "out", workers=1, exclude=exclude)
    assert info.splits == {"train": 4, "val": 3}
    assert info.classes == ["abbey", "bus_interior", "field/wild"]


def test_places205_list_lines_that_leave_the_root_are_refused_with_file_and_line(tmp_path):
    """`a/../../../outside/secret.jpg 2` would read (and list) a file outside the release."""
    outside = tmp_path / "outside" / "secret.jpg"
    _write(outside, _image_bytes())
    depth = len(Path(PLACES_IMAGES).parts) + 1
    hostile = [f"a/{'../' * depth}outside/secret.jpg 1", "a/./abbey/00000001.jpg 0"]
    root = _places(tmp_path / "places", PLACES_GOOD_TRAIN + hostile, PLACES_GOOD_VAL, make_images=False)
    for line in PLACES_GOOD_TRAIN + PLACES_GOOD_VAL:
        _write(root / PLACES_IMAGES / line.split()[0], _image_bytes())
    with pytest.raises(DatasetError) as err:
        prepare_places205(root, tmp_path / "out", workers=1)
    n = len(PLACES_GOOD_TRAIN)
    assert any(p.startswith(f"{PLACES_TRAIN}:{n + 1}: path 'a/../") and "leaves" in p for p in err.value.problems)
    assert any(p.startswith(f"{PLACES_TRAIN}:{n + 2}: path 'a/./abbey") for p in err.value.problems)
    assert not (tmp_path / "out").exists()


def test_a_manifest_path_that_leaves_the_root_is_refused_when_read(tmp_path):
    root = _imagenet(tmp_path / "imagenet")
    prepare_imagenet(root, tmp_path / "out", workers=1)
    csv_path = tmp_path / "out" / "train.csv"
    lines = csv_path.read_text().splitlines()
    lines[1] = "../../etc/passwd,0,10"
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"train.csv: path '../../etc/passwd' leaves the dataset root"):
        read_files_split(tmp_path / "out", "train")
