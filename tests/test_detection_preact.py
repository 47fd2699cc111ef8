"""Detection on the pre-activation (v2) ResNets: the C4 backbone and res5 head of
localagg.detection.preact_c4, the strict conversion, the norm and freeze_at knobs, the
refusal of AlexNet and VGG16, and a real train-and-test run of the detection stage.

Why the converted model's maps equal the pipeline trunk's exactly (error 0): the backbone and
the head are made of the trunk's own module classes with the same tensors; in eval mode
Detectron2's BatchNorm2d (a torch.nn.BatchNorm2d), and FrozenBatchNorm2d without gradients,
both call F.batch_norm(training=False) with the same running statistics, affine and eps 1e-5 as
the trunk's BN, and every other op (conv, SAME max-pool, ReLU, add) is the same call on the same
input, so the float operations are the same ones in the same order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from detectron2.layers import FrozenBatchNorm2d
from detectron2.layers import BatchNorm2d as D2BatchNorm2d
from detectron2.modeling import build_model

from localagg.detection import DetectionConfig, build_cfg, convert_to_detectron2, load_strict
from localagg.detection.convert import FROM_SCRATCH, pretrained_keys
from localagg.detection.preact_c4 import LocalAggPreActRes5ROIHeads, PreActC4Backbone
from localagg.errors import UserError
from localagg.models.backbone import EmbeddingNet
from localagg.models.preact_resnet import PreActBlock, PreActBottleneck
from localagg.runtime.checkpoint import save_export
from stages import detection as stage

from .test_detection import _random_net
from . import test_detection_stage
from .test_detection_stage import FakeLaunch, forget_registrations

workdir = test_detection_stage.workdir  # the fixture: a repository-like folder with a tiny VOC set

CLASSES = ["a", "b", "c"]


def _model(arch: str, **overrides):
    cfg = build_cfg(DetectionConfig.cpu_default(**overrides), arch, len(CLASSES), ["unused_train"], ["unused_test"],
                    "/nonexistent")
    return build_model(cfg)


def _trunk_maps(net: EmbeddingNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the raw output of stage 3, the final BN-ReLU) of the pipeline's trunk."""
    t = net.trunk
    stage3 = t.layer3(t.layer2(t.layer1(t.maxpool(t.conv1(x)))))
    return stage3, net.features(x, ["conv5"])["conv5"]


# --------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("arch,norm,freeze_at", [
    ("preact_resnet18", "BN", 0), ("preact_resnet18", "FrozenBN", 2), ("preact_resnet50", "BN", 2)])
def test_converted_preact_c4_model_computes_the_pipelines_trunk_maps_exactly(arch, norm, freeze_at):
    net = _random_net(arch, seed=1)
    converted = convert_to_detectron2(net.state_dict(), net.meta())
    model = _model(arch, norm=norm, freeze_at=freeze_at).eval()
    load_strict(model, converted)
    assert isinstance(model.backbone, PreActC4Backbone) and isinstance(model.roi_heads, LocalAggPreActRes5ROIHeads)

    # tensor for tensor: every trunk tensor lands under its own name (layer4, bn -> roi_heads.res5)
    state = model.state_dict()
    source = {k[len("trunk."):]: v for k, v in net.state_dict().items()
              if k.startswith("trunk.") and not k.endswith("num_batches_tracked")}

    def where(key: str) -> str:
        if key.startswith("layer4."):
            return "roi_heads.res5." + key[len("layer4."):]
        return "roi_heads.res5." + key if key.startswith("bn.") else "backbone." + key

    for key, value in source.items():
        assert torch.equal(state[where(key)], value), key
    assert {where(k) for k in source} == set(pretrained_keys(model))
    # what is not pretrained is exactly the heads trained from scratch
    fresh = {k for k in state if k not in set(pretrained_keys(model)) and not k.endswith("num_batches_tracked")}
    assert fresh == {f"proposal_generator.rpn_head.{m}.{p}" for m in ("conv", "objectness_logits", "anchor_deltas")
                     for p in ("weight", "bias")} | {f"roi_heads.box_predictor.{m}.{p}"
                                                     for m in ("cls_score", "bbox_pred") for p in ("weight", "bias")}
    assert all(k.startswith(FROM_SCRATCH) for k in fresh)

    x = torch.randn(2, 3, 67, 61)  # odd sides: the SAME max-pool pads before
    with torch.no_grad():
        stage3, conv5 = _trunk_maps(net, x)
        res4 = model.backbone(x)["res4"]
        res5 = model.roi_heads.res5(res4)
    assert res4.shape == stage3.shape and res5.shape == conv5.shape
    assert (res4 - stage3).abs().max().item() == 0.0 and (res5 - conv5).abs().max().item() == 0.0
    assert model.backbone.output_shape()["res4"].channels == res4.shape[1]
    assert model.backbone.output_shape()["res4"].stride == 16


