"""The `detection` stage around the Detectron2 library: which checkpoint it resumes, what it
writes, and the numbers it records (training itself is replaced by a recorder here; the
library's training is tested in test_detection.py and end to end in test_dvc_pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from localagg.data.synthetic_detection import build_synthetic_voc
from localagg.data.voc import prepare_voc
from localagg.models.backbone import EmbeddingNet
from localagg.runtime import checkpoint as ckpt
from localagg.runtime.checkpoint import save_export
from localagg.detection.train import CHECKPOINT, PROGRESS, checkpoint_progress
from stages import detection as stage

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["a", "b", "c"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A repository-like folder: params.yaml, models/la.pt, data/prepared/detection (tiny VOC)."""
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["detection"].update(max_iter=4, steps=[], warmup_iters=2, seeds=[0, 3])
    Path("params.yaml").write_text(yaml.safe_dump(params))
    root = Path("data/prepared/detection/VOCdevkit")
    rng = np.random.default_rng(0)
    items = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12) % len(CLASSES)
    build_synthetic_voc(root, items[:8], labels[:8], items[8:], labels[8:], CLASSES, num_trainval=3, num_test=2,
                        image_size=64, objects_per_image=(1, 1), scale_range=(1.0, 1.0))
    prepare_voc(root, root.parent, trainval=[("VOC2007", "trainval")], test=[("VOC2007", "test")], classes=CLASSES,
                check_images=False, name="synthetic_voc")
    _export(seed=0)
    return tmp_path


def _export(seed: int) -> None:
    torch.manual_seed(seed)
    save_export("models/la.pt", EmbeddingNet("resnet18", "imagenet", 16), "la")


