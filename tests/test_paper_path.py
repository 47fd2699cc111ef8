"""The paper's path as a user walks it, at toy size: real photos (bundled in scikit-image) in the
ILSVRC2012, Places205 and VOCdevkit layouts, `localagg preset apply paper-resnet50`, only sizes
overridden, then `dvc repro` to the report.

Kept from the preset: the authors' pre-activation ResNet-50 (preact_resnet50, detection on the
pre-activation C4 backbone included), 224 px crops (pretraining and readout, resize 256), the
augmentation, every optimiser, bank and clustering recipe key that does not depend on the data
size, the readout protocols (pretraining augmentation and official pooling for ImageNet,
resize + crop + flip for Places205) and the VOC07-trainval detection sets.
Shrunk (sizes): the datasets (2 classes, 16 / 8 images), epochs, iterations, batches, the
neighbour and cluster counts that must fit 16 images, processes (2 gloo processes per training
stage instead of 8), loader workers, the
detector's input and sampling (short side 224 instead of 480-800; 16 ROIs per image instead
of 512; 50 and 20 proposals instead of 2,000 and 1,000) and its device (CPU, so batch norm
instead of SyncBN).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from .test_dvc_pipeline import ALL, BIN, _commit, _merge, _ran, _run, _stale

REPO = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field")
TEXTURES = ("grass", "gravel", "brick", "moon")


def _photo(name: str) -> np.ndarray:
    from skimage import data

    img = np.asarray(getattr(data, name)())
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else np.ascontiguousarray(img[:, :, :3])


def _crop(img: np.ndarray, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A random crop of `img`, resized to width x height."""
    h, w = img.shape[:2]
    side_h, side_w = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
    y, x = rng.integers(0, h - side_h + 1), rng.integers(0, w - side_w + 1)
    return Image.fromarray(img[y:y + side_h, x:x + side_w]).resize((width, height), Image.BILINEAR)


