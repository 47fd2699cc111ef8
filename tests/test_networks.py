"""The authors' networks (pre-activation ResNets, AlexNet, VGG16): layer and parameter counts
equal to the TF models', shapes at every readout point, a pre-activation block and the TF
SAME max-pool against slow references written from the TF code's order of operations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from localagg.errors import UserError
from localagg.models.backbone import READOUT_LAYERS, build_model, min_size
from localagg.models.config import ModelConfig
from localagg.models.preact_resnet import PreActBlock, PreActBottleneck
from localagg.models.tf_layers import SamePool2d, same_pads

# The TF models' variables, counted from the TF code's graphs (model/resnet_model.py,
# alexnet_model.py, vggnet_model.py with the LA arguments): convs, batch norms, trunk
# parameters (BN moving statistics excluded), and the 128-d head.
TF_MODELS = {
    # ResNet-18 v2: conv2d .. conv2d_20, batch_normalization .. batch_normalization_16, dense:
    # 21 + 17 x 4 + 2 = 91 variables
    "preact_resnet18": dict(convs=21, bns=17, trunk=11_178_816, head=65_664),
    # ResNet-50 v2: 53 convs, 49 batch norms, dense: 53 + 49 x 4 + 2 = 251 variables
    "preact_resnet50": dict(convs=53, bns=49, trunk=23_500_352, head=262_272),
    # alexnet_v2 with BN: conv1-5, fc6, fc7 (each with bias and BN), fc8 = head:
    # 23,424 + 307,776 + 664,704 + 1,328,256 + 885,504 + 26,226,688 + 16,789,504
    "alexnet": dict(convs=7, bns=7, trunk=46_225_856, head=524_416),
    # vgg_16(with_bn, fix_bug): 13 convs + fc6, fc7; BN (no bias) on conv*_final, fc6, fc7;
    # biases on the other 8 convs; fc8 = head: 14,716,160 (convs) + 102,768,640 + 16,785,408
    "vgg16": dict(convs=15, bns=7, trunk=134_270_208, head=524_416),
}

# Readout maps (C, H, W) at 224 px, conv1 at the authors' point.
SHAPES_224 = {
    "preact_resnet18": [(64, 56, 56), (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)],
    "preact_resnet50": [(64, 56, 56), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)],
    "alexnet": [(64, 54, 54), (192, 26, 26), (384, 12, 12), (384, 12, 12), (256, 12, 12)],
    "vgg16": [(64, 224, 224), (128, 112, 112), (256, 56, 56), (512, 28, 28), (512, 14, 14)],
}
AUTHORS_CONV1 = {"preact_resnet18": True, "preact_resnet50": True, "alexnet": False, "vgg16": False}


@pytest.mark.parametrize("arch", list(TF_MODELS))
def test_layer_and_parameter_counts_equal_the_tf_models(arch):
    with torch.device("meta"):
        model = build_model(arch, "imagenet", 128)
    counts = dict(convs=sum(isinstance(m, nn.Conv2d) for m in model.trunk.modules()),
                  bns=sum(isinstance(m, nn.BatchNorm2d) for m in model.trunk.modules()),
                  trunk=sum(p.numel() for p in model.trunk.parameters()),
                  head=sum(p.numel() for p in model.head.parameters()))
    assert counts == TF_MODELS[arch]


@pytest.mark.parametrize("arch", list(SHAPES_224))
def test_shapes_at_every_readout_point(arch):
    with torch.device("meta"):
        model = build_model(arch, "imagenet", 128)
        maps = model.features(torch.empty(2, 3, 224, 224), READOUT_LAYERS, conv1_after_maxpool=AUTHORS_CONV1[arch])
        emb = model(torch.empty(2, 3, 224, 224))
    assert [tuple(m.shape) for m in maps.values()] == [(2, *s) for s in SHAPES_224[arch]]
    assert tuple(emb.shape) == (2, 128) and model.feature_dim == (4096 if arch in ("alexnet", "vgg16") else
                                                                  SHAPES_224[arch][-1][0])


def test_preact_conv1_before_the_maxpool_is_the_bare_stem_conv_and_the_pooled_features_are_conv5s_mean():
    torch.manual_seed(0)
    model = build_model("preact_resnet18", "imagenet", 16).eval().double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        before = model.features(x, ["conv1"], conv1_after_maxpool=False)["conv1"]
        conv5 = model.features(x, ["conv5"], conv1_after_maxpool=True)["conv5"]
        assert torch.equal(before, model.trunk.conv1(x))
        assert torch.allclose(model.pooled(x), conv5.mean(dim=(2, 3)), rtol=0, atol=1e-12)


def test_features_of_one_layer_equal_those_of_a_full_pass():
    torch.manual_seed(0)
    for arch, size in (("preact_resnet50", 48), ("alexnet", 200)):
        model = build_model(arch, "imagenet", 16).eval().double()
        x = torch.randn(1, 3, size, size, dtype=torch.float64)
        with torch.no_grad():
            full = model.features(x, READOUT_LAYERS, conv1_after_maxpool=True)
            for layer in READOUT_LAYERS:
                assert torch.equal(model.features(x, [layer], conv1_after_maxpool=True)[layer], full[layer]), layer


# ---------------------------------------------------------------------------------------------
# Slow references, written from the TF code (model/resnet_model.py) with its padding rules.

def _tf_conv(x: torch.Tensor, w: torch.Tensor, stride: int) -> torch.Tensor:
    """conv2d_fixed_padding: stride > 1 pads (k-1)//2 before and the rest after, then VALID;
    stride 1 is SAME (the pad TF computes from the input size)."""
    k = w.shape[-1]
    if stride > 1:
        beg = (k - 1) // 2
        pads = (beg, k - 1 - beg, beg, k - 1 - beg)
    else:
        (top, bottom), (left, right) = (same_pads(n, k, 1) for n in x.shape[-2:])
        pads = (left, right, top, bottom)
    return F.conv2d(F.pad(x, pads), w, stride=stride)


def _tf_bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """tf.layers.batch_normalization at inference, written out: gamma (x - mean) / sqrt(var + eps) + beta."""
    shape = (1, -1, 1, 1)
    return (bn.weight.view(shape) * (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + 1e-5)
            + bn.bias.view(shape))


def _reference_block_v2(x, block, stride: int, bottleneck: bool):
    """_building_block_v2 / _bottleneck_block_v2 in the TF code's order of operations."""
    shortcut = x
    inputs = torch.relu(_tf_bn(x, block.bn1))
    if block.shortcut is not None:  # projection_shortcut(inputs): on the pre-activated input, no BN
        shortcut = _tf_conv(inputs, block.shortcut.weight, stride)
    if bottleneck:
        inputs = _tf_conv(inputs, block.conv1.weight, 1)
        inputs = torch.relu(_tf_bn(inputs, block.bn2))
        inputs = _tf_conv(inputs, block.conv2.weight, stride)
        inputs = torch.relu(_tf_bn(inputs, block.bn3))
        inputs = _tf_conv(inputs, block.conv3.weight, 1)
    else:
        inputs = _tf_conv(inputs, block.conv1.weight, stride)
        inputs = torch.relu(_tf_bn(inputs, block.bn2))
        inputs = _tf_conv(inputs, block.conv2.weight, 1)
    return inputs + shortcut  # no ReLU after the addition in v2