def test_res5_is_stage_4_of_the_same_blocks_then_the_final_bn_relu():
    res5 = _model("preact_resnet50").roi_heads.res5
    blocks = [m for name, m in res5.named_children() if name.isdigit()]
    assert len(blocks) == 3 and all(type(b) is PreActBottleneck for b in blocks)
    assert blocks[0].shortcut is not None and blocks[0].conv2.stride == (2, 2)
    assert [name for name, _ in res5.named_children()][3:] == ["bn", "relu"] and res5.bn.num_features == 2048
    assert not hasattr(res5, "norm")  # the final BN is the norm after res5 (pretrained): no fresh one on top
    backbone = _model("preact_resnet18").backbone
    assert all(type(b) is PreActBlock for stage in (backbone.layer1, backbone.layer2, backbone.layer3) for b in stage)
    assert not hasattr(backbone, "layer4") and not hasattr(backbone, "bn")


def _norms(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))]


def test_norm_and_freeze_at_mean_what_they_mean_for_the_v1_resnet():
    """freeze_at 2: the stem and res2 (layer1) frozen, their BNs FrozenBN; res3, res4 and res5
    trainable with Detectron2's BN; norm FrozenBN: every BN frozen. As for v1, where the same
    knobs freeze Detectron2's stem and res2."""
    model = _model("preact_resnet18", norm="BN", freeze_at=2)
    b = model.backbone
    assert not any(p.requires_grad for m in (b.conv1, b.layer1) for p in m.parameters())
    assert all(isinstance(n, FrozenBatchNorm2d) for n in _norms(b.layer1))
    trainable = (b.layer2, b.layer3, model.roi_heads.res5)
    assert all(p.requires_grad for m in trainable for p in m.parameters())
    assert all(type(n) is D2BatchNorm2d and n.eps == 1e-5 for m in trainable for n in _norms(m))

    v1 = _model("resnet18", norm="BN", freeze_at=2).backbone
    assert not any(p.requires_grad for m in (v1.stem, v1.res2) for p in m.parameters())
    assert all(p.requires_grad for p in v1.res3.parameters())

    frozen_bn = _model("preact_resnet18", norm="FrozenBN", freeze_at=0)
    norms = _norms(frozen_bn.backbone) + _norms(frozen_bn.roi_heads.res5)
    assert norms and all(isinstance(n, FrozenBatchNorm2d) for n in norms)
    assert all(p.requires_grad for p in frozen_bn.backbone.parameters())  # convs still train
    freeze_1 = _model("preact_resnet18", freeze_at=1).backbone
    assert not freeze_1.conv1.weight.requires_grad and all(p.requires_grad for p in freeze_1.layer1.parameters())


