"""VOC data for Detectron2: registration from a prepared manifest, and a training stream that
is a function of the iteration number.

Registration. Each (year, split) of a `voc.prepare_voc` manifest becomes a Detectron2 dataset
"<prefix>_<year>_<split>" whose dicts are read from the normalised annotation copies
(manifest["annotations"]/<year>/Annotations) with images under the user's root
(manifest["root"]/<year>/JPEGImages), as Detectron2's own `load_voc_instances` builds them
(difficult objects included, boxes (xmin - 1, ymin - 1, xmax, ymax) in absolute XYXY). Its
metadata points the VOC evaluator at the normalised copies, which it can always parse.

Training stream. Batch i of a run is a function of (seed, i) only, never of what ran before:

    epoch e order = a permutation of the training images drawn from (seed, e)
    batches       = that order cut into global batches of `ims_per_batch` images of one
                    orientation (landscape or portrait, as Detectron2's aspect-ratio
                    grouping), leftovers of an epoch dropped
    image j of batch i is mapped (resize, flip: Detectron2's DatasetMapper) with numpy's
                    global generator seeded from (seed, i, j)

Rank r of W takes images r*b .. (r+1)*b - 1 of each global batch (b = ims_per_batch / W). So a
run resumed at iteration i sees exactly the batches an uninterrupted run sees, whatever the
number of loader workers, which with the checkpointed model, optimizer and scheduler and the
per-iteration seeding of the model's own sampling (train.py) makes a resumed run on the CPU
end bit for bit where an uninterrupted one ends.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..data.voc import read_annotation
from ..errors import UserError


def step_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed from `seed` and integer keys (iteration, image, rank)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


# --------------------------------------------------------------------------- registration


def year_number(year: str) -> int:
    match = re.fullmatch(r"VOC(\d{4})", str(year))
    if match is None:
        raise UserError(f"VOC year folder {year!r} is not named VOC<year> (e.g. VOC2007).")
    return int(match[1])


def split_ids(annotations: Path, year: str, split: str) -> list[str]:
    """The image ids of a normalised split list; a missing list is a UserError naming `prepare`."""
    path = annotations / year / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"{path} does not exist: the prepared detection set does not hold {year}/{split}; "
                        "rerun `dvc repro prepare`.")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def voc_dicts(manifest: dict, year: str, split: str) -> list[dict]:
    """Detectron2 dataset dicts of one (year, split), from the normalised annotations."""
    root, annotations = Path(manifest["root"]), Path(manifest["annotations"])
    index = {name: i for i, name in enumerate(manifest["classes"])}
    dicts = []
    for image_id in split_ids(annotations, year, split):
        ann = read_annotation(annotations / year / "Annotations" / f"{image_id}.xml")
        dicts.append({
            "file_name": str(root / year / "JPEGImages" / f"{image_id}.jpg"),
            "image_id": image_id,
            "height": ann.height,
            "width": ann.width,
            "annotations": [{"category_id": index[o.name],
                             "bbox": [o.xmin - 1.0, o.ymin - 1.0, float(o.xmax), float(o.ymax)],
                             "bbox_mode": BoxMode.XYXY_ABS} for o in ann.objects],
        })
    return dicts


def check_classes(manifest: dict, year: str, split: str) -> None:
    """Every object of the split has a class of the manifest (UserError listing those that do not)."""
    annotations, known = Path(manifest["annotations"]), set(manifest["classes"])
    unknown: Counter[str] = Counter()
    example: dict[str, Path] = {}
    for image_id in split_ids(annotations, year, split):
        xml = annotations / year / "Annotations" / f"{image_id}.xml"
        for obj in read_annotation(xml).objects:
            if obj.name not in known:
                unknown[obj.name] += 1
                example.setdefault(obj.name, xml)
    if unknown:
        listed = "; ".join(f"{n!r} ({c} object(s), e.g. {example[n]})" for n, c in sorted(unknown.items()))
        raise UserError(f"{year}/{split}: annotations name classes that are not in the class list "
                        f"({', '.join(manifest['classes'])}): {listed}. Rerun `dvc repro prepare`.")


def register_voc_manifest(manifest: dict, name_prefix: str) -> tuple[list[str], list[str]]:
    """Register each (year, split) of a prepared manifest with Detectron2 (names
    "{name_prefix}_{year}_{split}"); returns (train names, test names).

    `manifest` comes from `voc.read_voc_manifest` (absolute root and annotations). Checks,
    before registering anything, that every split list exists, every class is known and the
    test years are ones the VOC evaluator knows (2007: 11-point AP, 2012: area). A name
    already registered with the same metadata is kept; with other metadata it is an error.
    """
    if not Path(manifest["root"]).is_dir():
        raise UserError(f"VOC image root {manifest['root']} does not exist; fix prepare.detection.root and rerun "
                        "`dvc repro prepare`.")
    pairs = [(set_name, year, split) for set_name in ("trainval", "test") for year, split in manifest["splits"][set_name]]
    for set_name, year, split in pairs:  # everything is checked before anything is registered
        if set_name == "test" and year_number(year) not in (2007, 2012):
            raise UserError(f"test split {year}/{split}: Detectron2's VOC evaluator knows only VOC2007 "
                            "(11-point AP) and VOC2012 (area AP) test years.")
        check_classes(manifest, year, split)
    names: dict[str, list[str]] = {"trainval": [], "test": []}
    for set_name, year, split in pairs:
        name = f"{name_prefix}_{year}_{split}"
        _register(name, manifest, year, split)
        names[set_name].append(name)
    return names["trainval"], names["test"]


def _register(name: str, manifest: dict, year: str, split: str) -> None:
    wanted = {"dirname": str(Path(manifest["annotations"]) / year), "split": split, "year": year_number(year),
              "thing_classes": list(manifest["classes"]), "image_root": manifest["root"]}
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        found = {k: meta.get(k, None) for k in wanted}
        found["thing_classes"] = list(found["thing_classes"] or [])
        if found != wanted:
            raise UserError(f"Detectron2 dataset {name!r} is already registered as {found}, not {wanted}; "
                            "use another name prefix.")
        return
    DatasetCatalog.register(name, lambda: voc_dicts(manifest, year, split))
    MetadataCatalog.get(name).set(evaluator_type="pascal_voc", **wanted)


# --------------------------------------------------------------------------- training stream


class IterationBatches(torch.utils.data.Dataset):
    """Item i = this rank's mapped images of training iteration i (module docstring).

    `dicts` are the training images (those without objects are dropped, as Detectron2's
    FILTER_EMPTY_ANNOTATIONS does), `mapper` Detectron2's DatasetMapper(cfg, is_train=True).
    """

    def __init__(self, dicts: Sequence[dict], mapper: Callable[[dict], dict], ims_per_batch: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.dicts = [d for d in dicts if d.get("annotations")]
        if ims_per_batch % world_size:
            raise UserError(f"ims_per_batch {ims_per_batch} is not divisible by {world_size} processes.")
        self.mapper, self.batch, self.seed = mapper, ims_per_batch, seed
        self.local = ims_per_batch // world_size
        self.rank = rank
        self.landscape = np.array([d["width"] >= d["height"] for d in self.dicts], dtype=bool)
        if max(self.landscape.sum(), (~self.landscape).sum(), 0) < ims_per_batch:
            raise UserError(f"ims_per_batch {ims_per_batch} is more than the {len(self.dicts)} training images with "
                            "objects can fill (a batch holds images of one orientation); lower it.")
        self._epochs: list[np.ndarray] = []  # (batches, ims_per_batch) image indices per epoch
        self._starts: list[int] = [0]        # first iteration of each epoch

    def _epoch(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dicts))
        buckets: dict[bool, list[int]] = {True: [], False: []}
        batches = []
        for j in order:
            bucket = buckets[bool(self.landscape[j])]
            bucket.append(int(j))
            if len(bucket) == self.batch:
                batches.append(bucket.copy())
                bucket.clear()
        return np.asarray(batches, dtype=np.int64).reshape(-1, self.batch)

    def global_batch(self, iteration: int) -> np.ndarray:
        """The image indices (ims_per_batch,) of the global batch of `iteration`."""
        while self._starts[-1] <= iteration:
            self._epochs.append(self._epoch(len(self._epochs)))
            self._starts.append(self._starts[-1] + len(self._epochs[-1]))
        epoch = int(np.searchsorted(self._starts, iteration, side="right")) - 1
        return self._epochs[epoch][iteration - self._starts[epoch]]

    def __getitem__(self, iteration: int) -> list[dict]:
        indices = self.global_batch(iteration)
        out = []
        for position in range(self.rank * self.local, (self.rank + 1) * self.local):
            np.random.seed(step_seed(self.seed, iteration, position))  # the mapper's resize and flip draws
            out.append(self.mapper(self.dicts[int(indices[position])]))
        return out


def _as_is(batch: list[dict]) -> list[dict]:
    return batch


def iteration_loader(stream: IterationBatches, start: int, stop: int, num_workers: int):
    """Iterate `stream` for iterations start .. stop - 1, in order (lists of mapped dicts)."""
    return iter(torch.utils.data.DataLoader(stream, sampler=range(start, stop), batch_size=None,
                                            num_workers=num_workers, collate_fn=_as_is,
                                            worker_init_fn=_leave_signals_to_training if num_workers else None))


def _leave_signals_to_training(worker_id: int) -> None:
    """A stop signal reaches every process of the job: the training process stops at its next
    log window with a checkpoint and then ends its workers (runtime.signals)."""
    import signal

    from ..runtime.signals import STOP_SIGNALS

    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
