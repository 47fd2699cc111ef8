"""Detection transfer: checkpoint conversion, strict loading, the C4 model, VOC registration,
a few training iterations with the VOC evaluator, and the VOC07 11-point AP."""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.evaluation.pascal_voc_evaluation import voc_ap, voc_eval
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from pydantic import ValidationError

from localagg.data.synthetic_detection import build_synthetic_voc
from localagg.data.voc import VocAnnotation, VocObject, prepare_voc, read_annotation, read_voc_manifest, write_annotation
from localagg.detection import (
    DetectionConfig,
    build_cfg,
    convert_to_detectron2,
    load_converted,
    load_strict,
    register_voc_manifest,
    save_converted,
    train_detector,
)
from localagg.detection import config as det_config
from localagg.detection.convert import pretrained_keys
from localagg.detection.train import TEST_METRICS, checkpoint_progress
from localagg.errors import UserError
from localagg.models.backbone import EmbeddingNet

from .conftest import CodeRunningPickle

CLASSES = ["a", "b", "c"]


def _random_net(arch: str, stem: str = "imagenet", seed: int = 0) -> EmbeddingNet:
    """An EmbeddingNet with random weights and random (non-default) BN statistics."""
    torch.manual_seed(seed)
    net = EmbeddingNet(arch, stem, 16)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _model(arch: str, **overrides):
    cfg = build_cfg(DetectionConfig.cpu_default(**overrides), arch, len(CLASSES), ["unused_train"], ["unused_test"], "/nonexistent")
    return build_model(cfg)


def _d2_key(trunk_key: str) -> str:
    """The expected C4 model key of a torchvision trunk key, spelled out independently of convert.py."""
    parts = trunk_key.split(".")
    if parts[0] == "conv1":
        return "backbone.stem.conv1.weight"
    if parts[0] == "bn1":
        return f"backbone.stem.conv1.norm.{parts[1]}"
    stage = int(parts[0][len("layer"):]) + 1
    prefix = "roi_heads" if stage == 5 else "backbone"
    head = f"{prefix}.res{stage}.{parts[1]}"
    if parts[2] == "downsample":
        return f"{head}.shortcut.weight" if parts[3] == "0" else f"{head}.shortcut.norm.{parts[4]}"
    if parts[2].startswith("bn"):
        return f"{head}.conv{parts[2][2:]}.norm.{parts[3]}"
    return f"{head}.{parts[2]}.{parts[3]}"


