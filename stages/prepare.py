"""Stage `prepare`: validate the datasets named in params and write their manifests.

Outputs (fixed paths, declared in dvc.yaml):
    data/prepared/object/      object-recognition set (ImageNet's role)
    data/prepared/transfer/    transfer set (Places205's role)
    data/prepared/detection/   detection.json + VOCdevkit/ (normalised annotations; the
                               synthetic set's images too)
    records/prepare.json       names, counts per split and class, the VOC sets, cost (no metrics
                               file: counts are not results)

Every input is validated before anything is written: a bad root, an unreadable image or a
broken annotation stops the stage with one message listing every problem.

All outputs are built in one staging folder and swapped in together at the end, so the
stage is all or nothing: a failure or a kill leaves the previous outputs whole. The swap
is journalled (a COMMIT file in the staging folder): a stage killed during the swap
finishes it at its next start; one killed before it discards the staging folder.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from localagg.data import embedded
from localagg.data.manifest import DatasetInfo, read_arrays_split, read_files_split, read_info, write_arrays_dataset
from localagg.errors import UserError
from localagg.io import read_json, write_json

from .common import err_console, measure_cost, wrote
from .params import DetectionSet, ObjectSet, PrepareParams, TransferSet
from .paths import record_path

OUT = Path("data/prepared")
OBJECT_DIR = OUT / "object"
TRANSFER_DIR = OUT / "transfer"
DETECTION_DIR = OUT / "detection"
RECORD = record_path(Path("metrics/prepare.json"))
STAGING = Path("data/.prepare-staging")
COMMIT = "COMMIT"
# staging name -> final path: every output of the stage
OUTPUTS = {"object": OBJECT_DIR, "transfer": TRANSFER_DIR, "detection": DETECTION_DIR, "record.json": RECORD}
log = logging.getLogger(__name__)


def _read_exclude(path: str | None, key: str) -> set[str]:
    if path is None:
        return set()
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{key}: exclude file {p} does not exist; remove the key or create the file (one relative path per line).")
    return {line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")}


def _require_dir(path: str, key: str, what: str) -> None:
    if not Path(path).is_dir():
        raise UserError(f"{key} = {path}: folder does not exist; set it to {what}.")


def check_inputs(p: PrepareParams) -> None:
    """Cheap checks of every root before any stage work starts."""
    if p.object.source == "fashion_mnist":
        _require_dir(p.object.root, "prepare.object.root", "the folder of Fashion-MNIST's IDX files (apt-get install dataset-fashion-mnist)")
        for split in embedded.FASHION_FILES:
            for name in embedded.FASHION_FILES[split]:
                if not (Path(p.object.root) / name).is_file():
                    raise UserError(
                        f"prepare.object.root = {p.object.root}: {name} is missing. Install Fashion-MNIST with "
                        "'apt-get update && apt-get install -y dataset-fashion-mnist'."
                    )
    else:
        _require_dir(p.object.root, "prepare.object.root", "the ILSVRC2012 root holding train/ and val/ class folders")
    if p.transfer.source == "places205":
        _require_dir(p.transfer.root, "prepare.transfer.root", "the Places205 root holding the list files and images")
    if p.detection.source == "voc":
        _require_dir(p.detection.root, "prepare.detection.root", "a VOCdevkit folder holding VOC2007 and VOC2012")
    else:
        _require_dir(p.object.root, "prepare.object.root", "the Fashion-MNIST folder (the synthetic detection set is built from it)")


def expected_sizes(p: PrepareParams) -> dict[str, tuple[int, int] | None]:
    """(train, val) image counts of the object and transfer sets these params give, where known
    without reading the datasets: the embedded sets from their params, a real set from the
    manifest already prepared from the same source, else its released size."""
    from localagg.report.paper import DATASET_SIZES

    def prepared(data_dir: Path, name: str) -> tuple[int, int] | None:
        """The prepared manifest's counts; before `prepare`, the dataset's released size."""
        try:
            info = read_info(data_dir)
        except UserError:
            return DATASET_SIZES.get(name)
        return (info.splits.get("train", 0), info.splits.get("val", 0)) if info.name == name else DATASET_SIZES.get(name)

    sizes: dict[str, tuple[int, int] | None] = {}
    if p.object.source == "fashion_mnist":
        sizes["object"] = (p.object.num_train or 60000, p.object.num_val or 10000)
    else:
        sizes["object"] = prepared(OBJECT_DIR, p.object.source)
    if p.transfer.source == "mnist_5k":
        per_class_val = int(round(500 * p.transfer.val_fraction))
        sizes["transfer"] = (10 * (500 - per_class_val), 10 * per_class_val)
    else:
        sizes["transfer"] = prepared(TRANSFER_DIR, p.transfer.source)
    return sizes


def prepare_object(p: ObjectSet, seed: int, check_images: bool, workers: int, out: Path) -> DatasetInfo:
    if p.source == "imagenet":
        from localagg.data.real_classification import prepare_imagenet

        return prepare_imagenet(p.root, out, check_images=check_images, workers=workers,
                                exclude=_read_exclude(p.exclude, "prepare.object.exclude"))
    train_x, train_y = embedded.load_fashion_mnist(p.root, "train")
    test_x, test_y = embedded.load_fashion_mnist(p.root, "test")
    tr = embedded.balanced_subset(train_y, p.num_train, seed)
    va = embedded.balanced_subset(test_y, p.num_val, seed + 1)
    splits = {"train": (train_x[tr], train_y[tr]), "val": (test_x[va], test_y[va])}
    return _write_embedded(out, "fashion_mnist", embedded.FASHION_CLASSES, splits, p.canvas, p.scale_range, seed + 10)


def prepare_transfer(p: TransferSet, seed: int, check_images: bool, workers: int, out: Path) -> DatasetInfo:
    if p.source == "places205":
        from localagg.data.real_classification import prepare_places205

        return prepare_places205(p.root, out, train_list=p.train_list, val_list=p.val_list,
                                 images_dir=p.images_dir, check_images=check_images, workers=workers,
                                 exclude=_read_exclude(p.exclude, "prepare.transfer.exclude"))
    x, y = embedded.load_mnist_5k()
    tr, va = embedded.stratified_split(y, p.val_fraction, seed)
    splits = {"train": (x[tr], y[tr]), "val": (x[va], y[va])}
    return _write_embedded(out, "mnist_5k", embedded.DIGIT_CLASSES, splits, p.canvas, p.scale_range, seed + 20)


def _write_embedded(out: Path, name: str, classes, splits: dict, canvas: int, scale_range, seed: int) -> DatasetInfo:
    """An embedded set as arrays; with a canvas, each split placed on it (`name` gets "_canvas<side>")."""
    if canvas:
        splits = {s: (embedded.place_on_canvas(x, canvas, scale_range, seed + i), y)
                  for i, (s, (x, y)) in enumerate(splits.items())}
        name = f"{name}_canvas{canvas}"
    return write_arrays_dataset(out, name, classes, splits)


def prepare_detection(p: DetectionSet, object_root: str, seed: int, check_images: bool, workers: int,
                      out: Path) -> dict:
    from localagg.data.voc import ANNOTATIONS, prepare_voc

    if p.source == "voc":
        return prepare_voc(p.root, out, trainval=p.trainval, test=p.test, check_images=check_images,
                           workers=workers, name="voc")
    from localagg.data.synthetic_detection import build_synthetic_voc

    train_x, train_y = embedded.load_fashion_mnist(object_root, "train")
    test_x, test_y = embedded.load_fashion_mnist(object_root, "test")
    devkit = out / ANNOTATIONS  # images and annotations together; the manifest names it relative to `out`
    build_synthetic_voc(
        devkit, train_x, train_y, test_x, test_y, embedded.FASHION_CLASSES,
        num_trainval=p.num_trainval, num_test=p.num_test, image_size=p.image_size,
        objects_per_image=p.objects_per_image, scale_range=p.scale_range, seed=seed,
    )
    return prepare_voc(devkit, out, trainval=[("VOC2007", "trainval")], test=[("VOC2007", "test")],
                       classes=embedded.FASHION_CLASSES, check_images=check_images, workers=workers,
                       name="synthetic_voc")


def _class_counts(info: DatasetInfo, data_dir: Path) -> dict:
    out = {}
    for split in info.splits:
        if info.kind == "arrays":
            _, labels = read_arrays_split(data_dir, split)
        else:
            _, labels = read_files_split(data_dir, split)
        counts = Counter(np.asarray(labels).tolist())
        out[split] = {"total": int(len(labels)), "per_class": {info.classes[c]: int(n) for c, n in sorted(counts.items())}}
    return out


# --------------------------------------------------------------------------- all or nothing


def _swap_in(staging: Path) -> None:
    """Move every staged output over its final path (the old one into staging/old first).
    Idempotent, so an interrupted swap can be finished by running it again."""
    for name, final in OUTPUTS.items():
        new = staging / name
        if not new.exists():
            continue  # already moved by an earlier, interrupted swap
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() or final.is_symlink():
            old = staging / "old" / name
            old.parent.mkdir(exist_ok=True)
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            os.replace(final, old)
        os.replace(new, final)


def recover() -> None:
    """Finish a swap that a killed stage left committed; discard a staging folder it left uncommitted."""
    if not STAGING.exists():
        return
    if (STAGING / COMMIT).is_file():
        err_console.print(f"prepare: finishing the swap of outputs that an interrupted run left in {STAGING}")
        _swap_in(STAGING)
    shutil.rmtree(STAGING)


def run(p: PrepareParams) -> dict:
    recover()
    STAGING.mkdir(parents=True)
    try:
        with measure_cost() as cost:
            check_inputs(p)
            obj = prepare_object(p.object, p.seed, p.check_images, p.workers, STAGING / "object")
            tra = prepare_transfer(p.transfer, p.seed, p.check_images, p.workers, STAGING / "transfer")
            det = prepare_detection(p.detection, p.object.root, p.seed, p.check_images, p.workers,
                                    STAGING / "detection")
        counts = {"object": _class_counts(obj, STAGING / "object"),
                  "transfer": _class_counts(tra, STAGING / "transfer"),
                  "detection": det["counts"]}
        names = {"object": obj.name, "transfer": tra.name, "detection": det["name"]}
        classes = {"object": len(obj.classes), "transfer": len(tra.classes), "detection": len(det["classes"])}
        record = {role: {"name": names[role], "classes": classes[role], **counts[role]} for role in names}
        record["detection"]["sets"] = det["splits"]  # the (year, split) pairs of trainval and test
        write_json(STAGING / "record.json", {**record, "cost": cost})
        write_json(STAGING / COMMIT, {"outputs": {k: str(v) for k, v in OUTPUTS.items()}})
    except BaseException:
        shutil.rmtree(STAGING, ignore_errors=True)
        raise
    _swap_in(STAGING)
    shutil.rmtree(STAGING)
    log.info("prepare: %s", wrote(*OUTPUTS.values()))
    return read_json(RECORD)
