"""The paper: its published numbers, its recipe key by key, and where this implementation departs
from the authors' code. The only place in the code that holds them.

Sources: Zhuang, Zhai, Yamins, ICCV 2019 (arXiv 1903.12355) and the authors' code
(neuroailab/LocalAggregation, TensorFlow; its PyTorch port; their detector fork
neuroailab/tf-faster-rcnn), as collected in the project's shared docs (la-method.md) and
read from those repositories. All numbers are ResNet-50, in percent. The paper evaluates
the readout with 10 crops and also reports the single centre crop; the only number marked
as centre crop is LA's 58.8 on ImageNet, so every other linear number is filed as 10-crop.

`RECIPE` maps params keys to the paper's values: the paper preset must set each of them
(a test checks it), and the report calls a number comparable only when the run that made it
used them (localagg.report.comparability).
"""

from __future__ import annotations

from typing import Any

PAPER_ARCH = "resnet50"

# The paper's dataset for each role of this pipeline (the names `prepare` writes).
BENCHMARK = {"object": "imagenet", "transfer": "places205", "detection": "voc07"}

# (train, val / test) images of the paper's datasets, as released.
DATASET_SIZES = {"imagenet": (1_281_167, 50_000), "places205": (2_448_873, 20_500), "voc07": (5_011, 4_952)}
# The paper's detection sets: VOC07 trainval only (PIRL's table lists LA's 69.1 among methods
# fine-tuned on VOC07 trainval; the authors' detector trains `voc_2007_trainval`).
DETECTION_SETS = {"train": [["VOC2007", "trainval"]], "test": [["VOC2007", "test"]]}
# The IR numbers the paper compares with are Wu et al.'s 200-epoch IR, not LA's 10-epoch warm start.
IR_BASELINE_EPOCHS = 200

_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")

# (model, task, dataset, layer, metric) -> percent
PUBLISHED: dict[tuple[str, str, str, str, str], float] = {
    ("la", "linear", "imagenet", "conv5", "top1_10crop"): 60.2,
    ("la", "linear", "imagenet", "conv5", "top1"): 58.8,
    ("la", "linear", "places205", "conv5", "top1_10crop"): 50.1,
    ("la", "detection", "voc07", "", "AP50"): 69.1,
    ("ir", "detection", "voc07", "", "AP50"): 65.4,
    **{("ir", "linear", "imagenet", layer, "top1_10crop"): v
       for layer, v in zip(_LAYERS, (15.3, 18.8, 24.9, 40.6, 54.0))},
    **{("ir", "linear", "places205", layer, "top1_10crop"): v
       for layer, v in zip(_LAYERS, (18.1, 22.3, 29.7, 42.1, 45.5))},
}

# The headline table: (label, role, task, layer, metric).
HEADLINE = (
    ("ImageNet linear top-1, conv5, 10-crop", "object", "linear", "conv5", "top1_10crop"),
    ("ImageNet linear top-1, conv5, centre crop", "object", "linear", "conv5", "top1"),
    ("Places205 linear top-1, conv5, 10-crop", "transfer", "linear", "conv5", "top1_10crop"),
    ("VOC07 test detection AP50", "detection", "detection", "", "AP50"),
)

_TF = "TF code (neuroailab/LocalAggregation)"
_IMAGENET_AUG = "la-method.md: the ImageNet recipe (RandomResizedCrop 0.2-1, grey 0.2, jitter 0.4, flip)"
_READOUT = f"{_TF}: trans_param_setter.py, la_trans_final.json"
_VOC07 = ("VISSL's Detectron2 VOC07-trainval protocol (rn50_transfer_voc07_detectron2_e2e.yaml, as in PIRL): "
          "the authors' detector trained on VOC07 trainval only")

