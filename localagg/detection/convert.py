"""Convert a localagg (torchvision ResNet) checkpoint to Detectron2 names, and load it strictly.

Renaming (torchvision -> Detectron2), as MoCo's and VISSL's converters do::

    trunk.conv1.weight              -> stem.conv1.weight
    trunk.bn1.{weight,bias,running_mean,running_var}  -> stem.conv1.norm.*
    trunk.layer{N}.{b}.conv{K}.weight                 -> res{N+1}.{b}.conv{K}.weight
    trunk.layer{N}.{b}.bn{K}.*                        -> res{N+1}.{b}.conv{K}.norm.*
    trunk.layer{N}.{b}.downsample.0.weight            -> res{N+1}.{b}.shortcut.weight
    trunk.layer{N}.{b}.downsample.1.*                 -> res{N+1}.{b}.shortcut.norm.*
    head.*, *.num_batches_tracked                     dropped

The result is {"model": {name: tensor}, "__author__": "localagg", "matching_heuristics": True}
("__author__", anything but "Caffe2", keeps Detectron2's checkpointer from renaming the keys
again as it would a Caffe2 blob), saved with torch.save (`save_converted`) and read back
without unpickling code (`load_converted`). Only the imagenet stem (7x7/2 conv + 3x3/2 max-pool) is
Detectron2's `BasicStem`; torchvision's blocks put the stride in the 3x3 conv, so the
Detectron2 config needs RESNETS.STRIDE_IN_1X1 = False.

In the C4 design the backbone stops at res4 and res5 lives in the ROI head
(`roi_heads.res5`); `load_strict` maps "res5.*" there and "stem.*", "res2..4.*" to
"backbone.*", checks that every converted tensor lands in the model with its shape and that
every backbone and res5 tensor is filled, and only then loads.
"""

from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

from ..errors import UserError
from ..runtime import checkpoint as ckpt

# localagg archs that have a Detectron2 ResNet counterpart (RESNETS.DEPTH).
DEPTHS = {"resnet18": 18, "resnet50": 50}
# Module that `LocalAggRes5ROIHeads` appends after res5 when asked ("extra norm after res5");
# it is not part of the pretrained network, so it is initialised fresh, not loaded.
EXTRA_NORM = "norm"

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(.+)")


def convert_to_detectron2(state_dict: dict, model_meta: dict) -> dict:
    """Rename an `EmbeddingNet` state dict (keys "trunk.*", "head.*") to Detectron2's ResNet names.

    Raises `UserError` for a stem other than "imagenet", an arch without a Detectron2
    ResNet, or a trunk key the renaming does not know (listing every such key).
    """
    arch, stem = model_meta.get("arch"), model_meta.get("stem")
    if arch not in DEPTHS or stem != "imagenet":
        raise UserError(
            f"only ResNet checkpoints ({', '.join(DEPTHS)}) with the imagenet stem convert to Detectron2; "
            f"this one has arch {arch!r}, stem {stem!r}. Pretrain with model.stem: imagenet "
            "(the 3x3/1 'small' stem has no Detectron2 counterpart)."
        )
    model: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("head.") or key.endswith(".num_batches_tracked"):
            continue
        name = _detectron2_name(key[len("trunk."):]) if key.startswith("trunk.") else None
        if name is None:
            unknown.append(key)
            continue
        model[name] = value.detach().cpu().clone() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if unknown:
        raise UserError(f"checkpoint keys with no Detectron2 name: {', '.join(sorted(unknown))}")
    return {"model": model, "__author__": "localagg", "matching_heuristics": True}


