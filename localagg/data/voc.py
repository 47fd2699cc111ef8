"""PASCAL VOC detection data in its standard layout: annotation XML, validation, manifest.

Layout read (the official VOCdevkit, or the embedded synthetic set written the same way)::

    VOCdevkit/
      VOC2007/
        Annotations/<id>.xml        one VOC XML per image (size, objects with bndbox)
        JPEGImages/<id>.jpg
        ImageSets/Main/<split>.txt  one image id per line (trainval.txt, test.txt, ...)
      VOC2012/
        ...

Boxes are VOC pixel indices: 1-based and inclusive, so a box lies in its image when
1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height (a box one pixel wide has
xmin == xmax). Detectron2's VOC loader subtracts 1 from xmin and ymin to get its
continuous [x0, x1) coordinates.

`prepare_voc` validates every listed (year, split) before anything is written, lists
every problem in one `DatasetError`, and writes into its output folder a small JSON
manifest and a normalised copy of every listed annotation (VOCdevkit/<year>/Annotations
and ImageSets/Main; the JPEGs stay under the user's root). Released VOC files hold forms
that the parser accepts but Detectron2's VOC evaluator does not (coordinates written as
"273.0", an empty `<truncated/>` or `<difficult/>`, a missing `<difficult>`, names with
trailing spaces); the copies are written by `annotation_to_xml` with integer coordinates,
0/1 flags and stripped names, and the detection stage trains and tests from them, so no
such file can fail after training has started.
"""

from __future__ import annotations

import hashlib
import json
import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import DatasetError, UserError
from ..io import write_json
from ..progress import track
from .image_check import find_undecodable, image_size
from .roots import require_root, set_root

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

DEFAULT_TRAINVAL: tuple[tuple[str, str], ...] = (("VOC2007", "trainval"), ("VOC2012", "trainval"))
DEFAULT_TEST: tuple[tuple[str, str], ...] = (("VOC2007", "test"),)

FIX_HINT = (
    "Fix or remove the bad files (and remove the ids of removed images from "
    "ImageSets/Main/<split>.txt), make the class list match the object names in the "
    "annotations, or set check_images: false to skip the JPEG decode check."
)


@dataclass
class VocObject:
    """One annotated object; box in 1-based inclusive VOC pixel coordinates."""

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    difficult: bool = False
    truncated: bool = False


@dataclass
class VocAnnotation:
    """The content of one Annotations/<id>.xml that the pipeline uses."""

    filename: str
    width: int
    height: int
    depth: int
    objects: list[VocObject] = field(default_factory=list)


class VocFormatError(UserError):
    """An annotation file that cannot be read, does not parse or lacks a required field."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------- XML


def annotation_to_xml(ann: VocAnnotation, folder: str = "VOC2007") -> bytes:
    """The VOC XML of `ann`: tab-indented, no declaration, trailing newline; deterministic."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = ann.filename
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(int(ann.width))
    ET.SubElement(size, "height").text = str(int(ann.height))
    ET.SubElement(size, "depth").text = str(int(ann.depth))
    ET.SubElement(root, "segmented").text = "0"
    for obj in ann.objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(bool(obj.truncated)))
        ET.SubElement(node, "difficult").text = str(int(bool(obj.difficult)))
        box = ET.SubElement(node, "bndbox")
        for key in ("xmin", "ymin", "xmax", "ymax"):
            ET.SubElement(box, key).text = str(int(getattr(obj, key)))
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def write_annotation(ann: VocAnnotation, path: str | os.PathLike, folder: str | None = None) -> None:
    """Write `ann` as VOC XML to `path` (deterministic bytes).

    `folder` is the <folder> text; by default the year folder's name when `path` is
    <year>/Annotations/<id>.xml, else "VOC2007". The file is written directly; callers
    that need atomicity build the whole tree under `io.atomic_path`.
    """
    path = Path(path)
    if folder is None:
        folder = path.parent.parent.name if path.parent.name == "Annotations" and path.parent.parent.name else "VOC2007"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(annotation_to_xml(ann, folder))


