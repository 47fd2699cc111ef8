"""Stage `prepare`: validate the datasets named in params and write their manifests.

Outputs (fixed paths, declared in dvc.yaml):
    data/prepared/object/      object-recognition set (ImageNet's role)
    data/prepared/transfer/    transfer set (Places205's role)
    data/prepared/detection/   detection.json (+ VOCdevkit/ for the synthetic set)
    metrics/prepare.json       counts per split and class

Every input is validated before anything is written: a bad root, an unreadable image or a
broken annotation stops the stage with one message listing every problem.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from localagg.data import embedded
from localagg.data.manifest import DatasetInfo, read_arrays_split, read_files_split, write_arrays_dataset
from localagg.errors import UserError
from localagg.io import atomic_path, write_json

from .common import measure_cost
from .params import DetectionSet, ObjectSet, PrepareParams, TransferSet

OUT = Path("data/prepared")
OBJECT_DIR = OUT / "object"
TRANSFER_DIR = OUT / "transfer"
DETECTION_DIR = OUT / "detection"
DETECTION_MANIFEST = "detection.json"
METRICS = Path("metrics/prepare.json")


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


def prepare_object(p: ObjectSet, seed: int, check_images: bool, workers: int) -> DatasetInfo:
    if p.source == "imagenet":
        from localagg.data.real_classification import prepare_imagenet

        return prepare_imagenet(p.root, OBJECT_DIR, check_images=check_images, workers=workers,
                                exclude=_read_exclude(p.exclude, "prepare.object.exclude"))
    train_x, train_y = embedded.load_fashion_mnist(p.root, "train")
    test_x, test_y = embedded.load_fashion_mnist(p.root, "test")
    tr = embedded.balanced_subset(train_y, p.num_train, seed)
    va = embedded.balanced_subset(test_y, p.num_val, seed + 1)
    return write_arrays_dataset(
        OBJECT_DIR, "fashion_mnist", embedded.FASHION_CLASSES,
        {"train": (train_x[tr], train_y[tr]), "val": (test_x[va], test_y[va])}
    )


def prepare_transfer(p: TransferSet, seed: int, check_images: bool, workers: int) -> DatasetInfo:
    if p.source == "places205":
        from localagg.data.real_classification import prepare_places205

        return prepare_places205(p.root, TRANSFER_DIR, train_list=p.train_list, val_list=p.val_list,
                                 images_dir=p.images_dir, check_images=check_images, workers=workers,
                                 exclude=_read_exclude(p.exclude, "prepare.transfer.exclude"))
    x, y = embedded.load_mnist_5k()
    tr, va = embedded.stratified_split(y, p.val_fraction, seed)
    return write_arrays_dataset(TRANSFER_DIR, "mnist_5k", embedded.DIGIT_CLASSES,
                                {"train": (x[tr], y[tr]), "val": (x[va], y[va])})


def prepare_detection(p: DetectionSet, object_root: str, seed: int, check_images: bool, workers: int) -> dict:
    from localagg.data.voc import prepare_voc

    if p.source == "voc":
        return prepare_voc(p.root, DETECTION_DIR / DETECTION_MANIFEST, trainval=p.trainval, test=p.test,
                           check_images=check_images, workers=workers, name="voc")
    from localagg.data.synthetic_detection import build_synthetic_voc

    train_x, train_y = embedded.load_fashion_mnist(object_root, "train")
    test_x, test_y = embedded.load_fashion_mnist(object_root, "test")
    with atomic_path(DETECTION_DIR) as tmp:
        devkit = tmp / "VOCdevkit"
        build_synthetic_voc(
            devkit, train_x, train_y, test_x, test_y, embedded.FASHION_CLASSES,
            num_trainval=p.num_trainval, num_test=p.num_test, image_size=p.image_size,
            objects_per_image=p.objects_per_image, scale_range=p.scale_range, seed=seed,
        )
        manifest = prepare_voc(devkit, tmp / DETECTION_MANIFEST, trainval=[("VOC2007", "trainval")],
                               test=[("VOC2007", "test")], classes=embedded.FASHION_CLASSES,
                               check_images=check_images, workers=workers, name="synthetic_voc")
        # The synthetic devkit lives beside its manifest: store the root relative to it so the
        # output is the same bytes wherever the repository is checked out.
        manifest["root"] = "VOCdevkit"
        write_json(tmp / DETECTION_MANIFEST, manifest)
    return manifest


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


def run(p: PrepareParams) -> dict:
    with measure_cost() as cost:
        check_inputs(p)
        obj = prepare_object(p.object, p.seed, p.check_images, p.workers)
        tra = prepare_transfer(p.transfer, p.seed, p.check_images, p.workers)
        det = prepare_detection(p.detection, p.object.root, p.seed, p.check_images, p.workers)
    metrics = {
        "object": {"name": obj.name, "classes": len(obj.classes), **_class_counts(obj, OBJECT_DIR)},
        "transfer": {"name": tra.name, "classes": len(tra.classes), **_class_counts(tra, TRANSFER_DIR)},
        "detection": {"name": det["name"], "classes": len(det["classes"]), **det["counts"]},
        "cost": cost,
    }
    write_json(METRICS, metrics)
    return metrics