def _randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen, dtype=m.bias.dtype))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=m.running_mean.dtype))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=m.running_var.dtype) + 0.5)


@pytest.mark.parametrize("kind,stride,project,size", [
    ("basic", 1, False, 9), ("basic", 2, True, 9), ("basic", 2, True, 10), ("basic", 1, True, 8),
    ("bottleneck", 1, True, 7), ("bottleneck", 2, True, 11), ("bottleneck", 1, False, 6)])
def test_a_preactivation_block_equals_the_tf_codes_order_of_operations(kind, stride, project, size):
    """In float64 the two differ only by summation order inside the convolutions: a few ulps of
    the largest partial sum, far below 1e-9 relative."""
    gen = torch.Generator().manual_seed(1)
    cls = PreActBlock if kind == "basic" else PreActBottleneck
    filters = 8
    c_in = filters * cls.expansion if not project else 6
    block = cls(c_in, filters, stride, project, None).double().eval()
    _randomise_bn(block, gen)
    x = torch.randn(2, c_in, size, size, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ours, ref = block(x), _reference_block_v2(x, block, stride, kind == "bottleneck")
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())


@pytest.mark.parametrize("size", [7, 8, 56, 57, 112, 113])
def test_the_same_max_pool_equals_tfs_rule(size):
    """TF SAME: out = ceil(n / 2); window i covers [2i - pad_before, 2i - pad_before + 3) of the
    input, clipped to it (padding never wins a max)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, size, size + 1, generator=gen)
    out = SamePool2d(3, 2)(x)
    ph, pw = same_pads(size, 3, 2)[0], same_pads(size + 1, 3, 2)[0]
    ref = torch.empty(1, 2, math.ceil(size / 2), math.ceil((size + 1) / 2))
    for i in range(ref.shape[2]):
        for j in range(ref.shape[3]):
            r0, c0 = max(2 * i - ph, 0), max(2 * j - pw, 0)
            ref[0, :, i, j] = x[0, :, r0:2 * i - ph + 3, c0:2 * j - pw + 3].amax(dim=(1, 2))
    assert torch.equal(out, ref)
    square = x[..., :size]
    same_as_ceil_mode = torch.equal(SamePool2d(3, 2)(square), F.max_pool2d(square, 3, 2, ceil_mode=True))
    assert same_as_ceil_mode == (size % 2 == 0)  # odd sizes pad before the first window too


def test_bn_constants_are_the_tf_codes_and_bn_momentum_overrides_them():
    model = build_model("preact_resnet18", "imagenet", 128)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {(round(m.momentum, 12), m.eps) for m in bns} == {(0.003, 1e-5)}
    assert {m.momentum for m in build_model("vgg16", "imagenet", 8, bn_momentum=0.1).modules()
            if isinstance(m, nn.BatchNorm2d)} == {0.1}
    assert {m.momentum for m in build_model("resnet18", "imagenet", 8).modules()
            if isinstance(m, nn.BatchNorm2d)} == {0.1}


def test_too_small_inputs_and_stems_the_network_lacks_are_one_clear_message():
    assert (min_size("alexnet"), min_size("vgg16"), min_size("preact_resnet50")) == (195, 224, 1)
    with torch.device("meta"):
        build_model("alexnet", "imagenet", 8)(torch.empty(2, 3, 195, 195))  # the smallest that fits
        with pytest.raises(UserError, match=r"alexnet needs images of at least 195 px.*got 194 x 194"):
            build_model("alexnet", "imagenet", 8)(torch.empty(1, 3, 194, 194))
        with pytest.raises(UserError, match="vgg16 needs images of at least 224 px"):
            build_model("vgg16", "imagenet", 8).features(torch.empty(1, 3, 200, 200), ["conv1"])
    with pytest.raises(ValueError, match="stem 'small' is for the ResNets; alexnet"):
        ModelConfig(arch="alexnet", stem="small")
    with pytest.raises(UserError, match="vgg16 has no stem 'small'"):
        build_model("vgg16", "small", 8)


def test_the_v1_resnets_keep_torchvisions_names_and_initialisation():
    """Checkpoints, the foreign-checkpoint converter and Detectron2's converter read these names."""
    import torchvision

    torch.manual_seed(3)
    ours = build_model("resnet50", "imagenet", 128).trunk.state_dict()
    torch.manual_seed(3)
    ref = torchvision.models.resnet50(weights=None).state_dict()
    ref = {k: v for k, v in ref.items() if not k.startswith("fc.")}
    assert list(ours) == list(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
    assert np.isclose(sum(v.numel() for k, v in ours.items() if "running" not in k and "num_batches" not in k),
                      23_508_032)


def test_check_refuses_crops_smaller_than_the_network_takes_naming_each_key(tmp_path):
    """`localagg check` (validate_all): the embedded default's 40 px crops with model.arch alexnet."""
    from pathlib import Path

    import yaml

    from stages.params import validate_all

    params = yaml.safe_load((Path(__file__).resolve().parent.parent / "params.yaml").read_text())
    params["model"]["arch"] = "vgg16"
    params["transfer"]["object"].update(crop_size=224, eval_resize=256)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(UserError) as err:
        validate_all(path)
    lines = [line for line in str(err.value).splitlines() if "px that model.arch vgg16 needs" in line]
    assert [line.split(":")[0].strip(" -") for line in lines] == ["augment.crop_size", "transfer.transfer.crop_size"]
    assert "detection.seeds: vgg16 has no Faster R-CNN C4 detector" in str(err.value)
    params["augment"]["crop_size"] = 224
    params["transfer"]["transfer"].update(crop_size=224, eval_resize=256)
    params["detection"]["seeds"] = []  # no detection cells
    path.write_text(yaml.safe_dump(params))
    validate_all(path)
    params["model"]["arch"] = "preact_resnet50"  # ResNets take any size
    path.write_text(yaml.safe_dump(params))
    validate_all(path)


def test_the_recorded_bn_momentum_survives_the_conversion_to_torchs_sync_batch_norm():
    """On CUDA with sync_bn the pretraining record is written after nn.SyncBatchNorm replaced
    every BatchNorm2d (not a subclass of it): the momentum must still be found."""
    from localagg.models.batchnorm import set_sync_bn

    with torch.device("meta"):
        model = build_model("preact_resnet18", "imagenet", 8)
        assert round(model.bn_momentum(), 12) == 0.003
        set_sync_bn(model, native=True)
        assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        assert round(model.bn_momentum(), 12) == 0.003
        set_sync_bn(build_model("resnet18", "imagenet", 8), native=False)
