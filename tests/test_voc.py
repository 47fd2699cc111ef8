"""PASCAL VOC annotation XML, validation and manifest, on a tiny VOCdevkit built in tmp_path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from localagg.data.voc import (
    VOC_CLASSES,
    VocAnnotation,
    VocFormatError,
    VocObject,
    prepare_voc,
    read_annotation,
    read_voc_manifest,
    validate_voc_year,
    write_annotation,
)
from localagg.errors import DatasetError, UserError

W, H = 32, 24  # fixture image size (width, height)

# year -> split -> {id: [(class, xmin, ymin, xmax, ymax, difficult)]}
LAYOUT = {
    "VOC2007": {
        "trainval": {
            "000001": [("cat", 1, 1, 10, 10, False)],
            "000002": [("dog", 5, 5, 32, 24, True), ("cat", 2, 3, 4, 5, False)],
            "000003": [("person", 10, 2, 20, 20, False)],
        },
        "test": {
            "000004": [("dog", 3, 3, 3, 3, False)],  # one-pixel box: valid in VOC (inclusive)
            "000005": [("person", 1, 1, 32, 24, False), ("person", 4, 4, 9, 9, False)],
        },
    },
    "VOC2012": {
        "trainval": {"2012_000001": [("cat", 7, 7, 20, 15, False)]},
    },
}
TRAINVAL = (("VOC2007", "trainval"), ("VOC2012", "trainval"))
TEST = (("VOC2007", "test"),)


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("LOCALAGG_NO_PROGRESS", "1")


def _jpeg(seed: int, size=(W, H)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _devkit(root: Path) -> Path:
    for y, (year, splits) in enumerate(LAYOUT.items()):
        main = root / year / "ImageSets" / "Main"
        main.mkdir(parents=True)
        (root / year / "JPEGImages").mkdir()
        for split, images in splits.items():
            (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
            for k, (image_id, objs) in enumerate(images.items()):
                (root / year / "JPEGImages" / f"{image_id}.jpg").write_bytes(_jpeg(100 * y + k))
                objects = [VocObject(n, *box, difficult=d) for n, *box, d in objs]
                ann = VocAnnotation(f"{image_id}.jpg", W, H, 3, objects)
                write_annotation(ann, root / year / "Annotations" / f"{image_id}.xml")
    return root


def _set_xml(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# --------------------------------------------------------------------------- XML


def test_annotation_round_trip_is_exact(tmp_path):
    ann = VocAnnotation(
        filename="a&b <1>.jpg",
        width=500,
        height=375,
        depth=3,
        objects=[
            VocObject("dog", 48, 240, 195, 371),
            VocObject("person", 8, 12, 352, 498, difficult=True, truncated=True),
            VocObject("cat", 1, 1, 1, 1, truncated=True),
        ],
    )
    path = tmp_path / "VOC2012" / "Annotations" / "x.xml"
    write_annotation(ann, path)
    back = read_annotation(path)
    assert back == ann
    assert all(type(v) is int for o in back.objects for v in (o.xmin, o.ymin, o.xmax, o.ymax))
    first = path.read_bytes()
    assert b"<folder>VOC2012</folder>" in first
    for tag in (b"<pose>", b"<segmented>0</segmented>", b"<truncated>1</truncated>", b"<difficult>1</difficult>"):
        assert tag in first
    write_annotation(back, path)
    assert path.read_bytes() == first
    write_annotation(VocAnnotation("e.jpg", 10, 10, 1, []), path)
    assert read_annotation(path) == VocAnnotation("e.jpg", 10, 10, 1, [])


def test_read_annotation_reports_the_file_and_field(tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><filename>a.jpg</filename>")
    with pytest.raises(VocFormatError, match=r"broken\.xml: XML does not parse"):
        read_annotation(broken)

    path = tmp_path / "nobox.xml"
    write_annotation(VocAnnotation("a.jpg", 10, 10, 3, [VocObject("cat", 1, 1, 5, 5)]), path)
    _set_xml(path, "<xmax>5</xmax>", "")
    with pytest.raises(VocFormatError, match=r"nobox\.xml: object #1: missing or empty <bndbox/xmax>"):
        read_annotation(path)
    _set_xml(path, "<width>10</width>", "<width>ten</width>")
    with pytest.raises(UserError, match=r"<size/width> is 'ten', not a number"):
        read_annotation(path)
    with pytest.raises(VocFormatError, match="cannot be read"):
        read_annotation(tmp_path / "absent.xml")


# --------------------------------------------------------------------------- validation


def test_good_devkit_validates_and_manifest_counts(tmp_path):
    root = _devkit(tmp_path / "VOCdevkit")
    assert validate_voc_year(root / "VOC2007", ["trainval", "test"], VOC_CLASSES) == []
    assert validate_voc_year(root / "VOC2012", ["trainval"], VOC_CLASSES) == []

    out_dir = tmp_path / "out"
    out = out_dir / "detection.json"
    manifest = prepare_voc(root, out_dir, trainval=TRAINVAL, test=TEST, workers=1, name="voc_tiny")
    assert json.loads(out.read_text()) == manifest
    assert manifest["name"] == "voc_tiny"
    assert manifest["root"] is None  # the user's devkit: a run-time param, not written
    assert read_voc_manifest(out)["root"] == str(root.resolve())  # this process knows it
    assert manifest["classes"] == list(VOC_CLASSES)
    assert manifest["splits"] == {"trainval": [["VOC2007", "trainval"], ["VOC2012", "trainval"]], "test": [["VOC2007", "test"]]}
    tv, te = manifest["counts"]["trainval"], manifest["counts"]["test"]
    assert (tv["images"], tv["objects"], te["images"], te["objects"]) == (4, 5, 2, 3)
    assert set(tv["per_class"]) == set(VOC_CLASSES)
    assert {k: v for k, v in tv["per_class"].items() if v} == {"cat": 3, "dog": 1, "person": 1}
    assert {k: v for k, v in te["per_class"].items() if v} == {"dog": 1, "person": 2}
    assert out.read_text().endswith("\n")
    # normalised copies of exactly the listed annotations, with the split lists, for Detectron2
    assert manifest["annotations"] == "VOCdevkit"
    copies = out_dir / "VOCdevkit"
    assert (copies / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split() == \
        (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert read_annotation(copies / "VOC2012" / "Annotations" / "2012_000001.xml") == \
        read_annotation(root / "VOC2012" / "Annotations" / "2012_000001.xml")
    assert not (copies / "VOC2007" / "JPEGImages").exists()  # the images stay under the root

    # The manifest follows the annotations: a changed box changes it, equal data does not.
    again = prepare_voc(root, out_dir, trainval=TRAINVAL, test=TEST, workers=1, name="voc_tiny")
    assert again == manifest
    _set_xml(root / "VOC2007" / "Annotations" / "000001.xml", "<xmax>10</xmax>", "<xmax>11</xmax>")
    changed = prepare_voc(root, out_dir, trainval=TRAINVAL, test=TEST, workers=1, name="voc_tiny")
    assert changed["sha256"]["trainval"] != manifest["sha256"]["trainval"]
    assert changed["sha256"]["test"] == manifest["sha256"]["test"]


def test_every_problem_in_one_error_and_nothing_written(tmp_path):
    root = _devkit(tmp_path / "VOCdevkit")
    ann, jpg = root / "VOC2007" / "Annotations", root / "VOC2007" / "JPEGImages"
    (ann / "000001.xml").write_text("<annotation><filename>000001.jpg</filename>")  # broken XML
    _set_xml(ann / "000002.xml", "<xmax>32</xmax>", "<xmax>40</xmax>")  # box outside the 32 px width
    _set_xml(ann / "000003.xml", "<name>person</name>", "<name>unicorn</name>")  # unknown class
    (jpg / "000004.jpg").unlink()  # missing JPEG
    good = (jpg / "000005.jpg").read_bytes()
    (jpg / "000005.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG: header fine, data cut

    out = tmp_path / "out"
    with pytest.raises(DatasetError) as info:
        prepare_voc(root, out, trainval=TRAINVAL, test=TEST, workers=1)
    problems = info.value.problems
    assert len(problems) == 5, problems

    def one(fragment: str) -> str:
        hits = [p for p in problems if fragment in p]
        assert len(hits) == 1, (fragment, problems)
        return hits[0]

    assert "does not parse" in one("000001.xml")
    outside = one("000002.xml")
    assert "object #1 (dog)" in outside and "(5, 5, 40, 24)" in outside and "outside" in outside
    assert "'unicorn'" in one("000003.xml")
    assert "missing image" in one("000004.jpg")
    assert "does not decode" in one("000005.jpg")
    assert "check_images" in str(info.value)
    assert not out.exists()


def test_size_mismatch_empty_box_and_check_images_off(tmp_path):
    root = _devkit(tmp_path / "VOCdevkit")
    ann, jpg = root / "VOC2007" / "Annotations", root / "VOC2007" / "JPEGImages"
    (jpg / "000003.jpg").write_bytes(_jpeg(7, size=(40, 30)))  # XML says 32x24
    _set_xml(ann / "000001.xml", "<xmin>1</xmin>", "<xmin>11</xmin>")  # xmin 11 > xmax 10
    _set_xml(ann / "000002.xml", "<xmin>2</xmin>", "<xmin>0</xmin>")  # VOC is 1-based: 0 is outside
    good = (jpg / "000005.jpg").read_bytes()
    (jpg / "000005.jpg").write_bytes(good[: len(good) // 2])
    problems = validate_voc_year(root / "VOC2007", ["trainval", "test"], VOC_CLASSES, check_images=False)
    assert len(problems) == 3, problems
    assert any("000003.xml" in p and "32x24" in p and "40x30" in p for p in problems)
    assert any("000002.xml" in p and "object #2 (cat)" in p and "(0, 3, 4, 5)" in p for p in problems)
    assert any("000001.xml" in p and "object #1" in p and "empty" in p for p in problems)
    with_decode = validate_voc_year(root / "VOC2007", ["test"], VOC_CLASSES, check_images=True, workers=1)
    assert len(with_decode) == 1 and "000005.jpg" in with_decode[0]


def test_missing_parts_are_named(tmp_path):
    root = _devkit(tmp_path / "VOCdevkit")
    (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").unlink()
    (root / "VOC2007" / "Annotations" / "000002.xml").unlink()
    problems = validate_voc_year(root / "VOC2007", ["trainval", "test"], VOC_CLASSES)
    assert len(problems) == 2, problems
    assert any("test.txt" in p and "missing split file" in p for p in problems)
    assert any("000002.xml" in p and "missing annotation" in p for p in problems)
    assert "missing" in validate_voc_year(root / "VOC2099", ["trainval"], VOC_CLASSES)[0]

    with pytest.raises(DatasetError, match="VOC2099"):
        prepare_voc(root, tmp_path / "m", trainval=(("VOC2099", "trainval"),), test=(("VOC2012", "trainval"),))


def test_class_list_must_match_annotations(tmp_path):
    root = _devkit(tmp_path / "VOCdevkit")
    with pytest.raises(DatasetError) as info:
        prepare_voc(root, tmp_path / "m", trainval=TRAINVAL, test=TEST, classes=["cat", "dog"], workers=1)
    bad = info.value.problems
    assert len(bad) == 3 and all("'person'" in p and "(2 classes: cat, dog)" in p for p in bad)
    assert {Path(p.split(":")[0]).name for p in bad} == {"000003.xml", "000005.xml"}


def test_same_image_in_trainval_and_test_is_a_problem(tmp_path):
    root = _devkit(tmp_path / "VOCdevkit")
    (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("000004\n000001\n")
    with pytest.raises(DatasetError, match="both a trainval and a test split"):
        prepare_voc(root, tmp_path / "m", trainval=TRAINVAL, test=TEST, workers=1)


def test_missing_root_and_bad_arguments_are_user_errors(tmp_path):
    missing = tmp_path / "nowhere" / "VOCdevkit"
    with pytest.raises(UserError, match=r"nowhere.*VOCdevkit.*VOC2007.*VOC2012"):
        prepare_voc(missing, tmp_path / "m")
    root = _devkit(tmp_path / "VOCdevkit")
    with pytest.raises(UserError, match="pair"):
        prepare_voc(root, tmp_path / "m", trainval=("VOC2007",))
    with pytest.raises(UserError, match="both trainval and test"):
        prepare_voc(root, tmp_path / "m", trainval=TEST, test=TEST)
    assert not (tmp_path / "m").exists()


def test_image_ids_that_leave_the_devkit_are_refused_and_nothing_is_written_outside(tmp_path):
    """ids like ../../outside/evil and /abs/evil would read XML and images outside the root,
    and the normalised copies would be written outside the outputs."""
    root = _devkit(tmp_path / "VOCdevkit")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.xml").write_bytes((root / "VOC2007/Annotations" / f"{next(iter(LAYOUT['VOC2007']['trainval']))}.xml")
                                       .read_bytes())
    (outside / "evil.jpg").write_bytes(_jpeg(7))
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    listing = root / "VOC2007/ImageSets/Main/trainval.txt"
    n = len(listing.read_text().splitlines())
    listing.write_text(listing.read_text() + "../../../outside/evil\n" + f"{outside}/evil\n")
    with pytest.raises(DatasetError) as err:
        prepare_voc(root, tmp_path / "out", trainval=TRAINVAL, test=TEST, workers=1)
    said = "\n".join(err.value.problems)
    assert f"{listing}:{n + 1}: image id '../../../outside/evil' is not a plain file name" in said
    assert f"{listing}:{n + 2}: image id '{outside}/evil' is not a plain file name" in said
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before and not (tmp_path / "out").exists()