# --------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_converted_backbone_lands_tensor_for_tensor_in_the_c4_model(arch):
    net = _random_net(arch)
    converted = convert_to_detectron2(net.state_dict(), net.meta())
    assert converted["__author__"] == "localagg" and converted["matching_heuristics"] is True
    assert not any(k.startswith("head") or k.endswith("num_batches_tracked") for k in converted["model"])
    model = _model(arch)
    load_strict(model, converted)

    target = model.state_dict()
    source = {k[len("trunk."):]: v for k, v in net.state_dict().items()
              if k.startswith("trunk.") and not k.endswith("num_batches_tracked")}
    for key, value in source.items():
        assert torch.equal(target[_d2_key(key)], value), key
    assert {_d2_key(k) for k in source} == set(pretrained_keys(model))
    assert any(k.startswith("roi_heads.res5.") for k in map(_d2_key, source))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_converted_c4_model_computes_what_the_torchvision_trunk_computes(arch):
    net = _random_net(arch, seed=1)
    model = _model(arch).eval()
    load_strict(model, convert_to_detectron2(net.state_dict(), net.meta()))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net.features(x, ["conv4", "conv5"])
        res4 = model.backbone(x)["res4"]
        res5 = model.roi_heads.res5[:-1](res4)  # the blocks, without the fresh extra norm
    torch.testing.assert_close(res4, ref["conv4"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res5, ref["conv5"], rtol=1e-4, atol=1e-4)


def test_resnet18_res5_head_is_built_from_basic_blocks_with_the_extra_norm():
    res5 = _model("resnet18").roi_heads.res5
    blocks = [m for m in res5 if not isinstance(m, torch.nn.BatchNorm2d)]
    assert len(blocks) == 2 and all(isinstance(b, BasicBlock) for b in blocks)
    assert blocks[0].out_channels == 512 and blocks[0].stride == 2
    assert isinstance(res5.norm, torch.nn.BatchNorm2d) and res5.norm.num_features == 512
    assert not hasattr(_model("resnet18", extra_norm_after_res5=False).roi_heads.res5, "norm")
    res5_50 = _model("resnet50").roi_heads.res5
    assert sum(isinstance(m, BottleneckBlock) for m in res5_50) == 3 and res5_50.norm.num_features == 2048


def test_reimporting_the_config_module_does_not_register_the_head_twice():
    importlib.reload(det_config)
    assert _model("resnet18").roi_heads.__class__.__name__ == det_config.ROI_HEAD_NAME


def test_load_strict_lists_extra_missing_and_misshapen_keys():
    net = _random_net("resnet18")
    good = convert_to_detectron2(net.state_dict(), net.meta())
    model = _model("resnet18")
    before = model.state_dict()["backbone.stem.conv1.weight"].clone()

    extra = {"model": {**good["model"], "res4.7.conv1.weight": np.zeros((1,), np.float32)}}
    with pytest.raises(UserError, match=r"res4\.7\.conv1\.weight"):
        load_strict(model, extra)
    missing = {"model": {k: v for k, v in good["model"].items() if k != "res5.1.conv2.norm.running_var"}}
    with pytest.raises(UserError, match=r"roi_heads\.res5\.1\.conv2\.norm\.running_var"):
        load_strict(model, missing)
    misshapen = {"model": {**good["model"], "stem.conv1.weight": np.zeros((64, 3, 3, 3), np.float32)}}
    with pytest.raises(UserError, match=r"stem\.conv1\.weight \(64, 3, 3, 3\)"):
        load_strict(model, misshapen)
    assert torch.equal(model.state_dict()["backbone.stem.conv1.weight"], before)  # nothing loaded

    with pytest.raises(UserError, match="res5"):  # an R50 checkpoint into an R18 model
        r50 = _random_net("resnet50")
        load_strict(model, convert_to_detectron2(r50.state_dict(), r50.meta()))


def test_small_stem_and_unknown_arch_are_refused():
    net = EmbeddingNet("resnet18", "small", 16)
    with pytest.raises(UserError, match="imagenet stem"):
        convert_to_detectron2(net.state_dict(), net.meta())
    with pytest.raises(UserError, match="imagenet stem"):
        convert_to_detectron2({}, {"arch": "vgg16", "stem": "imagenet"})
    with pytest.raises(UserError, match="trunk.fc.weight"):
        convert_to_detectron2({"trunk.fc.weight": torch.zeros(1)}, {"arch": "resnet18", "stem": "imagenet"})


def test_saved_backbone_loads_through_detectron2s_own_checkpointer_without_renaming(tmp_path):
    net = _random_net("resnet50", seed=2)
    path = tmp_path / "backbone.pth"
    save_converted(convert_to_detectron2(net.state_dict(), net.meta()), path)
    assert load_converted(path)["__author__"] == "localagg"  # read back with weights_only
    model = _model("resnet50")
    DetectionCheckpointer(model).load(str(path))  # the MODEL.WEIGHTS path with matching heuristics
    state = model.state_dict()
    assert torch.equal(state["backbone.res3.0.shortcut.weight"], net.trunk.layer2[0].downsample[0].weight)
    assert torch.equal(state["roi_heads.res5.2.conv3.norm.running_mean"], net.trunk.layer4[2].bn3.running_mean)


# --------------------------------------------------------------------------- config


def test_build_cfg_sets_the_protocol():
    paper = DetectionConfig()
    cfg = build_cfg(paper, "resnet50", 20, ["t"], ["v"], "/out")
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.STEPS) == (24000, 16, 0.02, (18000, 22000))
    assert cfg.INPUT.MIN_SIZE_TRAIN == tuple(range(480, 801, 32)) and cfg.INPUT.MIN_SIZE_TEST == 800
    assert cfg.MODEL.RESNETS.NORM == "SyncBN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53] and cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
    assert cfg.TEST.PRECISE_BN.ENABLED and cfg.MODEL.ROI_HEADS.EXTRA_NORM_AFTER_RES5
    r18 = build_cfg(DetectionConfig.cpu_default(), "resnet18", 10, ["t"], ["v"], "/out",
                    pixel_mean=[72.93] * 3, pixel_std=[90.0] * 3)
    assert (r18.MODEL.RESNETS.DEPTH, r18.MODEL.RESNETS.RES2_OUT_CHANNELS, r18.MODEL.DEVICE) == (18, 64, "cpu")
    assert r18.MODEL.PIXEL_MEAN == [72.93] * 3 and r18.MODEL.PIXEL_STD == [90.0] * 3
    with pytest.raises(UserError, match="resnet18, resnet50"):
        build_cfg(paper, "resnet34", 20, ["t"], ["v"], "/out")