def read_annotation(path: str | os.PathLike) -> VocAnnotation:
    """Parse a VOC annotation XML; raise `VocFormatError` naming the file and what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VocFormatError(path, f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})") from None
    return parse_annotation(data, path)


def parse_annotation(data: bytes, path: str | os.PathLike = "<annotation>") -> VocAnnotation:
    """Parse the bytes of a VOC annotation XML; `path` only names it in errors."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise VocFormatError(path, f"XML does not parse ({exc})") from None
    if root.tag != "annotation":
        raise VocFormatError(path, f"root element is <{root.tag}>, expected <annotation>")
    filename = _text(root, "filename", path)
    size = root.find("size")
    if size is None:
        raise VocFormatError(path, "missing <size>")
    width = _int(size, "width", path, parent="size/")
    height = _int(size, "height", path, parent="size/")
    depth = _int(size, "depth", path, parent="size/") if size.find("depth") is not None else 3
    objects = []
    for i, node in enumerate(root.findall("object"), start=1):
        where = f"object #{i}: "
        name = _text(node, "name", path, where)
        box = node.find("bndbox")
        if box is None:
            raise VocFormatError(path, f"{where}missing <bndbox>")
        coords = [_int(box, key, path, where, "bndbox/") for key in ("xmin", "ymin", "xmax", "ymax")]
        difficult = _flag(node, "difficult", path, where)
        truncated = _flag(node, "truncated", path, where)
        objects.append(VocObject(name, *coords, difficult=difficult, truncated=truncated))
    return VocAnnotation(filename=filename, width=width, height=height, depth=depth, objects=objects)


def _text(node: ET.Element, tag: str, path, where: str = "", parent: str = "") -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise VocFormatError(path, f"{where}missing or empty <{parent}{tag}>")
    return child.text.strip()


