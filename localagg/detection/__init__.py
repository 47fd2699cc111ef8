"""Detection transfer (the paper's third result): Faster R-CNN C4 on PASCAL VOC with Detectron2.

    convert  localagg checkpoint -> Detectron2 names (.pkl), strict loading into the model
    config   `DetectionConfig` (the protocol's knobs) -> Detectron2 config; the res5 ROI head
    train    VOC manifest -> Detectron2 datasets; fine-tune, test with the VOC evaluator

Importing this package imports Detectron2; the rest of localagg does not need it.
"""

from .config import DetectionConfig, build_cfg
from .convert import convert_to_detectron2, load_detectron2_pkl, load_strict, save_detectron2_pkl
from .train import launch_training, register_voc_manifest, train_detector

__all__ = [
    "DetectionConfig",
    "build_cfg",
    "convert_to_detectron2",
    "launch_training",
    "load_detectron2_pkl",
    "load_strict",
    "register_voc_manifest",
    "save_detectron2_pkl",
    "train_detector",
]