def build_imagenet(root: Path, rng) -> None:
    """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG: photos as one class, textures as the other."""
    for split, per_class in (("train", 8), ("val", 4)):
        for wnid, sources in (("n00000001", PHOTOS), ("n00000002", TEXTURES)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = (int(rng.integers(240, 400)), int(rng.integers(200, 360)))
                _crop(_photo(sources[i % len(sources)]), rng, *size).save(folder / f"{wnid}_{i}.JPEG", quality=90)


def build_places205(root: Path, rng) -> None:
    """The official list files and images256/<letter>/<class>/*.jpg."""
    images = root / "data/vision/torralba/deeplearning/images256"
    lists = root / "trainvalsplit_places205"
    lists.mkdir(parents=True)
    for split, per_class in (("train", 8), ("val", 4)):
        lines = []
        for label, (place, sources) in enumerate((("a/abbey", PHOTOS), ("g/grass_field", TEXTURES))):
            (images / place).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                name = f"{place}/{split}_{i:08d}.jpg"
                _crop(_photo(sources[(i + 1) % len(sources)]), rng, 256, 256).save(images / name, quality=90)
                lines.append(f"{name} {label}\n")
        (lists / f"{split}_places205.csv").write_text("".join(lines))


def build_voc(root: Path, rng) -> None:
    """VOCdevkit/VOC2007 with 6 trainval and 4 test photos; the XML as released VOC files write
    it: some coordinates as "12.0", empty <truncated/>, a missing <difficult>, a padded name."""
    year = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    classes = ("person", "cat", "diningtable", "aeroplane")
    ids = {"trainval": [f"{i:06d}" for i in range(1, 7)], "test": [f"{i:06d}" for i in range(7, 11)]}
    for split, split_ids in ids.items():
        (year / "ImageSets/Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
        for n, image_id in enumerate(split_ids):
            width, height = int(rng.integers(300, 420)), int(rng.integers(240, 340))
            _crop(_photo(PHOTOS[n % len(PHOTOS)]), rng, width, height).save(year / "JPEGImages" / f"{image_id}.jpg")
            x0, y0 = int(rng.integers(1, width // 3)), int(rng.integers(1, height // 3))
            x1, y1 = int(rng.integers(width // 2, width)), int(rng.integers(height // 2, height))
            flags = ["<truncated>0</truncated><difficult>0</difficult>", "<truncated/><difficult/>", "<truncated/>"]
            (year / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename><size><width>{width}</width>"
                f"<height>{height}</height><depth>3</depth></size><object><name>{classes[n % 4]}{' ' * (n % 2)}</name>"
                f"<pose>Unspecified</pose>{flags[n % 3]}<bndbox><xmin>{x0}.0</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                f"<ymax>{y1}.0</ymax></bndbox></object></annotation>\n")


def sizes(datasets: Path) -> dict:
    """The overrides of the test: dataset roots and sizes only (module docstring)."""
    # 2 processes (gloo, torchrun) where the preset has 8: DDP, sync_bn and the bank gathers run as on a node
    pretrain = {"epochs": 1, "batch_size": 8, "lr_drops": [], "knn_k": 4, "num_processes": 2, "num_workers": 0}
    readout = {"epochs": 1, "batch_size": 8, "lr_drops": [], "num_workers": 0}  # one readout seed (the preset's)
    return {
        "prepare": {"workers": 1, "object": {"root": str(datasets / "imagenet")},
                    "transfer": {"root": str(datasets / "places205")},
                    "detection": {"root": str(datasets / "VOCdevkit")}},
        "pretrain_ia": pretrain,
        "pretrain_la": {**pretrain, "k": 8, "num_clusters": 2},
        "supervised": pretrain,
        "transfer": {"object": readout, "transfer": readout, "knn": {"k": 4}},
        "detection": {"seeds": [0], "max_iter": 2, "steps": [1], "warmup_iters": 1, "ims_per_batch": 2,
                      "checkpoint_period": 2, "precise_bn_iters": 1, "log_period": 1, "min_size_train": [224],
                      "max_size_train": 400, "min_size_test": 224, "max_size_test": 400, "batch_size_per_image": 16,
                      "proposals_train": 50, "proposals_test": 20, "device": "cpu", "norm": "BN", "num_gpus": 1,
                      "num_workers": 0},
    }


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    datasets, repo = root / "datasets", root / "repo"
    rng = np.random.default_rng(0)
    build_imagenet(datasets / "imagenet", rng)
    build_places205(datasets / "places205", rng)
    build_voc(datasets / "VOCdevkit", rng)
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        if (REPO / rel).is_file() and not rel.startswith(("data/", "models/", "metrics/", "records/", "dvclive/")):
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, repo / rel)
    (repo / "dvc.lock").unlink(missing_ok=True)
    _run(["git", "init", "-q"], repo)
    _run([sys.executable, "-m", "stages", "preset", "apply", "paper-resnet50"], repo)
    params = repo / "params.yaml"
    params.write_text(yaml.safe_dump(_merge(yaml.safe_load(params.read_text()), sizes(datasets)), sort_keys=False))
    _run([sys.executable, "-m", "stages", "check"], repo)
    _commit(repo, "the paper preset at toy size")
    ran = _ran(_run([str(BIN / "dvc"), "repro"], repo))
    return repo, ran


def _records(repo: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((repo / "records").rglob("*.json"))]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # about 3 minutes on 2 idle cores
def test_the_paper_preset_runs_end_to_end_on_real_layout_data(paper_run):
    repo, ran = paper_run
    assert ran == ALL and _stale(repo) == set()
    prepare = json.loads((repo / "records/prepare.json").read_text())
    assert (prepare["object"]["name"], prepare["object"]["train"]["total"], prepare["object"]["val"]["total"]) == \
        ("imagenet", 16, 8)
    assert (prepare["transfer"]["name"], prepare["detection"]["name"]) == ("places205", "voc")
    assert prepare["detection"]["sets"] == {"trainval": [["VOC2007", "trainval"]], "test": [["VOC2007", "test"]]}
    for record in _records(repo):
        for stage in record.get("provenance") or []:  # every model: the pre-activation ResNet-50 at 224 px
            assert stage["arch"] == "preact_resnet50", record
            if stage["objective"] in ("ir", "la", "supervised"):
                assert stage["augment"]["crop_size"] == 224 and stage["dataset"] == "imagenet"
                assert stage["world_size"] == 2, stage  # trained by 2 processes, as the preset's 8 would
                assert stage["config"]["sync_bn"] is True or stage["objective"] == "supervised"
    la = json.loads((repo / "records/pretrain_la.json").read_text())
    assert [s["objective"] for s in la["provenance"]] == ["ir", "la"]
    assert la["provenance"][1]["config"]["num_kmeans"] == 10 and la["provenance"][0]["config"]["num_negatives"] == 4096
    obj = json.loads((repo / "records/transfer/la-object.json").read_text())["protocol"]["readout"]
    assert (obj["train_augment"], obj["pool_rule"], obj["conv1_point"], obj["crop_size"], obj["eval_resize"]) == \
        ("pretraining", "official", "after_maxpool", 224, 256)
    places = json.loads((repo / "records/transfer/ir-transfer.json").read_text())["protocol"]["readout"]
    assert places["train_augment"] == "resize_random_crop_flip"
    feature_dims = json.loads((repo / "records/transfer/la-object.json").read_text())["feature_dims"]
    assert feature_dims == {"conv1": 50176, "conv2": 50176, "conv3": 100352, "conv4": 50176, "conv5": 100352}
    det = json.loads((repo / "records/detection/la-seed0.json").read_text())
    assert det["arch"] == "preact_resnet50" and det["dataset_name"] == "voc07"
    assert det["protocol"]["train_sets"] == [["VOC2007", "trainval"]] and det["protocol"]["test_images"] == 4


@pytest.mark.slow
def test_the_toy_paper_run_is_reported_not_comparable_with_the_reasons(paper_run):
    repo, _ = paper_run
    md = (repo / "reports/results.md").read_text()
    assert "**Its numbers are NOT comparable with the paper's**" in md
    headline = next(line for line in md.splitlines() if line.startswith("| ImageNet linear top-1, conv5, 10-crop"))
    assert "(not comparable: 16 of 1,281,167 training images; IR + LA 1 + 1 of 10 + 190 epochs;" in headline
    why = md[md.index("## Why not comparable"):md.index("## How to read this report")]
    # one table: a row per key (its paper value, then this run's value in each headline number's column)
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in why.splitlines() if line.startswith("| "))}
    for key, paper, ours in (("readout val images", "(per column)", "8 (paper 50,000)"),
                             ("`transfer.object.epochs`", "70", "1"), ("`pretrain_la.k`", "4,096", "8"),
                             ("readout training images", "(per column)", "16 (paper 2,448,873)"),
                             ("`detection.max_iter`", "12,500", "2"), ("`detection.norm`", "SyncBN", "BN"),
                             ("detection training images", "5,011", "6")):
        assert key in rows and rows[key][0] == paper and ours in rows[key][1:], (key, rows.get(key))
    assert "architecture" not in rows and "`augment.crop_size`" not in rows  # the network and crop are the paper's
    assert "Trained on VOC07 trainval (6 images), tested on VOC07 test (4 images)" in md
    assert all(row["paper"] == "" for row in _csv(repo / "reports/results.csv"))


def _csv(path: Path) -> list[dict]:
    import csv

    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_datasets_moved_elsewhere_rerun_prepare_alone_and_a_changed_file_is_named(paper_run):
    """ImageNet, Places205 and VOC moved (as onto a node's local NVMe) and their roots changed in
    params: `prepare` reruns and writes the same bytes; no training or evaluation reruns (the
    report may: it reads prepare's record, whose timings usually change, to 0.01 s and 0.1 MB,
    but not always). Then an image
    that differs from what `prepare` read stops a stage at its start, naming the file."""
    repo, _ = paper_run
    prepared = {p.relative_to(repo): p.read_bytes() for p in (repo / "data/prepared").rglob("*") if p.is_file()}
    params = repo / "params.yaml"
    p = yaml.safe_load(params.read_text())
    old = Path(p["prepare"]["object"]["root"]).parent
    moved = old.parent / "local-nvme"
    shutil.move(str(old), str(moved))
    for role, name in (("object", "imagenet"), ("transfer", "places205"), ("detection", "VOCdevkit")):
        p["prepare"][role]["root"] = str(moved / name)
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    assert _ran(_run([str(BIN / "dvc"), "repro"], repo)) - {"report"} == {"prepare"}
    assert _stale(repo) == set()
    assert {p.relative_to(repo): p.read_bytes() for p in (repo / "data/prepared").rglob("*") if p.is_file()} == prepared

    image = sorted((moved / "imagenet/train").rglob("*.JPEG"))[0]
    image.write_bytes(image.read_bytes() + b"\0" * 10)  # a different file under the same name
    proc = subprocess.run([str(BIN / "localagg"), "transfer", "--model", "la", "--dataset", "object", "--params",
                           "params.yaml"], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr  # a user error, before any work
    said = " ".join(proc.stderr.split())  # the console wraps long lines
    assert image.name in said and f"is {image.stat().st_size:,} bytes" in said, said
    assert "changed since `prepare`" in said and "Rerun `dvc repro prepare`" in said, said
