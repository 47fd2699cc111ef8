"""Manifests of the user's ImageNet and Places205, read in their standard layouts.

Accepted layouts (paths relative to the root the user gives; the images are never copied):

ImageNet ILSVRC2012, the class-folder layout torchvision's ImageFolder expects::

    train/<wnid>/<image>    e.g. train/n01440764/n01440764_10026.JPEG
    val/<wnid>/<image>      the validation images sorted into the class folders of train/

  Classes are the sorted folder names of train/. Images are files ending in .jpeg, .jpg or
  .png in any case; other files are ignored.

Places205, the official release::

    trainvalsplit_places205/train_places205.csv   lines "<letter>/<class>/<file> <label>",
    trainvalsplit_places205/val_places205.csv     e.g. "a/abbey/00000001.jpg 0"
    data/vision/torralba/deeplearning/images256/<letter>/<class>/<file>

  A class name is the path between the letter folder and the file ("a/abbey/x.jpg" ->
  "abbey", "f/field/wild/x.jpg" -> "field/wild"); classes are ordered by label, which must
  run 0..N-1 with one name per label. List and image locations can be changed.

Both write a kind-"files" dataset (`manifest.write_files_dataset`) with splits "train" and
"val" and paths relative to the root. Everything is validated before anything is written,
and every problem found is listed in one `DatasetError`.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Iterable

from ..errors import DatasetError, UserError
from ..progress import track
from .image_check import find_undecodable
from .manifest import DatasetInfo, write_files_dataset

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")
SKIP_HINT = (
    "Fix or remove the bad files, or list their paths (relative to the root, as above, one per "
    "line) in a file given as the `exclude` param to skip them; set check_images: false to skip "
    "the decode check."
)


def prepare_imagenet(
    root: str | Path,
    out_dir: str | Path,
    check_images: bool = True,
    workers: int = 0,
    exclude: Iterable[str] = (),
) -> DatasetInfo:
    """Validate an ILSVRC2012 class-folder tree at `root` and write its manifest to `out_dir`.

    `exclude` holds image paths relative to `root` ("train/n01440764/x.JPEG") to leave out.
    `check_images` decodes every image with `workers` processes (0: all cores). Raises
    `UserError` if `root` is missing and `DatasetError` listing every problem found;
    nothing is written then.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"ImageNet root {root} does not exist; expected train/ and val/ class folders under it.")
    skip = _normalized(exclude)
    problems: list[str] = []
    folders = {split: _scan_class_folders(root, split, problems) for split in SPLITS}
    classes = sorted(folders["train"] or ())
    index = {cls: i for i, cls in enumerate(classes)}
    rows: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    to_check: list[str] = []
    for split in SPLITS:
        for cls, names in (folders[split] or {}).items():
            paths = [p for p in (f"{split}/{cls}/{n}" for n in names) if p not in skip]
            to_check += paths
            if not paths:
                problems.append(f"{split}/{cls}/: no images (files ending in {', '.join(IMAGE_SUFFIXES)}, any case)")
            if cls in index:
                rows[split] += [(p, index[cls]) for p in paths]
            elif folders["train"] is not None:
                problems.append(f"{split}/{cls}/: class {cls} has no folder in train/")
    if check_images:
        problems += _undecodable(root, to_check, workers)
    if problems:
        raise DatasetError(
            f"ImageNet at {root}",
            problems,
            "train/ and val/ must each hold one folder per class, val/ using the class names of train/. " + SKIP_HINT,
        )
    return write_files_dataset(out_dir, "imagenet", root, classes, rows)