@pytest.mark.parametrize("bad", [
    dict(steps=(300,)),
    dict(steps=(200, 100)),
    dict(norm="SyncBN"),
    dict(ims_per_batch=3, num_gpus=2, device="cuda", norm="SyncBN"),
    dict(unknown_knob=1),
])
def test_detection_config_rejects_inconsistent_knobs(bad):
    with pytest.raises(ValidationError):
        DetectionConfig.cpu_default(**bad)


# --------------------------------------------------------------------------- VOC data


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    """A 64 px synthetic VOCdevkit (6 trainval, 4 test images), prepared, and its manifest."""
    out = tmp_path_factory.mktemp("voc")
    root = out / "VOCdevkit"
    rng = np.random.default_rng(0)
    items = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = np.arange(30) % len(CLASSES)
    build_synthetic_voc(root, items[:20], labels[:20], items[20:], labels[20:], CLASSES,
                        num_trainval=6, num_test=4, image_size=64, objects_per_image=(1, 2), scale_range=(0.8, 1.5))
    prepare_voc(root, out, trainval=[("VOC2007", "trainval")], test=[("VOC2007", "test")], classes=CLASSES,
                check_images=False, name="tiny")
    return root, read_voc_manifest(out / "detection.json")


def _copy(tiny_voc, tmp_path) -> tuple[Path, dict]:
    root, manifest = tiny_voc
    copy = tmp_path / "VOCdevkit"
    shutil.copytree(root, copy)
    return copy, {**manifest, "root": str(copy), "annotations": str(copy)}


def test_registration_is_idempotent_and_uses_the_voc07_metric(tiny_voc, tmp_path):
    _, manifest = tiny_voc
    names = register_voc_manifest(manifest, "reg")
    assert names == (["reg_VOC2007_trainval"], ["reg_VOC2007_test"])
    assert register_voc_manifest(manifest, "reg") == names
    assert PascalVOCDetectionEvaluator("reg_VOC2007_test")._is_2007  # meta.year == 2007 -> 11-point AP
    _, elsewhere = _copy(tiny_voc, tmp_path)
    with pytest.raises(UserError, match="already registered"):
        register_voc_manifest(elsewhere, "reg")


def test_class_missing_from_the_class_list_is_named(tiny_voc, tmp_path):
    root, manifest = _copy(tiny_voc, tmp_path)
    xml = root / "VOC2007" / "Annotations" / "000008.xml"  # a test image
    ann = read_annotation(xml)
    ann.objects.append(VocObject("unicorn", 1, 1, 5, 5))
    write_annotation(ann, xml)
    with pytest.raises(UserError, match=r"'unicorn' \(1 object\(s\), e.g. .*000008.xml\)"):
        register_voc_manifest(manifest, "mismatch")


def test_missing_year_folder_is_named(tiny_voc):
    _, manifest = tiny_voc
    bad = {**manifest, "splits": {"trainval": [["VOC2012", "trainval"]], "test": [["VOC2007", "test"]]}}
    with pytest.raises(UserError, match=r"does not hold VOC2012/trainval"):
        register_voc_manifest(bad, "noyear")


# --------------------------------------------------------------------------- training


class _Recorder:
    def __init__(self):
        self.steps: list[tuple[int, dict]] = []

    def log_step(self, iteration, metrics):
        self.steps.append((iteration, dict(metrics)))