class FakeLaunch:
    """Stands in for `launch_training`: records the call and leaves a checkpoint behind."""

    def __init__(self, aps: dict | None = None):
        self.calls = []
        self.aps = aps or {"AP50": 50.0, "AP": 25.0, "AP75": 20.0}

    def __call__(self, num_gpus, manifest, prefix, cfg, weights, resume, logger, log_period, **machines):
        out = Path(cfg.OUTPUT_DIR)
        had = resume and checkpoint_progress(out)["final"]
        self.calls.append({"resume": resume, "had_checkpoint": had,
                           "weights": Path(weights).is_file(), "mean": list(cfg.MODEL.PIXEL_MEAN),
                           "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT, "seed": cfg.SEED})
        aps = dict(self.aps)
        if not had:  # as train_detector: a finished checkpoint is only tested again
            logger.log_step(2, {"total_loss": 1.5})
            logger.log_step(4, {"total_loss": 1.0})
        logger.log_step(4, aps)
        ckpt.save({"iterations": 4}, out / CHECKPOINT)
        (out / PROGRESS).write_text(json.dumps({"iterations": 4, "final": True}))
        return aps


def test_resumes_only_a_checkpoint_of_the_same_weights_and_config(workdir, monkeypatch):
    fake = FakeLaunch()
    monkeypatch.setattr("localagg.detection.train.launch_training", fake)

    record = stage.run("la", 3, Path("params.yaml"))
    assert fake.calls[-1]["had_checkpoint"] is False and fake.calls[-1]["weights"] and fake.calls[-1]["seed"] == 3
    # the detector normalises its input as pretraining did: augment.mean x 255
    mean = yaml.safe_load(Path("params.yaml").read_text())["augment"]["mean"]
    assert fake.calls[-1]["mean"] == pytest.approx([255 * v for v in mean])
    assert fake.calls[-1]["freeze_at"] == 2
    assert json.loads(Path("metrics/detection/la-seed3.json").read_text()) == {"AP50": 50.0, "AP": 25.0, "AP75": 20.0}
    written = json.loads(Path("records/detection/la-seed3.json").read_text())
    assert written == record
    assert (written["AP50"], written["model"], written["seed"], written["dataset_name"]) == (50.0, "la", 3, "synthetic_voc")
    assert {"wall_seconds", "peak_rss_mb", "peak_gpu_mb"} <= set(written["cost"])
    assert written["protocol"]["train_sets"] == [["VOC2007", "trainval"]] and written["protocol"]["max_iter"] == 4
    assert written["protocol"]["train_images"] == 3 and written["protocol"]["test_images"] == 2

    stage.run("la", 3, Path("params.yaml"))  # same weights and config: the checkpoint is kept
    assert fake.calls[-1]["had_checkpoint"] is True
    # the curve of the first run is replayed, its final APs replaced by the new test's: no duplicates
    curve = [json.loads(line) for line in Path("checkpoints/detection/la-seed3/curve.jsonl").read_text().splitlines()]
    assert [(r["step"], sorted(r["metrics"])) for r in curve] == [
        (2, ["total_loss"]), (4, ["total_loss"]), (4, ["AP", "AP50", "AP75"])]
    assert Path("dvclive/detection/la-seed3/plots/metrics/total_loss.tsv").read_text().count("\n") == 3  # header + 2

    _export(seed=1)  # other weights under the same name: start over
    stage.run("la", 3, Path("params.yaml"))
    assert fake.calls[-1]["had_checkpoint"] is False

    params = yaml.safe_load(Path("params.yaml").read_text())  # another config: start over
    params["detection"]["base_lr"] = 0.01
    Path("params.yaml").write_text(yaml.safe_dump(params))
    stage.run("la", 3, Path("params.yaml"))
    assert fake.calls[-1]["had_checkpoint"] is False

    stage.run("la", 3, Path("params.yaml"), resume=False)  # --no-resume: start over
    assert fake.calls[-1]["had_checkpoint"] is False


def forget_registrations():
    """Each stage is a fresh process; the runs of these tests share this one (Detectron2's catalog)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name in [n for n in DatasetCatalog.list() if n.startswith(stage.DATASET_PREFIX)]:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_a_moved_workspace_resumes_its_checkpoint(workdir, monkeypatch):
    import shutil

    fake = FakeLaunch()
    monkeypatch.setattr("localagg.detection.train.launch_training", fake)
    forget_registrations()
    stage.run("la", 0, Path("params.yaml"))
    forget_registrations()
    moved = workdir.parent / "moved"
    shutil.move(str(workdir), str(moved))
    monkeypatch.chdir(moved)
    stage.run("la", 0, Path("params.yaml"))
    assert [c["had_checkpoint"] for c in fake.calls] == [False, True]  # before: started over, blaming params


def test_the_metrics_file_has_aps_to_two_decimals_and_the_record_every_digit(workdir, monkeypatch, caplog):
    """`dvc metrics show` lists AP50 2.8, not 2.799011474519786; the record (the report's
    source) keeps the evaluator's value; the stage's last line names both files."""
    import logging

    aps = {"AP50": 2.799011474519786, "AP": 0.9435898354192103, "AP75": 0.17789001122334452}
    monkeypatch.setattr("localagg.detection.train.launch_training", FakeLaunch(aps))
    forget_registrations()
    caplog.set_level(logging.INFO, logger="stages")
    stage.run("la", 0, Path("params.yaml"))
    assert json.loads(Path("metrics/detection/la-seed0.json").read_text()) == {"AP50": 2.8, "AP": 0.94, "AP75": 0.18}
    record = json.loads(Path("records/detection/la-seed0.json").read_text())
    assert {k: record[k] for k in aps} == aps
    assert [r.getMessage() for r in caplog.records if "wrote" in r.getMessage()] == [
        "detection la-seed0: wrote records/detection/la-seed0.json and metrics/detection/la-seed0.json"]


def test_a_seed_outside_the_seed_list_is_refused(workdir, monkeypatch):
    from localagg.errors import UserError

    fake = FakeLaunch()
    monkeypatch.setattr("localagg.detection.train.launch_training", fake)
    with pytest.raises(UserError, match=r"seed 7 is not in detection.seeds \[0, 3\]"):
        stage.run("la", 7, Path("params.yaml"))
    assert fake.calls == []


def test_a_non_resnet_stem_stops_before_training(workdir, monkeypatch):
    fake = FakeLaunch()
    monkeypatch.setattr("localagg.detection.train.launch_training", fake)
    save_export("models/la.pt", EmbeddingNet("resnet18", "small", 16), "la")
    from localagg.errors import UserError

    with pytest.raises(UserError, match="imagenet stem"):
        stage.run("la", 0, Path("params.yaml"))
    assert fake.calls == [] and not Path("checkpoints").exists()


def test_a_model_of_another_architecture_than_the_params_stops_before_training(workdir, monkeypatch):
    """A ResNet-50 export where params say ResNet-18: refused at once (it trained for 9 minutes)."""
    from localagg.errors import UserError

    fake = FakeLaunch()
    monkeypatch.setattr("localagg.detection.train.launch_training", fake)
    save_export("models/la.pt", EmbeddingNet("resnet50", "imagenet", 16), "la")
    with pytest.raises(UserError, match="arch: checkpoint has 'resnet50', config asks for 'resnet18'"):
        stage.run("la", 0, Path("params.yaml"))
    assert fake.calls == [] and not Path("checkpoints").exists()


def test_a_truncated_checkpoint_counts_as_no_progress(tmp_path):
    """The record's resumed_from and the curve's replay follow what can be resumed: a
    truncated checkpoint with its progress file says 0 iterations done, not 10."""
    ckpt.save({"iterations": 10}, tmp_path / CHECKPOINT)
    (tmp_path / PROGRESS).write_text(json.dumps({"iterations": 10, "final": False}))
    assert checkpoint_progress(tmp_path) == {"iterations": 10, "final": False}
    data = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(data[: len(data) // 2])
    assert checkpoint_progress(tmp_path) == {"iterations": 0, "final": False}


def test_params_yaml_detection_section_is_the_cpu_default():
    from localagg.detection import DetectionConfig
    from stages.params import load_section

    section = load_section(REPO / "params.yaml", "detection")
    assert section.for_seed(0) == DetectionConfig.cpu_default()


def test_dataset_name_marks_the_benchmarks_test_set():
    community = {"trainval": [("VOC2007", "trainval"), ("VOC2012", "trainval")], "test": [("VOC2007", "test")]}
    assert stage.dataset_name({"name": "voc", "splits": community}) == "voc07"
    paper = {**community, "trainval": [("VOC2007", "trainval")]}
    assert stage.dataset_name({"name": "voc", "splits": paper}) == "voc07"  # the train sets are in the protocol
    assert stage.dataset_name({"name": "voc", "splits": {**paper, "test": [("VOC2012", "val")]}}) == "voc"
    assert stage.dataset_name({"name": "synthetic_voc", "splits": paper}) == "synthetic_voc"
