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

The pre-activation (v2) ResNets (arch preact_resnet18/50) keep the pipeline's own names
(preact_c4.py builds the C4 model from the same modules); only stage 4 moves to the head::

    trunk.conv1.weight, trunk.layer{1-3}.*   -> conv1.weight, layer{1-3}.*   (backbone.*)
    trunk.layer4.{b}.*                       -> res5.{b}.*                   (roi_heads.res5.*)
    trunk.bn.*  (the final BN)               -> res5.bn.*                    (roi_heads.res5.*)
    head.*, *.num_batches_tracked            dropped

so in that model every backbone and res5 tensor is pretrained; what Detectron2 adds (RPN,
box predictor) is trained from scratch, as for v1 (where the extra norm after res5 is too).
"""

from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

from ..errors import UserError
from ..models.preact_resnet import DEPTHS as _PREACT_LAYOUTS
from ..runtime import checkpoint as ckpt

# localagg archs that have a Detectron2 ResNet counterpart (RESNETS.DEPTH).
DEPTHS = {"resnet18": 18, "resnet50": 50}
# the pre-activation (v2) archs, built by preact_c4.py (RESNETS.DEPTH names the depth there too)
PREACT_DEPTHS = {arch: int(arch[len("preact_resnet"):]) for arch in _PREACT_LAYOUTS}
ARCHS = (*DEPTHS, *PREACT_DEPTHS)  # every arch detection takes
SHOWN = 12  # keys listed per problem in an error (the rest counted)
# Module that `LocalAggRes5ROIHeads` appends after res5 when asked ("extra norm after res5");
# it is not part of the pretrained network, so it is initialised fresh, not loaded.
EXTRA_NORM = "norm"
# What a C4 model adds to a pretrained backbone and trains from scratch: the RPN, the box
# predictor, and v1's extra norm after res5. `load_strict` fails on any other unfilled tensor.
FROM_SCRATCH = ("proposal_generator.", "roi_heads.box_predictor.", f"roi_heads.res5.{EXTRA_NORM}.")

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(.+)")
_PREACT_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.((?:bn[1-3]\.(?:weight|bias|running_mean|running_var))"
                           r"|(?:(?:conv[1-3]|shortcut)\.weight))")


def require_resnet(arch: str) -> None:
    """Detection (Faster R-CNN C4) takes a ResNet; a UserError for any other `model.arch`."""
    if arch not in ARCHS:
        raise UserError(
            f"detection (Faster R-CNN C4) needs a ResNet backbone: model.arch is {arch!r}, and detection takes "
            f"{', '.join(ARCHS)} with the imagenet stem. {arch} has no res4/res5 split for the C4 detector (the "
            "paper ran detection on ResNet-50 only); set model.arch to a ResNet to run the detection stage."
        )


def convert_to_detectron2(state_dict: dict, model_meta: dict) -> dict:
    """Rename an `EmbeddingNet` state dict (keys "trunk.*", "head.*") to the names of its
    Detectron2 C4 model: Detectron2's ResNet for v1, the pre-activation C4 model for v2.

    Raises `UserError` for a stem other than "imagenet", an arch without a C4 model, or a
    trunk key the renaming does not know (listing such keys; a v1 state dict under a v2 arch,
    or the reverse, is named as such).
    """
    arch, stem = model_meta.get("arch"), model_meta.get("stem")
    require_resnet(arch)
    if stem != "imagenet":
        raise UserError(
            f"only ResNet checkpoints ({', '.join(ARCHS)}) with the imagenet stem convert to Detectron2; "
            f"this one has arch {arch!r}, stem {stem!r}. Pretrain with model.stem: imagenet "
            "(the 3x3/1 'small' stem has no Detectron2 counterpart)."
        )
    rename = _preact_name if arch in PREACT_DEPTHS else _detectron2_name
    model: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("head.") or key.endswith(".num_batches_tracked"):
            continue
        name = rename(key[len("trunk."):]) if key.startswith("trunk.") else None
        if name is None:
            unknown.append(key)
            continue
        model[name] = value.detach().cpu().clone() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if unknown:
        found = _trunk_layout(k[len("trunk."):] for k in state_dict if k.startswith("trunk."))
        wanted = "preact" if arch in PREACT_DEPTHS else "v1"
        hint = (f" (they are a {_LAYOUT_NAMES[found]}'s, but the checkpoint says arch {arch!r}: "
                "convert it with the arch it was trained with)") if found not in (None, wanted) else ""
        raise UserError(f"checkpoint keys with no Detectron2 name for {arch}{hint}: {_listed(sorted(unknown))}")
    return {"model": model, "__author__": "localagg", "matching_heuristics": True}


_LAYOUT_NAMES = {"v1": "torchvision (v1) ResNet", "preact": "pre-activation (v2) ResNet"}


def _trunk_layout(keys) -> str | None:
    """"v1" for torchvision trunk keys (bn1, downsample), "preact" for v2 ones (bn, shortcut)."""
    keys = list(keys)
    if any(k.startswith("bn1.") or ".downsample." in k for k in keys):
        return "v1"
    if any(k.startswith("bn.") or ".shortcut." in k for k in keys):
        return "preact"
    return None


def _converted_layout(names) -> str | None:
    """"v1" for names of Detectron2's ResNet (stem.*), "preact" for the v2 C4 model's (conv1.*)."""
    names = set(names)
    return "v1" if "stem.conv1.weight" in names else "preact" if "conv1.weight" in names else None


def _listed(items: list[str]) -> str:
    """The first SHOWN items, comma-separated, and how many more."""
    more = f" ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def _preact_name(key: str) -> str | None:
    """The C4 model name of one v2 trunk key ("layer4.0.bn1.weight" -> "res5.0.bn1.weight"), None if unknown."""
    if key == "conv1.weight":
        return key
    if key.startswith("bn.") and key[3:] in _BN_FIELDS:
        return f"res5.{key}"
    match = _PREACT_BLOCK.fullmatch(key)
    if match is None:
        return None
    return f"res5.{match[2]}.{match[3]}" if match[1] == "4" else key


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
    shape mismatch, every backbone/res5 tensor of the model that the checkpoint does not
    fill, and every other tensor that is not one of the FROM_SCRATCH heads (a checkpoint of
    the other ResNet layout, v1 vs pre-activation, is named as such); the model is unchanged then.
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
    unaccounted = sorted(k for k in target if k not in wanted and not k.endswith(".num_batches_tracked")
                         and not k.startswith(FROM_SCRATCH))
    problems = []
    if unaccounted:
        problems.append(f"{len(unaccounted)} model tensor(s) neither pretrained nor a head trained from scratch "
                        f"({', '.join(FROM_SCRATCH)}): {', '.join(unaccounted)}")
    if unused:
        problems.append(f"{len(unused)} checkpoint key(s) not in the Detectron2 model: {', '.join(unused)}")
    if missing:
        problems.append(f"{len(missing)} model tensor(s) the checkpoint does not fill: {', '.join(missing)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {', '.join(wrong_shape)}")
    if problems:
        found = _converted_layout(weights)
        built = _converted_layout(k[len("backbone."):] for k in target if k.startswith("backbone."))
        if found and built and found != built:
            raise UserError(
                f"the converted backbone is a {_LAYOUT_NAMES[found]}'s, but the Detectron2 model is built for a "
                f"{_LAYOUT_NAMES[built]}: convert and build with the same model.arch "
                f"({len(unused)} checkpoint key(s) have no place in the model, {len(missing)} model tensor(s) unfilled)."
            )
        raise UserError(
            "the converted backbone does not match the Detectron2 model (is RESNETS.DEPTH the "
            "checkpoint's arch?):\n  " + "\n  ".join(problems)
        )
    state = {key: torch.as_tensor(weights[name]) for key, name in mapped.items()}
    d2_model.load_state_dict(state, strict=False)