def _tiny_cfg(train, test, out, max_iter):
    det = DetectionConfig.cpu_default(max_iter=max_iter, steps=(), warmup_iters=2, ims_per_batch=2, log_period=2,
                                      checkpoint_period=2, precise_bn_iters=2, min_size_train=(64,), max_size_train=64,
                                      min_size_test=64, max_size_test=64)
    return build_cfg(det, "resnet18", len(CLASSES), train, test, out)


def test_a_few_iterations_train_log_losses_resume_and_report_finite_voc_aps(tiny_voc, tmp_path):
    _, manifest = tiny_voc
    train, test = register_voc_manifest(manifest, "fit")
    out = tmp_path / "out"
    pth = tmp_path / "backbone.pth"
    net = _random_net("resnet18")
    save_converted(convert_to_detectron2(net.state_dict(), net.meta()), pth)
    recorder = _Recorder()

    aps = train_detector(_tiny_cfg(train, test, out, 4), pth, resume=False, logger=recorder, log_period=2)

    assert set(aps) == {"AP50", "AP", "AP75"}
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in aps.values())
    losses = [(i, m) for i, m in recorder.steps if "total_loss" in m]
    assert [i for i, _ in losses] == [2, 4]
    for _, m in losses:
        assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "lr"} <= set(m)
        assert math.isclose(m["total_loss"], sum(v for k, v in m.items() if k.startswith("loss_")), rel_tol=1e-6)
    assert recorder.steps[-1] == (4, aps)
    assert json.loads((out / TEST_METRICS).read_text()) == aps
    assert sorted(p.name for p in out.glob("*.pth")) == ["checkpoint.pth"]  # replaced at each save
    assert checkpoint_progress(out) == {"iterations": 4, "final": True}

    # Resuming with more iterations continues from iteration 4; resuming a finished run only
    # tests the saved model (whose BN statistics are the precise ones that were tested).
    recorder = _Recorder()
    longer = train_detector(_tiny_cfg(train, test, out, 6), None, resume=True, logger=recorder, log_period=2)
    assert [i for i, m in recorder.steps if "total_loss" in m] == [6]
    assert sorted(p.name for p in out.glob("*.pth")) == ["checkpoint.pth"]
    assert train_detector(_tiny_cfg(train, test, out, 6), None, resume=True) == longer


def test_training_logs_an_iteration_line_whenever_a_minute_passed(tiny_voc, tmp_path, monkeypatch, caplog):
    """log_period 100 over 3 iterations: a fake clock of 61 s an iteration logs iterations 1
    and 2 (the window's running means so far) before the last one's window line."""
    from localagg import progress

    class Clock61:
        t = 0.0

        def __call__(self):
            self.t += progress.HEARTBEAT_SECONDS + 1
            return self.t

    _, manifest = tiny_voc
    train, test = register_voc_manifest(manifest, "beat")
    monkeypatch.setattr(progress, "clock", Clock61())
    caplog.set_level(logging.INFO, logger="localagg")
    cfg = _tiny_cfg(train, test, tmp_path / "out", 3)
    cfg.defrost()
    cfg.TEST.PRECISE_BN.ENABLED = False
    train_detector(cfg, None, log_period=100)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("detection iteration ")]
    assert [line.split(":")[0] for line in lines] == [f"detection iteration {i}/3" for i in (1, 2, 3)], lines
    for line in lines:
        assert re.fullmatch(r"detection iteration \d/3: total_loss [\d.]+ \(loss_cls [\d.]+, .*\), lr [\d.e-]+, "
                            r"[\d,.]+ img/s, elapsed \S+, ETA \S+", line), line


# --------------------------------------------------------------------------- VOC07 AP

# Four ground truths; detections by falling score: TP, FP, TP, TP, FP (a duplicate).
#   recall    .25  .25  .50  .75  .75
#   precision 1    .50  .667 .75  .60
# 11-point AP: recall >= 0, .1, .2 -> max precision 1; >= .3 .. .7 -> .75; >= .8, .9, 1 -> 0.
HAND_AP = (3 * 1.0 + 5 * 0.75) / 11


