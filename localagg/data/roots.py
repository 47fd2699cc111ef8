"""Where a prepared dataset's image files are: a run-time fact, kept out of every prepared output.

A kind-"files" manifest (ImageNet, Places205) and the VOC manifest name their images relative
to the user's dataset root, with each file's size. The root itself comes from params
(`prepare.<role>.root`) when a stage starts (`set_root`), so moving a dataset, e.g. onto a
node's local NVMe, and pointing the param at the new place changes no prepared output: `prepare`
reruns, writes the same bytes, and DVC reruns nothing after it. `check_sample` then tells a
moved copy from a different one before any compute is spent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError

_ROOTS: dict[Path, Path] = {}
SAMPLE = 256  # files whose size is checked at a stage's start (a stat each: well under a second on NFS)


def _key(prepared_dir: str | os.PathLike) -> Path:
    return Path(prepared_dir).resolve()


def set_root(prepared_dir: str | os.PathLike, root: str | os.PathLike) -> None:
    """The image root of the dataset prepared in `prepared_dir`, for this process."""
    _ROOTS[_key(prepared_dir)] = Path(root).resolve()


def root_of(prepared_dir: str | os.PathLike) -> Path | None:
    """The root set for `prepared_dir`, or None."""
    return _ROOTS.get(_key(prepared_dir))


def require_root(prepared_dir: str | os.PathLike) -> Path:
    root = root_of(prepared_dir)
    if root is None:
        raise UserError(f"{prepared_dir}: the folder its images are read from is not known. The stages take it from "
                        "params (prepare.object.root, prepare.transfer.root, prepare.detection.root); from Python, "
                        "call localagg.data.roots.set_root(prepared_dir, root) first.")
    return root


def check_sample(prepared_dir: str | os.PathLike, root: Path, paths: Sequence[str], sizes: np.ndarray,
                 count: int = SAMPLE) -> None:
    """UserError naming the first of an evenly spaced sample of `count` files (paths relative to
    `root`) that is missing or whose size differs from the manifest's: the root points at other
    data than `prepare` read."""
    if not len(paths):
        return
    for i in np.unique(np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(np.int64)):
        path = root / paths[i]
        try:
            found = path.stat().st_size
        except OSError:
            raise UserError(f"{path} does not exist, but the dataset prepared in {prepared_dir} lists it: the root "
                            f"{root} holds other files than `prepare` read. Point the root param at the same data, "
                            "or rerun `dvc repro prepare` for this data.") from None
        if found != int(sizes[i]):
            raise UserError(f"{path} is {found:,} bytes, but the dataset prepared in {prepared_dir} recorded "
                            f"{int(sizes[i]):,}: the data under {root} changed since `prepare`. Rerun "
                            "`dvc repro prepare` (and the stages after it).")
