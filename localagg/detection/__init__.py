"""Detection transfer (the paper's third result): Faster R-CNN C4 on PASCAL VOC with Detectron2.

    protocol `DetectionConfig`: the protocol's knobs (no Detectron2 import)
    convert  localagg checkpoint -> Detectron2 names (a .pth), strict loading into the model
    config   `DetectionConfig` -> Detectron2 config; the res5 ROI head
    preact_c4  the pre-activation (v2) ResNets as a C4 backbone and res5 ROI head
    data     VOC manifest -> Detectron2 datasets; the training stream, a function of the iteration
    train    fine-tune (resumable), test with the VOC evaluator

Names are imported on first use (PEP 562), so `localagg.detection.protocol` can be read
without loading Detectron2; every other submodule imports it.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "DetectionConfig": "protocol",
    "build_cfg": "config",
    "convert_to_detectron2": "convert",
    "load_converted": "convert",
    "load_strict": "convert",
    "save_converted": "convert",
    "launch_training": "train",
    "register_voc_manifest": "data",
    "train_detector": "train",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