def _detectron2_name(key: str) -> str | None:
    """The Detectron2 name of one torchvision ResNet key ("layer1.0.bn2.weight"), None if unknown."""
    if key == "conv1.weight":
        return "stem.conv1.weight"
    if key.startswith("bn1.") and key[4:] in _BN_FIELDS:
        return f"stem.conv1.norm.{key[4:]}"
    match = _BLOCK.fullmatch(key)
    if match is None:
        return None
    stage, block, rest = f"res{int(match[1]) + 1}", match[2], match[3]
    parts = rest.split(".")
    if len(parts) == 2 and re.fullmatch(r"conv[1-3]", parts[0]) and parts[1] == "weight":
        return f"{stage}.{block}.{rest}"
    if len(parts) == 2 and re.fullmatch(r"bn[1-3]", parts[0]) and parts[1] in _BN_FIELDS:
        return f"{stage}.{block}.conv{parts[0][2]}.norm.{parts[1]}"
    if rest == "downsample.0.weight":
        return f"{stage}.{block}.shortcut.weight"
    if len(parts) == 3 and parts[:2] == ["downsample", "1"] and parts[2] in _BN_FIELDS:
        return f"{stage}.{block}.shortcut.norm.{parts[2]}"
    return None


def save_converted(obj: dict, path: str | os.PathLike) -> None:
    """Write a converted checkpoint to `path` (atomically) with torch.save: tensors and plain
    values only, so `load_converted` reads it without unpickling code, and Detectron2's own
    DetectionCheckpointer loads it as MODEL.WEIGHTS (a .pth with "model", "__author__" and
    "matching_heuristics")."""
    ckpt.save(obj, path)


def load_converted(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by `save_converted` (weights only); `UserError` if it is missing or foreign."""
    obj = ckpt.load(path, "converted backbone")
    if not isinstance(obj.get("model"), dict):
        raise UserError(f"{path} is not a converted checkpoint (a dict with a 'model' dict); convert it again.")
    return obj


def model_key(name: str) -> str:
    """Where a converted name lives in a Faster R-CNN C4 model: res5 in the ROI head, the rest in the backbone."""
    return f"roi_heads.{name}" if name.startswith("res5.") else f"backbone.{name}"


def pretrained_keys(model: nn.Module) -> list[str]:
    """The model's tensors a converted backbone must fill: backbone and res5, except
    num_batches_tracked and the extra norm after res5."""
    extra = f"roi_heads.res5.{EXTRA_NORM}."
    return [
        k for k in model.state_dict()
        if (k.startswith("backbone.") or k.startswith("roi_heads.res5."))
        and not k.endswith(".num_batches_tracked") and not k.startswith(extra)
    ]


def load_strict(d2_model: nn.Module, converted: dict) -> None:
    """Load a converted backbone into a Detectron2 Faster R-CNN C4 model, all or nothing.

    Raises `UserError` listing every converted key with no place in the model, every
    shape mismatch, and every backbone/res5 tensor of the model that the checkpoint does
    not fill; the model is unchanged then.
    """
    weights = converted["model"] if "model" in converted else converted
    target = d2_model.state_dict()
    wanted = set(pretrained_keys(d2_model))
    mapped = {model_key(name): name for name in weights}
    unused = sorted(name for key, name in mapped.items() if key not in wanted)
    missing = sorted(wanted - set(mapped))
    wrong_shape = sorted(
        f"{name} {tuple(torch.as_tensor(weights[name]).shape)} vs {tuple(target[key].shape)} in the model"
        for key, name in mapped.items()
        if key in wanted and tuple(torch.as_tensor(weights[name]).shape) != tuple(target[key].shape)
    )
    problems = []
    if unused:
        problems.append(f"{len(unused)} checkpoint key(s) not in the Detectron2 model: {', '.join(unused)}")
    if missing:
        problems.append(f"{len(missing)} model tensor(s) the checkpoint does not fill: {', '.join(missing)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {', '.join(wrong_shape)}")
    if problems:
        raise UserError(
            "the converted backbone does not match the Detectron2 model (is RESNETS.DEPTH the "
            "checkpoint's arch?):\n  " + "\n  ".join(problems)
        )
    state = {key: torch.as_tensor(weights[name]) for key, name in mapped.items()}
    d2_model.load_state_dict(state, strict=False)