def test_voc07_11_point_ap_of_a_hand_made_curve():
    rec = np.array([0.25, 0.25, 0.5, 0.75, 0.75])
    prec = np.array([1.0, 0.5, 2 / 3, 0.75, 0.6])
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(HAND_AP)


def test_voc07_11_point_ap_through_voc_eval_on_hand_made_detections(tmp_path):
    gts = {"img1": [(11, 11, 30, 30), (41, 41, 60, 60)], "img2": [(5, 5, 20, 25), (30, 10, 50, 40)]}
    for image_id, boxes in gts.items():
        write_annotation(VocAnnotation(f"{image_id}.jpg", 64, 64, 3, [VocObject("a", *b) for b in boxes]),
                         tmp_path / "Annotations" / f"{image_id}.xml")
    (tmp_path / "test.txt").write_text("img1\nimg2\n")
    detections = [
        ("img1", 0.9, (11, 11, 30, 30)),  # TP
        ("img1", 0.8, (1, 40, 10, 60)),   # FP: no overlap
        ("img2", 0.7, (5, 5, 20, 25)),    # TP
        ("img2", 0.6, (31, 10, 50, 40)),  # TP (IoU 0.95)
        ("img1", 0.5, (12, 11, 30, 30)),  # FP: duplicate of a matched box
    ]
    (tmp_path / "a.txt").write_text("".join(f"{i} {s} {' '.join(map(str, b))}\n" for i, s, b in detections))
    rec, prec, ap = voc_eval(str(tmp_path / "{}.txt"), str(tmp_path / "Annotations" / "{}.xml"),
                             str(tmp_path / "test.txt"), "a", ovthresh=0.5, use_07_metric=True)
    np.testing.assert_allclose(rec, [0.25, 0.25, 0.5, 0.75, 0.75])
    np.testing.assert_allclose(prec, [1.0, 0.5, 2 / 3, 0.75, 0.6])
    assert ap == pytest.approx(HAND_AP)


# --------------------------------------------------------------------------- interruption and hostile files

RUN_SCRIPT = """
import sys, json
from localagg.data.voc import read_voc_manifest
from localagg.detection import DetectionConfig, build_cfg, register_voc_manifest, train_detector
manifest = read_voc_manifest(sys.argv[1])
train, test = register_voc_manifest(manifest, "killed")
det = DetectionConfig.cpu_default(max_iter=12, steps=(8,), warmup_iters=2, ims_per_batch=2, log_period=2,
                                  checkpoint_period=2, precise_bn_iters=2)
cfg = build_cfg(det, "resnet18", len(manifest["classes"]), train, test, sys.argv[2])
print(json.dumps(train_detector(cfg, sys.argv[3], resume=True, log_period=2)))
"""