# params key -> (the paper's value, where it comes from)
RECIPE: dict[str, tuple[Any, str]] = {
    "prepare.object.source": ("imagenet", "the paper: ImageNet (ILSVRC2012)"),
    "prepare.object.num_train": (0, "all 1,281,167 training images"),
    "prepare.object.num_val": (0, "all 50,000 validation images"),
    "prepare.transfer.source": ("places205", "the paper: Places205"),
    "prepare.detection.source": ("voc", "the paper: PASCAL VOC"),
    "prepare.detection.trainval": (DETECTION_SETS["train"], "tf-faster-rcnn fork: voc_2007_trainval"),
    "prepare.detection.test": (DETECTION_SETS["test"], "the paper: VOC2007 test"),
    "model.arch": ("resnet50", "the paper's ResNet-50 rows"),
    "model.stem": ("imagenet", "ResNet's 7x7/2 stem + max-pool"),
    "model.embedding_dim": (128, "la-method.md: linear head to D = 128"),
    "augment.crop_size": (224, _IMAGENET_AUG),
    "augment.crop_scale": ([0.2, 1.0], _IMAGENET_AUG),
    "augment.crop_ratio": ([0.75, 1.3333333], _IMAGENET_AUG),
    "augment.hflip": (True, _IMAGENET_AUG),
    "augment.color_jitter": ([0.4, 0.4, 0.4, 0.4], _IMAGENET_AUG),
    "augment.grayscale_p": (0.2, _IMAGENET_AUG),
    "augment.mean": ([0.485, 0.456, 0.406], "ImageNet mean"),
    "augment.std": ([0.229, 0.224, 0.225], "ImageNet std"),
    # what IR and LA share: the optimiser, the bank and the batch norm of one GPU
    **{f"{stage}.{key}": value for stage in ("pretrain_ia", "pretrain_la") for key, value in {
        "batch_size": (128, f"{_TF}: param_setter.py batch_size"),
        "lr": (0.03, f"{_TF}: init_lr"),
        "momentum": (0.9, f"{_TF}: SGD momentum 0.9"),
        "weight_decay": (0.0001, f"{_TF}: 1e-4 on all but batch-norm variables"),
        "temperature": (0.07, f"{_TF}: instance_t"),
        "bank_momentum": (0.5, f"{_TF}: instance_m"),
        "sync_bn": (True, "the authors trained on one GPU: batch norm over the whole batch of 128"),
        "lr_gamma": (0.1, f"{_TF}: lr x 0.1 at each lr boundary"),
    }.items()},
    "pretrain_ia.epochs": (10, f"{_TF}: res50_IR, 100,090 steps = 10 epochs"),
    "pretrain_ia.lr_drops": ([], f"{_TF}: no lr_boundaries in res50_IR (constant lr)"),
    "pretrain_ia.num_negatives": (4096, f"{_TF}: instance_k noise samples"),
    "pretrain_ia.nce_z_per_image": (2876934.2 / 1281167, f"{_TF}: instance_Z = 2876934.2 / 1281167 * N"),
    "pretrain_ia.bank_init": ("uniform", f"{_TF}: memory_bank.py, uniform in +-1/sqrt(D/3)"),
    "pretrain_ia.bank_normalize_init": (False, f"{_TF}: the bank is not normalised at init"),
    "pretrain_la.epochs": (190, f"{_TF}: res50_LA, 2,001,800 steps = 200 epochs with IR's 10"),
    "pretrain_la.lr_drops": ([142, 179], f"{_TF}: lr_boundaries 1,522,000 and 1,895,857 = epochs 152.06 and 189.42 "
                                         "of 200, i.e. LA epochs 142 and 179 at epoch boundaries"),
    "pretrain_la.k": (4096, f"{_TF}: background neighbours = instance_k"),
    "pretrain_la.num_kmeans": (10, f"{_TF}: kmeans_k, 10 clusterings"),
    "pretrain_la.num_clusters": (30000, f"{_TF}: kmeans_k, 30,000 clusters each"),
    "pretrain_la.kmeans_iterations": (20, f"{_TF}: cluster_km.py niter"),
    "pretrain_la.kmeans_seed": (1234, f"{_TF}: cluster_km.py seed 1234 + h"),
    "supervised.epochs": (90, "torchvision's reference recipe (references/classification)"),
    "supervised.batch_size": (256, "torchvision's reference recipe"),
    "supervised.lr": (0.1, "torchvision's reference recipe"),
    "supervised.lr_drops": ([30, 60], "torchvision's reference recipe: lr x0.1 every 30 epochs"),
    "supervised.weight_decay": (0.0001, "torchvision's reference recipe"),
    "supervised.augment": ({"crop_scale": [0.08, 1.0], "color_jitter": [0.0, 0.0, 0.0, 0.0], "grayscale_p": 0.0},
                           "torchvision's reference recipe: RandomResizedCrop + flip only"),
    **{f"transfer.{role}.{key}": value for role in ("object", "transfer") for key, value in {
        "lr": (0.01, f"{_READOUT}: lr 0.01"),
        "batch_size": (128, f"{_READOUT}: batch 128"),
        "momentum": (0.9, f"{_READOUT}: momentum 0.9"),
        "weight_decay": (0.0001, f"{_READOUT}: 1e-4 on the classifiers"),
        "crop_size": (224, f"{_READOUT}: 224 crops"),
        "eval_resize": (256, f"{_READOUT}: prep_10crops_validate, short side 256"),
        "ten_crop": (True, f"{_READOUT}: 10 crops, softmax averaged"),
        "pool_rule": ("official", f"{_READOUT}: get_resnet_all_layers, pool by 2 or 4 above 200,000 dims"),
        "pool_target_dims": (200000, f"{_READOUT}: the 200,000 dims limit"),
        "conv1_point": ("after_maxpool", f"{_READOUT}: ENDING_POINTS[0] is the max-pooled conv1"),
        "standardize": (False, f"{_READOUT}: the classifiers read the raw pooled features"),
    }.items()},
    "transfer.object.epochs": (70, f"{_READOUT}: lr_boundaries 30 and 60 epochs after LA, stopped at 70"),
    "transfer.object.lr_drops": ([30, 60], f"{_READOUT}: lr_boundaries 2,302,070 and 2,602,340"),
    "transfer.object.train_augment": ("pretraining", f"{_READOUT}: resnet_train, the pretraining augmentation"),
    "transfer.transfer.epochs": (37, f"{_READOUT}: the same 700,630 steps as ImageNet = 36.62 Places205 epochs"),
    "transfer.transfer.lr_drops": ([16, 31], f"{_READOUT}: the same steps as ImageNet's drops = epochs 15.69, 31.39"),
    "transfer.transfer.train_augment": ("resize_random_crop_flip",
                                        f"{_READOUT}: alexnet_crop_flip, random 224 crop of the central 256 + flip"),
    "transfer.knn.k": (200, "InstDisc's kNN monitor: k = 200"),
    "transfer.knn.temperature": (0.07, "InstDisc's kNN monitor: exp(sim / 0.07)"),
    "detection.max_iter": (12500, _VOC07),
    "detection.ims_per_batch": (16, _VOC07),
    "detection.base_lr": (0.02, _VOC07),
    "detection.steps": ([9500], _VOC07),
    "detection.warmup_iters": (100, _VOC07),
    "detection.weight_decay": (0.0001, _VOC07),
    "detection.min_size_train": (list(range(480, 801, 32)), _VOC07),
    "detection.max_size_train": (1333, _VOC07),
    "detection.min_size_test": (800, _VOC07),
    "detection.max_size_test": (1333, _VOC07),
    "detection.norm": ("SyncBN", _VOC07),
    "detection.extra_norm_after_res5": (True, _VOC07),
    "detection.freeze_at": (0, _VOC07),
    "detection.batch_size_per_image": (512, _VOC07),
    "detection.proposals_train": (2000, _VOC07),
    "detection.proposals_test": (1000, _VOC07),
    "detection.pooler_resolution": (14, _VOC07),
}

