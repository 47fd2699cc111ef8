"""The prepared-dataset format that `prepare` writes and every later stage reads.

A prepared classification dataset is one directory:

    dataset.json          {"name", "kind", "classes", "splits": {split: count}, "extra"}
    <split>.csv           kind "files": header "path,label,bytes"; path relative to the dataset
                          root, label an index into `classes`, bytes the file's size; rows
                          sorted by path
    <split>_images.npy    kind "arrays": uint8 pixels, (N, H, W) grey or (N, H, W, 3) RGB
    <split>_labels.npy    kind "arrays": int64 labels, (N,)

Big datasets (ImageNet, Places205) are "files": the manifest points into the user's root,
which is never copied and is not written here: it is a run-time param (`roots.py`), so the same
files at another place give the same prepared bytes. Small embedded sets are "arrays": the pixels are packed.
Every file is written deterministically (sorted rows, raw .npy, sorted JSON keys), so the
same inputs give byte-identical outputs, and atomically (the whole directory is renamed
into place).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..io import atomic_path, read_json, write_json
from .roots import root_of, set_root

KINDS = ("files", "arrays")
FILES_HEADER = ["path", "label", "bytes"]


@dataclass
class DatasetInfo:
    """The contents of `dataset.json`."""

    name: str
    kind: str  # "files" | "arrays"
    classes: list[str]
    splits: dict[str, int]
    extra: dict = field(default_factory=dict)
    root: Path | None = None  # kind "files": where its images are read from, set at run time (roots.py)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "classes": list(self.classes),
            "splits": dict(self.splits),
            "extra": self.extra,
        }


def write_files_dataset(
    out_dir: str | Path,
    name: str,
    root: str | Path,
    classes: Sequence[str],
    splits: dict[str, Sequence[tuple[str, int]]],
    extra: dict | None = None,
) -> DatasetInfo:
    """Write a kind-"files" dataset: one CSV of (path relative to `root`, label, size in bytes)
    per split. `root` itself is not written (it is a run-time param, roots.py)."""
    info = DatasetInfo(
        name=name,
        kind="files",
        classes=list(classes),
        splits={s: len(rows) for s, rows in splits.items()},
        extra=extra or {},
        root=Path(root).resolve(),
    )
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split, rows in splits.items():
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(FILES_HEADER)
            for path, label in sorted(rows):
                writer.writerow([path, int(label), os.stat(os.path.join(root, path)).st_size])
            (tmp / f"{split}.csv").write_text(buf.getvalue())
        write_json(tmp / "dataset.json", info.to_json())
    set_root(out_dir, root)  # this process knows where the files are; another takes it from params
    return info


def write_arrays_dataset(
    out_dir: str | Path,
    name: str,
    classes: Sequence[str],
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    extra: dict | None = None,
) -> DatasetInfo:
    """Write a kind-"arrays" dataset: packed uint8 images and int64 labels per split."""
    info = DatasetInfo(
        name=name,
        kind="arrays",
        classes=list(classes),
        splits={s: int(len(labels)) for s, (_, labels) in splits.items()},
        extra=extra or {},
    )
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split, (images, labels) in splits.items():
            images = np.ascontiguousarray(images, dtype=np.uint8)
            labels = np.ascontiguousarray(labels, dtype=np.int64)
            if images.shape[0] != labels.shape[0]:
                raise ValueError(f"split {split}: {images.shape[0]} images, {labels.shape[0]} labels")
            np.save(tmp / f"{split}_images.npy", images, allow_pickle=False)
            np.save(tmp / f"{split}_labels.npy", labels, allow_pickle=False)
        write_json(tmp / "dataset.json", info.to_json())
    return info


def dataset_digest(data_dir: str | Path) -> str:
    """sha256 (16 hex digits) of what a prepared dataset is: every file of its directory, by
    name and content (arrays: the pixels and labels; files: the manifests of paths, labels and
    sizes). Data changed under the same name and image count gets another digest."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(p for p in Path(data_dir).iterdir() if p.is_file()):
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:16]


def read_info(data_dir: str | Path) -> DatasetInfo:
    """Read `dataset.json` (a kind-"files" set with the root set for it in this process, if
    any); a missing or foreign directory is a UserError naming the stage."""
    path = Path(data_dir) / "dataset.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: run the `prepare` stage first (`dvc repro prepare`).")
    raw = read_json(path)
    if raw.get("kind") not in KINDS:
        raise UserError(f"{path}: unknown dataset kind {raw.get('kind')!r}; expected one of {KINDS}.")
    if "root" in raw:
        raise UserError(f"{path} was written by an older localagg (it records the dataset's root): rerun "
                        "`dvc repro prepare`.")
    info = DatasetInfo(**raw)
    info.root = root_of(data_dir) if info.kind == "files" else None
    return info


def read_files_split(data_dir: str | Path, split: str, sizes: bool = False):
    """Relative paths and int64 labels of one split of a kind-"files" dataset (and the files'
    int64 sizes in bytes with `sizes`)."""
    path = Path(data_dir) / f"{split}.csv"
    if not path.is_file():
        raise UserError(f"{path} does not exist: the prepared dataset has no split {split!r}.")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header != FILES_HEADER:
            raise UserError(f"{path}: expected header {','.join(FILES_HEADER)!r}, got {','.join(header)!r}; "
                            "rerun `dvc repro prepare`.")
        rows = list(reader)
    paths, labels = [r[0] for r in rows], np.asarray([int(r[1]) for r in rows], dtype=np.int64)
    outside = next((p for p in paths if p.startswith("/") or ".." in p.split("/")), None)
    if outside is not None:
        raise UserError(f"{path}: path {outside!r} leaves the dataset root; rerun `dvc repro prepare`.")
    if sizes:
        return paths, labels, np.asarray([int(r[2]) for r in rows], dtype=np.int64)
    return paths, labels


def read_arrays_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W[, 3]) uint8 and labels (N,) int64 of one split of a kind-"arrays" dataset."""
    d = Path(data_dir)
    img, lab = d / f"{split}_images.npy", d / f"{split}_labels.npy"
    for p in (img, lab):
        if not p.is_file():
            raise UserError(f"{p} does not exist: the prepared dataset has no split {split!r}.")
    return np.load(img, mmap_mode="r"), np.load(lab)