def _run_script(tmp_path, manifest_path, out, weights, kill_after=None, signum=None):
    """Run a 12-iteration detection in a fresh process; with `kill_after`, send it `signum`
    (SIGKILL by default) as soon as its checkpoint records that many iterations (a real
    interruption, not a simulated one). Returns the APs, or the exit code when signalled."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "run_detection.py"
    script.write_text(RUN_SCRIPT)
    env = {**os.environ, "LOCALAGG_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(manifest_path), str(out), str(weights)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if kill_after is None:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        return json.loads(stdout.splitlines()[-1])
    deadline = time.monotonic() + 600
    while checkpoint_progress(out)["iterations"] < kill_after:
        assert proc.poll() is None, f"the run ended before it could be interrupted:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signum or signal.SIGKILL)
    proc.wait(timeout=600)
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGKILL", "SIGTERM"])
def test_a_run_killed_midway_and_resumed_ends_bit_identical_to_an_uninterrupted_run(tmp_path, signum):
    """SIGKILL: the periodic checkpoint; SIGTERM (a preemption): a checkpoint at the end of the
    log window the signal came in, then exit 143."""
    import signal
    out = tmp_path / "prepared"
    root = out / "VOCdevkit"
    rng = np.random.default_rng(1)
    items = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = np.arange(30) % len(CLASSES)
    build_synthetic_voc(root, items[:20], labels[:20], items[20:], labels[20:], CLASSES, num_trainval=8, num_test=4,
                        image_size=128, objects_per_image=(1, 2), scale_range=(1.0, 1.5))
    prepare_voc(root, out, trainval=[("VOC2007", "trainval")], test=[("VOC2007", "test")], classes=CLASSES,
                check_images=False, name="tiny")
    weights = tmp_path / "backbone.pth"
    net = _random_net("resnet18", seed=3)
    save_converted(convert_to_detectron2(net.state_dict(), net.meta()), weights)

    whole = _run_script(tmp_path, out / "detection.json", tmp_path / "whole", weights)
    code = _run_script(tmp_path, out / "detection.json", tmp_path / "cut", weights, kill_after=4,
                       signum=getattr(signal, signum))
    assert code == (-signal.SIGKILL if signum == "SIGKILL" else 128 + signal.SIGTERM), code
    done = checkpoint_progress(tmp_path / "cut")
    assert 4 <= done["iterations"] < 12 and not done["final"], done
    resumed = _run_script(tmp_path, out / "detection.json", tmp_path / "cut", weights)

    assert resumed == whole
    a = torch.load(tmp_path / "whole" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
    assert a["iterations"] == b["iterations"] == 12
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_a_truncated_or_crafted_checkpoint_is_reported_and_training_starts_over(tiny_voc, tmp_path, caplog):
    _, manifest = tiny_voc
    train, test = register_voc_manifest(manifest, "hostile")
    fresh = train_detector(_tiny_cfg(train, test, tmp_path / "fresh", 2), None)
    out = tmp_path / "out"
    train_detector(_tiny_cfg(train, test, out, 2), None)
    data = (out / "checkpoint.pth").read_bytes()
    (out / "checkpoint.pth").write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING"):
        again = train_detector(_tiny_cfg(train, test, out, 2), None, resume=True)
    assert "is truncated or not a torch checkpoint" in caplog.text and "training starts over" in caplog.text
    assert again == fresh

    marker = tmp_path / "code-ran"
    torch.save(CodeRunningPickle(marker), out / "checkpoint.pth")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert train_detector(_tiny_cfg(train, test, out, 2), None, resume=True) == fresh
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert "could run code" in caplog.text


def test_voc_as_released_float_coordinates_empty_flags_padded_names_trains_and_evaluates(tmp_path):
    """Released VOC XML forms that Detectron2's evaluator cannot parse are accepted by `prepare`,
    which gives Detectron2 normalised copies: training and the test-time evaluator both run."""
    from PIL import Image

    devkit = tmp_path / "VOCdevkit"
    year = devkit / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"{i:06d}" for i in range(1, 9)]
    for n, image_id in enumerate(ids):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(year / "JPEGImages" / f"{image_id}.jpg")
        name = CLASSES[n % len(CLASSES)]
        flags = ("<truncated/>", "") if n % 2 else ("<truncated>0</truncated>", "<difficult></difficult>")
        (year / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>80</width><height>64</height>"
            f"<depth>3</depth></size><object><name>{name} </name>{flags[0]}{flags[1]}<bndbox><xmin>10.0</xmin>"
            f"<ymin>12.0</ymin><xmax>50.0</xmax><ymax>41.0</ymax></bndbox></object></annotation>")
    (year / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in ids[:6]))
    (year / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in ids[6:]))
    out = tmp_path / "prepared"
    prepare_voc(devkit, out, trainval=[("VOC2007", "trainval")], test=[("VOC2007", "test")], classes=CLASSES,
                check_images=True, workers=1, name="voc")
    manifest = read_voc_manifest(out / "detection.json")
    assert manifest["root"] == str(devkit.resolve())  # the images stay where they are
    copy = (out / "VOCdevkit" / "VOC2007" / "Annotations" / "000002.xml").read_text()
    assert "<xmin>10</xmin>" in copy and "<truncated>0</truncated>" in copy and "<difficult>0</difficult>" in copy
    assert f"<name>{CLASSES[1]}</name>" in copy
    train, test = register_voc_manifest(manifest, "released")
    aps = train_detector(_tiny_cfg(train, test, tmp_path / "out", 2), None)
    assert set(aps) == {"AP50", "AP", "AP75"} and all(math.isfinite(v) for v in aps.values())