def _int(node: ET.Element, tag: str, path, where: str = "", parent: str = "") -> int:
    text = _text(node, tag, path, where, parent)
    try:
        return int(text)
    except ValueError:
        pass
    try:  # a few released VOC files write coordinates as "273.0"; Detectron2 reads floats
        value = float(text)
    except ValueError:
        raise VocFormatError(path, f"{where}<{parent}{tag}> is {text!r}, not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise VocFormatError(path, f"{where}<{parent}{tag}> is {text!r}, not a finite number")
    return int(round(value))


def _flag(node: ET.Element, tag: str, path, where: str) -> bool:
    """Optional 0/1 field (absent in a few VOC2012 files): absent means 0."""
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return False
    text = child.text.strip()
    if text not in ("0", "1"):
        raise VocFormatError(path, f"{where}<{tag}> is {text!r}, expected 0 or 1")
    return text == "1"


# --------------------------------------------------------------------------- validation


def validate_voc_year(
    year_dir: str | os.PathLike,
    splits: Sequence[str],
    classes: Sequence[str],
    check_images: bool = True,
    workers: int = 0,
) -> list[str]:
    """Every problem of a VOC year folder (e.g. VOCdevkit/VOC2007) as "path: reason" strings.

    Checks the folders and ImageSets/Main/<split>.txt of each split in `splits`; for each
    listed id that its XML and JPEG exist, the XML parses, every object class is in
    `classes`, every box lies inside its image and is not empty, the XML size matches the
    JPEG's header; and, if `check_images`, that every JPEG decodes (`workers` processes,
    0: all cores). An empty list means the year folder is usable.
    """
    problems, _, _ = _scan_year(Path(year_dir), list(splits), list(classes), check_images, workers)
    return problems


def plain_name(name: str) -> bool:
    """A file name that stays in its folder: no separator, not '.' or '..', not absolute."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") and "\0" not in name


def _scan_year(
    year_dir: Path,
    splits: list[str],
    classes: list[str],
    check_images: bool,
    workers: int,
) -> tuple[list[str], dict[str, list[str]], dict[str, tuple[VocAnnotation, str]]]:
    """(problems, ids per split, {id: (annotation, sha256 of its XML)} for the ids that parsed)."""
    if not year_dir.is_dir():
        return [f"{year_dir}: missing; expected a VOC year folder with Annotations/, JPEGImages/ and ImageSets/Main/"], {}, {}
    problems: list[str] = []
    ann_dir, jpg_dir, sets_dir = year_dir / "Annotations", year_dir / "JPEGImages", year_dir / "ImageSets" / "Main"
    for folder in (ann_dir, jpg_dir, sets_dir):
        if not folder.is_dir():
            problems.append(f"{folder}: missing folder")
    ids_by_split: dict[str, list[str]] = {}
    for split in splits:
        list_path = sets_dir / f"{split}.txt"
        if not list_path.is_file():
            problems.append(f"{list_path}: missing split file (one image id per line)")
            continue
        ids = []
        for lineno, line in enumerate(list_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            image_id = line.split()[0]
            if not plain_name(image_id):
                problems.append(f"{list_path}:{lineno}: image id {image_id!r} is not a plain file name (no '/', "
                                "'\\', '..' or absolute path): every image and annotation must lie inside the root")
                continue
            ids.append(image_id)
        if not ids and not any(p.startswith(f"{list_path}:") for p in problems):
            problems.append(f"{list_path}: lists no image ids")
        dups = sorted(i for i, n in Counter(ids).items() if n > 1)
        if dups:
            problems.append(f"{list_path}: {len(dups)} id(s) listed more than once, e.g. {', '.join(dups[:5])}")
        ids_by_split[split] = list(dict.fromkeys(ids))

    all_ids = list(dict.fromkeys(i for ids in ids_by_split.values() for i in ids))
    known = set(classes)
    parsed: dict[str, tuple[VocAnnotation, str]] = {}
    jpgs: list[Path] = []
    for image_id in track(all_ids, f"reading {year_dir.name} annotations", total=len(all_ids)):
        xml_path, jpg_path = ann_dir / f"{image_id}.xml", jpg_dir / f"{image_id}.jpg"
        jpg_ok = jpg_path.is_file()
        if jpg_ok:
            jpgs.append(jpg_path)
        else:
            problems.append(f"{jpg_path}: missing image for listed id {image_id}")
        if not xml_path.is_file():
            problems.append(f"{xml_path}: missing annotation for listed id {image_id}")
            continue
        try:
            data = xml_path.read_bytes()
            ann = parse_annotation(data, xml_path)
        except OSError as exc:
            problems.append(f"{xml_path}: cannot be read ({type(exc).__name__})")
            continue
        except VocFormatError as exc:
            problems.append(str(exc))
            continue
        parsed[image_id] = (ann, hashlib.sha256(data).hexdigest())
        problems += _check_annotation(ann, xml_path, known, classes)
        if jpg_ok and ann.width >= 1 and ann.height >= 1:
            try:
                real = image_size(jpg_path)
            except Exception as exc:  # PIL raises many types for unreadable headers
                if not check_images:  # otherwise the decode check below reports it
                    problems.append(f"{jpg_path}: image header cannot be read ({type(exc).__name__})")
                continue
            if real != (ann.width, ann.height):
                problems.append(
                    f"{xml_path}: size {ann.width}x{ann.height} (width x height) does not match "
                    f"the image {jpg_path.name}, which is {real[0]}x{real[1]}"
                )
    if check_images and jpgs:
        problems += find_undecodable(jpgs, workers=workers, desc=f"checking {year_dir.name} images")
    return problems, ids_by_split, parsed


def _check_annotation(ann: VocAnnotation, xml_path: Path, known: set[str], classes: list[str]) -> list[str]:
    problems = []
    n_classes = len(classes)
    if ann.width < 1 or ann.height < 1:
        problems.append(f"{xml_path}: image size {ann.width}x{ann.height} is empty")
    for i, obj in enumerate(ann.objects, start=1):
        if obj.name not in known:
            problems.append(
                f"{xml_path}: object #{i} has class {obj.name!r}, which is not in the class list "
                f"({n_classes} classes: {', '.join(classes[:25])}{', ...' if n_classes > 25 else ''})"
            )
        box = (obj.xmin, obj.ymin, obj.xmax, obj.ymax)
        if obj.xmin > obj.xmax or obj.ymin > obj.ymax:
            problems.append(f"{xml_path}: object #{i} ({obj.name}) box (xmin, ymin, xmax, ymax) = {box} is empty")
        elif obj.xmin < 1 or obj.ymin < 1 or obj.xmax > ann.width or obj.ymax > ann.height:
            problems.append(
                f"{xml_path}: object #{i} ({obj.name}) box (xmin, ymin, xmax, ymax) = {box} is outside "
                f"the {ann.width}x{ann.height} image (VOC boxes are 1-based: 1..width, 1..height)"
            )
    return problems


# --------------------------------------------------------------------------- manifest


MANIFEST = "detection.json"
ANNOTATIONS = "VOCdevkit"  # the normalised annotation copies, beside the manifest


def read_voc_manifest(path: str | os.PathLike) -> dict:
    """A manifest written by `prepare_voc`, with its image root and annotation folder made
    absolute (relative ones are relative to the manifest's folder); a missing file is a
    `UserError` naming the stage."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: run the `prepare` stage first (`dvc repro prepare`).")
    manifest = json.loads(path.read_text())
    if "annotations" not in manifest:
        raise UserError(f"{path} was written by an older localagg (no normalised annotations): rerun `dvc repro prepare`.")
    if manifest["root"] is None:  # the user's VOCdevkit: a run-time param (roots.py)
        manifest["root"] = str(require_root(path.parent))
    for key in ("root", "annotations"):
        manifest[key] = str((path.parent / manifest[key]).resolve())
    return manifest


def prepare_voc(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    trainval: Iterable[Sequence[str]] = DEFAULT_TRAINVAL,
    test: Iterable[Sequence[str]] = DEFAULT_TEST,
    classes: Sequence[str] = VOC_CLASSES,
    check_images: bool = True,
    workers: int = 0,
    name: str = "voc",
) -> dict:
    """Validate the VOCdevkit at `root`, write `out_dir`/detection.json (the manifest) and the
    normalised annotations under `out_dir`/VOCdevkit; return the manifest.

    `trainval` and `test` list (year, split) pairs, e.g. (("VOC2007", "trainval"),). The
    manifest holds name, the image root (absolute; relative when `root` is inside
    `out_dir`), the annotation folder (relative to `out_dir`), classes, the pairs of each
    set, counts (images, objects, objects per class) and a sha256 per set over its split
    lists and annotation files, so that it changes whenever the annotations do. Raises
    `UserError` if `root` is missing or the arguments are wrong, and one `DatasetError`
    listing every problem found; nothing is written then. `out_dir` may be `root` itself
    (the synthetic set): the copies then replace annotations that were already normalised.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"VOC root {root} does not exist; expected a VOCdevkit folder with VOC2007/ and VOC2012/ "
            "under it, each holding Annotations/, JPEGImages/ and ImageSets/Main/."
        )
    sets = {"trainval": _pairs(trainval, "trainval"), "test": _pairs(test, "test")}
    classes = list(classes)
    if not classes:
        raise UserError("the VOC class list is empty; give the class names in label order.")
    dup_classes = sorted({c for c in classes if classes.count(c) > 1})
    if dup_classes:
        raise UserError(f"the VOC class list names {', '.join(dup_classes)} more than once.")
    both = [p for p in sets["trainval"] if p in sets["test"]]
    if both:
        raise UserError(f"(year, split) {', '.join(map(str, both))} is listed in both trainval and test.")

    by_year: dict[str, list[str]] = {}
    for year, split in sets["trainval"] + sets["test"]:
        by_year.setdefault(year, [])
        if split not in by_year[year]:
            by_year[year].append(split)
    problems: list[str] = []
    ids: dict[tuple[str, str], list[str]] = {}
    parsed: dict[str, dict[str, tuple[VocAnnotation, str]]] = {}
    for year, splits in by_year.items():
        found, year_ids, year_parsed = _scan_year(root / year, splits, classes, check_images, workers)
        problems += found
        parsed[year] = year_parsed
        ids.update({(year, s): v for s, v in year_ids.items()})
        train_ids = {i for s in splits if (year, s) in sets["trainval"] for i in year_ids.get(s, ())}
        test_ids = {i for s in splits if (year, s) in sets["test"] for i in year_ids.get(s, ())}
        leak = sorted(train_ids & test_ids)
        if leak:
            problems.append(
                f"{root / year / 'ImageSets' / 'Main'}: {len(leak)} image id(s) are in both a trainval and a "
                f"test split, e.g. {', '.join(leak[:5])}"
            )
    if problems:
        raise DatasetError(f"PASCAL VOC at {root}", problems, FIX_HINT)

    counts: dict[str, dict] = {}
    digests: dict[str, str] = {}
    for set_name, pairs in sets.items():
        per_class = {c: 0 for c in classes}
        n_images = n_objects = 0
        h = hashlib.sha256()
        for year, split in pairs:
            for image_id in ids[(year, split)]:
                ann, xml_hash = parsed[year][image_id]
                n_images += 1
                n_objects += len(ann.objects)
                for obj in ann.objects:
                    per_class[obj.name] += 1
                h.update(f"{year}/{split}/{image_id}:{xml_hash}\n".encode())
        counts[set_name] = {"images": n_images, "objects": n_objects, "per_class": per_class}
        digests[set_name] = h.hexdigest()
    out_dir = Path(out_dir)
    for year, splits in by_year.items():
        write_normalized(out_dir / ANNOTATIONS / year, {s: ids[(year, s)] for s in splits}, parsed[year])
    root_abs, out_abs = root.resolve(), out_dir.resolve()
    manifest = {
        "name": name,
        # images built beside the manifest are named relative to it; the user's VOCdevkit is not
        # written (a run-time param, roots.py), so moving it changes no prepared byte
        "root": str(root_abs.relative_to(out_abs)) if root_abs.is_relative_to(out_abs) else None,
        "annotations": ANNOTATIONS,
        "classes": classes,
        "splits": {k: [list(p) for p in v] for k, v in sets.items()},
        "counts": counts,
        "sha256": digests,
    }
    write_json(out_dir / MANIFEST, manifest)
    if manifest["root"] is None:
        set_root(out_dir, root_abs)
    return manifest


def write_normalized(year_dir: Path, ids_by_split: dict[str, list[str]],
                     parsed: dict[str, tuple[VocAnnotation, str]]) -> None:
    """Annotations/<id>.xml (as `annotation_to_xml` writes them) and ImageSets/Main/<split>.txt
    of the listed ids under `year_dir`: what Detectron2's loader and VOC evaluator read."""
    (year_dir / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (year_dir / "Annotations").mkdir(parents=True, exist_ok=True)
    for split, ids in ids_by_split.items():
        (year_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            write_annotation(parsed[image_id][0], year_dir / "Annotations" / f"{image_id}.xml", folder=year_dir.name)


def _pairs(pairs: Iterable[Sequence[str]], what: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for pair in pairs:
        if isinstance(pair, str) or len(pair) != 2 or not all(isinstance(x, str) and x for x in pair):
            raise UserError(f"{what}: {pair!r} is not a (year, split) pair such as ('VOC2007', '{what}').")
        if tuple(pair) not in out:
            out.append((pair[0], pair[1]))
    if not out:
        raise UserError(f"{what}: no (year, split) pairs given, e.g. [['VOC2007', '{what}']].")
    return out