def test_strict_conversion_names_what_is_missing_extra_or_of_the_other_layout():
    net = _random_net("preact_resnet18")
    good = convert_to_detectron2(net.state_dict(), net.meta())
    model = _model("preact_resnet18")
    before = model.state_dict()["backbone.conv1.weight"].clone()

    missing = {"model": {k: v for k, v in good["model"].items() if k != "res5.bn.running_var"}}
    with pytest.raises(UserError, match=r"does not fill: roi_heads\.res5\.bn\.running_var"):
        load_strict(model, missing)
    extra = {"model": {**good["model"], "layer3.9.conv1.weight": torch.zeros(1)}}
    with pytest.raises(UserError, match=r"not in the Detectron2 model: layer3\.9\.conv1\.weight"):
        load_strict(model, extra)
    r50 = _random_net("preact_resnet50")
    with pytest.raises(UserError, match=r"shape mismatch"):
        load_strict(model, convert_to_detectron2(r50.state_dict(), r50.meta()))
    # a v1 checkpoint, converted for Detectron2's ResNet, into the pre-activation model; and the reverse
    v1 = _random_net("resnet18")
    with pytest.raises(UserError, match=r"torchvision \(v1\) ResNet's, but the Detectron2 model is built for a "
                                        r"pre-activation \(v2\) ResNet"):
        load_strict(model, convert_to_detectron2(v1.state_dict(), v1.meta()))
    with pytest.raises(UserError, match=r"pre-activation \(v2\) ResNet's, but .* torchvision \(v1\)"):
        load_strict(_model("resnet18"), good)
    assert torch.equal(model.state_dict()["backbone.conv1.weight"], before)  # nothing loaded

    # a v1 state dict handed to the pre-activation converter: one error, the layout named
    with pytest.raises(UserError, match=r"no Detectron2 name for preact_resnet18 \(they are a torchvision \(v1\) "
                                        r"ResNet's.*\.\.\. and \d+ more"):
        convert_to_detectron2(v1.state_dict(), {"arch": "preact_resnet18", "stem": "imagenet"})
    small = EmbeddingNet("preact_resnet18", "small", 16)
    with pytest.raises(UserError, match="imagenet stem"):
        convert_to_detectron2(small.state_dict(), small.meta())


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_detection_refuses_a_network_that_is_not_a_resnet(arch):
    with pytest.raises(UserError, match=f"detection \\(Faster R-CNN C4\\) needs a ResNet backbone: model.arch is '{arch}'"):
        build_cfg(DetectionConfig.cpu_default(), arch, 3, ["t"], ["v"], "/out")
    with pytest.raises(UserError, match="needs a ResNet backbone"):
        convert_to_detectron2({}, {"arch": arch, "stem": "imagenet"})


# --------------------------------------------------------------------------- the stage


def _set_arch(arch: str, **detection) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["model"]["arch"] = arch
    params["detection"].update(detection)
    Path("params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_the_stage_refuses_alexnet_and_vgg16_before_anything_runs(workdir, monkeypatch, arch):
    fake = FakeLaunch()
    monkeypatch.setattr("localagg.detection.train.launch_training", fake)
    _set_arch(arch)
    save_export("models/la.pt", EmbeddingNet(arch, "imagenet", 16), "la")
    with pytest.raises(UserError, match=f"needs a ResNet backbone: model.arch is '{arch}'"):
        stage.run("la", 0, Path("params.yaml"))
    assert fake.calls == [] and not Path("checkpoints").exists()


def test_the_stage_trains_and_tests_a_preact_resnet50_detector(workdir):
    """The real stage (Detectron2 training, VOC evaluator) at toy size: 2 iterations at 64 px."""
    forget_registrations()
    _set_arch("preact_resnet50", max_iter=2, warmup_iters=1, ims_per_batch=2, log_period=1, checkpoint_period=2,
              min_size_train=[64], max_size_train=64, min_size_test=64, max_size_test=64)
    torch.manual_seed(0)
    save_export("models/la.pt", EmbeddingNet("preact_resnet50", "imagenet", 16), "la")
    try:
        record = stage.run("la", 0, Path("params.yaml"))
    finally:  # Detectron2's catalog outlives this test: leave no dataset of this workdir to the next file's tests
        forget_registrations()
    assert record["arch"] == "preact_resnet50"
    metrics = json.loads(Path("metrics/detection/la-seed0.json").read_text())
    assert set(metrics) == {"AP50", "AP", "AP75"} and all(math.isfinite(v) and 0 <= v <= 100 for v in metrics.values())
    curve = [json.loads(line) for line in Path("checkpoints/detection/la-seed0/curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve if "total_loss" in r["metrics"]] == [1, 2]
    assert all(math.isfinite(r["metrics"]["total_loss"]) for r in curve if "total_loss" in r["metrics"])