def prepare_places205(
    root: str | Path,
    out_dir: str | Path,
    train_list: str = "trainvalsplit_places205/train_places205.csv",
    val_list: str = "trainvalsplit_places205/val_places205.csv",
    images_dir: str = "data/vision/torralba/deeplearning/images256",
    check_images: bool = True,
    workers: int = 0,
    exclude: Iterable[str] = (),
) -> DatasetInfo:
    """Validate a Places205 release at `root` and write its manifest to `out_dir`.

    `train_list`, `val_list` and `images_dir` are relative to `root`; list entries are
    relative to `images_dir`. `exclude` holds image paths relative to `root` (images_dir
    joined with the list entry) to leave out. `check_images` decodes every image with
    `workers` processes (0: all cores). Raises `UserError` if `root` is missing and
    `DatasetError` listing every problem found; nothing is written then.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"Places205 root {root} does not exist; expected {train_list}, {val_list} and {images_dir}/ under it."
        )
    skip = _normalized(exclude)
    problems: list[str] = []
    if not (root / images_dir).is_dir():
        problems.append(f"{images_dir}/: image folder does not exist")
    names_by_label: dict[int, dict[str, str]] = {}  # label -> {class name: where first seen}
    rows: dict[str, list[tuple[str, int]]] = {}
    to_check: list[str] = []
    for split, list_file in zip(SPLITS, (train_list, val_list)):
        entries = _read_list(root, list_file, images_dir, names_by_label, problems)
        rows[split] = [(p, label) for p, label in entries if p not in skip]
        paths = [p for p, _ in rows[split]]
        missing = set(_missing(root, paths))
        problems += [f"{p}: listed in {list_file} but does not exist" for p in sorted(missing)]
        to_check += [p for p in paths if p not in missing]
    classes = _class_names(names_by_label, problems)
    if check_images:
        problems += _undecodable(root, to_check, workers)
    if problems:
        raise DatasetError(
            f"Places205 at {root}",
            problems,
            f"Each list line is '<letter>/<class>/<file> <label>', a path under {images_dir}/ and one "
            "class per label. " + SKIP_HINT,
        )
    return write_files_dataset(out_dir, "places205", root, classes, rows)


def _normalized(paths: Iterable[str]) -> set[str]:
    return {posixpath.normpath(p) for p in paths}


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _scan_class_folders(root: Path, split: str, problems: list[str]) -> dict[str, list[str]] | None:
    """Sorted image names per class folder of `root/split`; None if the folder is missing."""
    split_dir = root / split
    if not split_dir.is_dir():
        problems.append(f"{split}/: folder does not exist; expected one folder per class, e.g. {split}/n01440764/")
        return None
    with os.scandir(split_dir) as it:
        entries = sorted(it, key=lambda e: e.name)
    loose = sum(1 for e in entries if e.is_file() and _is_image(e.name))
    if loose:
        problems.append(f"{split}/: {loose} image(s) lie directly in {split}/; sort them into one folder per class")
    class_dirs = [e.name for e in entries if e.is_dir()]
    folders = {}
    for cls in track(class_dirs, f"scanning ImageNet {split}", total=len(class_dirs)):
        with os.scandir(split_dir / cls) as it:
            folders[cls] = sorted(e.name for e in it if e.is_file() and _is_image(e.name))
    return folders


def _read_list(
    root: Path, list_file: str, images_dir: str, names_by_label: dict[int, dict[str, str]], problems: list[str]
) -> list[tuple[str, int]]:
    """(path relative to root, label) per line of a Places205 list; records class names per label."""
    path = root / list_file
    if not path.is_file():
        problems.append(f"{list_file}: list file does not exist")
        return []
    entries = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(track(f, f"reading {list_file}"), 1):
            fields = line.split()
            if not fields:
                continue
            parts = fields[0].split("/")
            label_ok = len(fields) == 2 and fields[1].isascii() and fields[1].isdigit()
            if not label_ok or len(parts) < 3 or not all(parts):
                problems.append(
                    f"{list_file}:{lineno}: malformed line {line.rstrip()!r}; "
                    "expected '<letter>/<class>/<file> <label>'"
                )
                continue
            if fields[0].startswith("/") or ".." in parts or "." in parts or "\\" in fields[0]:
                problems.append(f"{list_file}:{lineno}: path {fields[0]!r} leaves {images_dir}/ ('..', '.' or an "
                                "absolute path): every listed image must lie inside the root")
                continue
            label = int(fields[1])
            names = names_by_label.setdefault(label, {})
            name = "/".join(parts[1:-1])
            if name not in names:
                names[name] = f"{list_file}:{lineno}"
            entries.append((posixpath.normpath(posixpath.join(images_dir, fields[0])), label))
    return entries


def _class_names(names_by_label: dict[int, dict[str, str]], problems: list[str]) -> list[str]:
    """Class names indexed by label; a label with two names, a name with two labels or a gap is a problem."""
    labels_by_name: dict[str, dict[int, str]] = {}
    for label, names in sorted(names_by_label.items()):
        if len(names) > 1:
            seen = ", ".join(f"{n!r} ({where})" for n, where in sorted(names.items()))
            problems.append(f"label {label} names several classes: {seen}")
        for name, where in names.items():
            labels_by_name.setdefault(name, {})[label] = where
    for name, labels in sorted(labels_by_name.items()):
        if len(labels) > 1:
            seen = ", ".join(f"{label} ({where})" for label, where in sorted(labels.items()))
            problems.append(f"class {name!r} has several labels: {seen}")
    labels = sorted(names_by_label)
    gap = next((i for i, label in enumerate(labels) if i != label), None)
    if gap is not None:
        problems.append(
            f"labels must run 0..N-1: {len(labels)} labels are used, up to {labels[-1]}, but label {gap} never is"
        )
    return [min(names_by_label[label]) for label in labels]


def _missing(root: Path, paths: list[str]) -> list[str]:
    """The `paths` (relative to `root`) that are not files, listing each folder once."""
    listings: dict[str, set[str]] = {}
    missing = []
    for path in track(paths, "finding listed images", total=len(paths)):
        folder, name = posixpath.split(path)
        if folder not in listings:
            try:
                with os.scandir(os.path.join(root, folder)) as it:
                    listings[folder] = {e.name for e in it if e.is_file()}
            except OSError:
                listings[folder] = set()
        if name not in listings[folder]:
            missing.append(path)
    return missing


def _undecodable(root: Path, paths: list[str], workers: int) -> list[str]:
    """One "path: reason" (path relative to `root`) for each of `paths` that does not decode."""
    prefix = len(os.path.join(root, ""))
    bad = find_undecodable([os.path.join(root, p) for p in paths], workers=workers)
    return [b[prefix:] for b in bad]
