"""The dataset roots of params, set for this stage's process (localagg/data/roots.py).

No stage after `prepare` lists `prepare.*.root` among its DVC params: the prepared manifests
name files relative to the root, with their sizes, so a dataset moved elsewhere (and its root
param changed) reruns `prepare`, which writes the same bytes, and nothing after it. Each stage
checks at its start that the root it is given holds the files `prepare` listed.
"""

from __future__ import annotations

from pathlib import Path

from localagg.data import roots
from localagg.data.manifest import read_files_split, read_info

from .params import load_section, read_params_file

OBJECT_DIR, TRANSFER_DIR, DETECTION_DIR = (Path("data/prepared") / n for n in ("object", "transfer", "detection"))


def use_dataset_roots(params: Path, check: tuple[Path, ...] = ()) -> None:
    """Set the roots of the real datasets named in `params`; then check a sample of the files of
    the prepared datasets in `check` against the root (UserError naming a missing or changed file)."""
    if "prepare" not in read_params_file(params):
        return  # a params file of later stages only: datasets from arrays, nothing to find
    p = load_section(params, "prepare")
    if p.object.source == "imagenet":
        roots.set_root(OBJECT_DIR, p.object.root)
    if p.transfer.source == "places205":
        roots.set_root(TRANSFER_DIR, p.transfer.root)
    if p.detection.source == "voc":
        roots.set_root(DETECTION_DIR, p.detection.root)
    for data_dir in check:
        info = read_info(data_dir)
        if info.kind != "files":
            continue
        for split in info.splits:
            paths, _, sizes = read_files_split(data_dir, split, sizes=True)
            roots.check_sample(data_dir, roots.require_root(data_dir), paths, sizes)