# Where this implementation, run with the paper preset, still departs from the authors' code.
DEVIATIONS = (
    "Backbone: torchvision's ResNet-50 (v1) instead of the pre-activation ResNet-50 (v2) of the TF code; "
    "the detector's and readout's layer names follow v1.",
    "LA starts from the IR model and memory bank; the TF code also carried IR's optimiser state (momentum) and "
    "step count.",
    "LA's lr drops happen at epoch boundaries (LA epochs 142 and 179, i.e. 152 and 189 of 200); the TF code drops "
    "at steps 1,522,000 and 1,895,857 (epochs 152.06 and 189.42). The Places205 readout runs 37 epochs with drops "
    "at 16 and 31 for the TF code's 36.62, 15.69 and 31.39 (the steps of 70 ImageNet epochs).",
    "Readout on real data: each image is decoded to its central 256 x 256 square, so ImageNet's random resized "
    "training crops and the four corner crops of the 10-crop evaluation come from that square; the TF code takes "
    "them from the whole image resized to a short side of 256 (its Places205 training crops also come from the "
    "central square).",
    "Augmentation runs batched on the device: colour jitter in the fixed order brightness, contrast, saturation, "
    "hue (the TF code draws a random order), and crops resampled bilinearly without antialiasing.",
    "Detection: Detectron2 Faster R-CNN R50-C4 with VISSL's VOC07-trainval protocol (12.5k iterations, batch 16, "
    "lr 0.02 with a step at 9.5k, multi-scale 480-800, SyncBN, nothing frozen); the authors used their TF Faster "
    "R-CNN fork (70k iterations at batch 1, lr 0.001 with a step at 50k, scale 600, frozen batch-norm statistics, "
    "conv1 and res2 frozen).",
    "IR baseline: the paper's IR numbers come from Wu et al.'s 200-epoch IR; this pipeline's `ir` is LA's 10-epoch "
    "warm start, so its numbers are not compared with them unless pretrain_ia.epochs is 200.",
    "Greyscale conversion comes after the colour jitter; the TF preprocessing converts before it.",
    "Mixed precision: on CUDA the frozen readout backbone and pretraining run under bfloat16 autocast (amp: auto; "
    "the records say what ran: amp bf16 or off); the authors trained in float32. Set amp: off in pretrain_ia, "
    "pretrain_la and transfer.* for their precision (about half the GPU throughput). It may move numbers by "
    "tenths of a point; no run here measured how much.",
    "Batch norm: torch's running-statistics momentum 0.1 where the TF ResNet uses decay 0.997 (momentum 0.003). The "
    "readout and the kNN evaluate the frozen network in eval mode with those statistics, so this may change every "
    "transfer number.",
    "Readout classifiers start from torch's default Linear initialisation; the TF code uses variance scaling.",
    "Resampling: bilinear with antialiasing (Pillow, torchvision) where the TF code resizes with resize_area.",
    "The supervised reference follows torchvision's recipe (90 epochs, batch 256, lr 0.1), without weight decay on "
    "batch-norm parameters; the paper quotes supervised numbers from other work.",
)


def paper_value(model: str, role: str, task: str, layer: str, metric: str) -> float | None:
    """The paper's number for a row of the paper's benchmark for `role` (None when it has none)."""
    return PUBLISHED.get((model, task, BENCHMARK[role], layer, metric))
