"""The paper: its published numbers, its recipe key by key, and where this implementation departs
from the authors' code. The only place in the code that holds them.

Sources: Zhuang, Zhai, Yamins, ICCV 2019 (arXiv 1903.12355) and the authors' code
(neuroailab/LocalAggregation, TensorFlow; its PyTorch port; their detector fork
neuroailab/tf-faster-rcnn), as collected in the project's shared docs (la-method.md) and
read from those repositories. The published numbers are ResNet-50's, in percent (the only ones
verified from a primary source here; the paper's ResNet-18, AlexNet and VGG16 rows are not, so
`PUBLISHED` has none for them and the report prints those runs without a difference from the
paper's). The paper evaluates
the readout with 10 crops and also reports the single centre crop; the only number marked
as centre crop is LA's 58.8 on ImageNet, so every other linear number is filed as 10-crop.

`NETWORKS` holds one recipe per paper network (params key -> (value, source)): what all share,
with each network's own keys over it; `RECIPE` is ResNet-50's. Each paper preset sets every key
of its network's recipe (`preset_recipe`; a test checks it key by key), and the report calls a
number comparable only when the run that made it used its network's recipe
(localagg.report.comparability). Epochs and lr drops come from the TF configs' global step
counts (exp_configs/la_final.json, la_trans_final.json, la_plc_trans_final.json): an ImageNet
epoch is 10,009 steps at batch 128 and 5,004 at batch 256 (param_setter.py: 1,281,167 //
batch_size); LA's steps continue IR's 100,090 and the readouts' continue LA's; a Places205
epoch at batch 128 is 2,448,873 / 128 = 19,131.8 steps. The pipeline drops the lr at epoch
boundaries, so fractional drops are rounded to the nearest epoch (listed under the network's
deviations).
"""

from __future__ import annotations

from typing import Any

# the paper's networks: their names in the report, and the backbone the authors built (model.arch)
NETWORK_NAMES = {"resnet50": "ResNet-50", "resnet18": "ResNet-18", "alexnet": "AlexNet", "vgg16": "VGG16"}
PAPER_ARCHS = {"resnet50": "preact_resnet50", "resnet18": "preact_resnet18", "alexnet": "alexnet", "vgg16": "vgg16"}
# torchvision's v1 ResNets stand in for the authors' pre-activation ones, as in the community's tables
# (la-method.md: "acceptable when the report says so"): a v1 run is compared with its network's row,
# and the report lists the backbone under Deviations.
V1_SUBSTITUTES = {"resnet50": "resnet50", "resnet18": "resnet18"}
# preset -> (the paper network, the model.arch it sets)
PRESETS = {"paper-resnet50": ("resnet50", "preact_resnet50"), "paper-resnet50-v1": ("resnet50", "resnet50"),
           "paper-resnet18": ("resnet18", "preact_resnet18"), "paper-alexnet": ("alexnet", "alexnet"),
           "paper-vgg16": ("vgg16", "vgg16")}


def network_of(arch: str | None) -> str | None:
    """The paper network whose rows a run of `arch` stands beside (None: the paper has no such row)."""
    return {**{a: n for n, a in PAPER_ARCHS.items()}, **V1_SUBSTITUTES}.get(str(arch))

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

# network -> (model, task, dataset, layer, metric) -> percent; only ResNet-50's are verified (la-method.md)
PUBLISHED: dict[str, dict[tuple[str, str, str, str, str], float]] = {"resnet50": {
    ("la", "linear", "imagenet", "conv5", "top1_10crop"): 60.2,
    ("la", "linear", "imagenet", "conv5", "top1"): 58.8,
    ("la", "linear", "places205", "conv5", "top1_10crop"): 50.1,
    ("la", "detection", "voc07", "", "AP50"): 69.1,
    ("ir", "detection", "voc07", "", "AP50"): 65.4,
    **{("ir", "linear", "imagenet", layer, "top1_10crop"): v
       for layer, v in zip(_LAYERS, (15.3, 18.8, 24.9, 40.6, 54.0))},
    **{("ir", "linear", "places205", layer, "top1_10crop"): v
       for layer, v in zip(_LAYERS, (18.1, 22.3, 29.7, 42.1, 45.5))},
}}

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

# params key -> (the paper's value, where it comes from): what the four networks share
_SHARED: dict[str, tuple[Any, str]] = {
    "prepare.object.source": ("imagenet", "the paper: ImageNet (ILSVRC2012)"),
    "prepare.object.num_train": (0, "all 1,281,167 training images"),
    "prepare.object.num_val": (0, "all 50,000 validation images"),
    "prepare.transfer.source": ("places205", "the paper: Places205"),
    "prepare.detection.source": ("voc", "the paper: PASCAL VOC"),
    "prepare.detection.trainval": (DETECTION_SETS["train"], "tf-faster-rcnn fork: voc_2007_trainval"),
    "prepare.detection.test": (DETECTION_SETS["test"], "the paper: VOC2007 test"),
    "model.stem": ("imagenet", "the networks' own ImageNet stems (ResNet: 7x7/2 + max-pool)"),
    "model.bn_momentum": (0.003, f"{_TF}: batch-norm decay 0.997 (torch momentum 1 - 0.997)"),
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
    "pretrain_la.k": (4096, f"{_TF}: background neighbours = instance_k"),
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
        "weight_decay": (0.0001, f"{_READOUT}: weight_decay default 1e-4 on the classifiers"),
        "crop_size": (224, f"{_READOUT}: 224 crops"),
        "eval_resize": (256, f"{_READOUT}: prep_10crops_validate, short side 256"),
        "ten_crop": (True, f"{_READOUT}: 10 crops, softmax averaged"),
        "pool_rule": ("official", f"{_READOUT}: get_resnet_all_layers, pool by 2 or 4 above 200,000 dims"),
        "pool_target_dims": (200000, f"{_READOUT}: the 200,000 dims limit"),
        "standardize": (False, f"{_READOUT}: the classifiers read the raw pooled features"),
    }.items()},
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

_TRANS = f"{_TF}: la_trans_final.json (ImageNet) and la_plc_trans_final.json (Places205)"
_PLACES_STEPS = "Places205 epochs of 19,131.8 steps"


def _resnet(network: str, la_drops: tuple[list[int], str]) -> dict[str, tuple[Any, str]]:
    """The ResNets' own keys: IR 10 + LA 190 epochs, 10 x 30,000 clusters, the readout of
    res50/res18 in la_trans_final.json (the same steps for both)."""
    tag = {"resnet50": "res50", "resnet18": "res18"}[network]
    return {
        "model.arch": (PAPER_ARCHS[network], f"{_TF}: resnet_model.py, TF-official v2 (DEFAULT_VERSION = 2), "
                                             + ("res50_LA's model_type resnet50" if tag == "res50" else
                                                "param_setter.py's default model_type resnet18 (res18_LA sets none)")),
        "pretrain_la.epochs": (190, f"{_TF}: {tag}_LA train_num_steps 2,001,800 = 200 x 10,009, IR's 10 epochs "
                                    "included: LA 190"),
        "pretrain_la.lr_drops": la_drops,
        "pretrain_la.num_kmeans": (10, f"{_TF}: {tag}_LA kmeans_k, 10 clusterings"),
        "pretrain_la.num_clusters": (30000, f"{_TF}: {tag}_LA kmeans_k, 30,000 clusters each"),
        **_readout(
            conv1=("after_maxpool", f"{_TRANS}: get_all_layers {'1,4,8,14,17' if tag == 'res50' else '1,3,5,7,9'}; "
                                    "ENDING_POINTS[1] is the first block's BN-ReLU of the max-pooled stem"),
            imagenet=(70, [30, 60], f"trans_{tag}_LA: from LA's step 2,001,800, lr_boundaries 2,302,070 and "
                                    "2,602,340 = 30 and 60 epochs of 10,009 steps, train_num_steps 2,702,430 = 70"),
            places=(37, [16, 31], f"plc_trans_{tag}_LA: ImageNet's steps, 300,270, 600,540 and 700,630 = 15.69, "
                                  f"31.39 and 36.62 {_PLACES_STEPS}"),
            imagenet_augment=("pretraining", "train_crop default: resnet_train, the pretraining augmentation")),
    }


def _readout(conv1, imagenet, places, imagenet_augment, weight_decay=None) -> dict[str, tuple[Any, str]]:
    """A network's readout keys: conv1's point, each role's epochs and drops, ImageNet's training crops."""
    out = {"transfer.object.train_augment": (imagenet_augment[0], f"{_TRANS}: {imagenet_augment[1]}")}
    for role, (epochs, drops, how) in (("object", imagenet), ("transfer", places)):
        out[f"transfer.{role}.conv1_point"] = conv1
        out[f"transfer.{role}.epochs"] = (epochs, f"{_TF}: {how} (the stop is the configs' train_num_steps, which "
                                                    "trans_param_setter.py does not read: its num_steps is 2,000 "
                                                    "epochs)")
        out[f"transfer.{role}.lr_drops"] = (drops, f"{_TF}: {how}")
        if weight_decay is not None:
            out[f"transfer.{role}.weight_decay"] = weight_decay
    return out


# network -> its own keys over _SHARED
_OWN: dict[str, dict[str, tuple[Any, str]]] = {
    "resnet50": _resnet("resnet50", ([142, 179], f"{_TF}: res50_LA lr_boundaries 1,522,000 and 1,895,857 = global "
                                                 "epochs 152.06 and 189.42 (/ 10,009), LA epochs 142.06 and 179.42: "
                                                 "142 and 179")),
    "resnet18": _resnet("resnet18", ([150, 177], f"{_TF}: res18_LA lr_boundaries 1,600,000 and 1,873,411 = global "
                                                 "epochs 159.86 and 187.17 (/ 10,009), LA epochs 149.86 and 177.17: "
                                                 "150 and 177")),
    "alexnet": {
        "model.arch": ("alexnet", f"{_TF}: alexnet_LA model_type alexnet_bn_no_drop (alexnet_model.py)"),
        "pretrain_la.epochs": (150, f"{_TF}: alexnet_LA train_num_steps 1,601,440 = 160 x 10,009, IR's 100,090 "
                                    "included: LA 1,501,350 steps = 150 epochs"),
        "pretrain_la.lr_drops": ([109, 132], f"{_TF}: alexnet_LA lr_boundaries 1,190,000 and 1,423,100 = global "
                                             "epochs 118.89 and 142.18 (/ 10,009), LA epochs 108.89 and 132.18: "
                                             "109 and 132"),
        "pretrain_la.num_kmeans": (3, f"{_TF}: alexnet_LA kmeans_k, 3 clusterings"),
        "pretrain_la.num_clusters": (30000, f"{_TF}: alexnet_LA kmeans_k, 30,000 clusters each"),
        **_readout(
            conv1=("before_maxpool", f"{_TRANS}: get_all_layers conv1..conv5, get_alexnet_all_layers reads conv1's "
                                     "BN-ReLU before pool1"),
            imagenet=(65, [45, 55], "trans_alexnet_LA: from LA's step 1,601,440, lr_boundaries 2,051,845 and "
                                    "2,151,935 = 45 and 55 epochs of 10,009 steps, train_num_steps 2,252,025 = 65"),
            places=(34, [24, 29], "plc_trans_alexnet_LA: ImageNet's steps, 450,405, 550,495 and 650,585 = 23.54, "
                                  f"28.77 and 34.01 {_PLACES_STEPS}: 24, 29, 34"),
            imagenet_augment=("resize_random_crop_flip", "train_crop alexnet_crop_flip: a random 224 crop of the "
                                                         "central 256 square + flip"),
            weight_decay=(0.0, f"{_TRANS}: weight_decay 0 for AlexNet's classifiers")),
    },
    "vgg16": {
        "model.arch": ("vgg16", f"{_TF}: vggnet_LA model_type vggnet_fx (vggnet_model.py, with batch norm)"),
        "pretrain_la.batch_size": (256, f"{_TF}: vggnet_LA batch_size 256 (its IR: the default 128)"),
        "pretrain_la.epochs": (158, f"{_TF}: vggnet_LA train_num_steps 890,712, IR's 100,090 (batch 128) "
                                    "included: LA 790,622 steps of batch 256 = 158.00 epochs of 5,004"),
        "pretrain_la.lr_drops": ([116, 138], f"{_TF}: vggnet_LA lr_boundaries 680,681 and 790,791 = LA steps "
                                             "580,591 and 690,701 = LA epochs 116.03 and 138.03 (/ 5,004): 116 and "
                                             "138"),
        "pretrain_la.num_kmeans": (6, f"{_TF}: vggnet_LA kmeans_k, 6 clusterings"),
        "pretrain_la.num_clusters": (10000, f"{_TF}: vggnet_LA kmeans_k, 10,000 clusters each"),
        **_readout(
            conv1=("before_maxpool", f"{_TRANS}: get_all_layers 0,1,2,3,4, ENDING_POINTS[0] is conv1_final's "
                                     "BN-ReLU before pool1"),
            imagenet=(51, [11, 41], "trans_vggnet_LA: from LA's step 890,712, lr_boundaries 1,000,900 and "
                                    "1,301,170 = 11.01 and 41.01 epochs of 10,009 steps, train_num_steps 1,401,260 "
                                    "= 51.01: 11, 41, 51"),
            places=(27, [6, 21], "plc_trans_vggnet_LA: ImageNet's steps, 110,188, 410,458 and 510,548 = 5.76, "
                                 f"21.45 and 26.69 {_PLACES_STEPS}: 6, 21, 27"),
            imagenet_augment=("pretraining", "train_crop default: resnet_train, the pretraining augmentation")),
    },
}

# network -> params key -> (the paper's value, where it comes from)
NETWORKS: dict[str, dict[str, tuple[Any, str]]] = {net: {**_SHARED, **own} for net, own in _OWN.items()}
RECIPE = NETWORKS["resnet50"]


def preset_recipe(preset: str) -> dict[str, tuple[Any, str]]:
    """The recipe a paper preset sets: its network's, with the backbone it builds (v1 for -v1)."""
    network, arch = PRESETS[preset]
    recipe = dict(NETWORKS[network])
    if arch != PAPER_ARCHS[network]:
        recipe["model.arch"] = (arch, f"torchvision's v1 {NETWORK_NAMES[network]}, the community's substitute "
                                      f"for the authors' {PAPER_ARCHS[network]} (listed under Deviations)")
    return recipe


# Where this implementation, run with a paper preset, still departs from the authors' code: what every
# network shares (DEVIATIONS), each network's rounded schedule (ROUNDING), and the v1 backbone
# (`deviations` puts them together for a run's arch).
ROUNDING = {
    "resnet50": "LA's lr drops happen at epoch boundaries (LA epochs 142 and 179, i.e. 152 and 189 of 200); the TF "
                "code drops at steps 1,522,000 and 1,895,857 (epochs 152.06 and 189.42). The Places205 readout runs "
                "37 epochs with drops at 16 and 31 for the TF code's 36.62, 15.69 and 31.39 (the steps of 70 "
                "ImageNet epochs).",
    "resnet18": "LA's lr drops happen at epoch boundaries (LA epochs 150 and 177, i.e. 160 and 187 of 200); the TF "
                "code drops at steps 1,600,000 and 1,873,411 (epochs 159.86 and 187.17). The Places205 readout runs "
                "37 epochs with drops at 16 and 31 for the TF code's 36.62, 15.69 and 31.39.",
    "alexnet": "LA's lr drops happen at epoch boundaries (LA epochs 109 and 132); the TF code drops at steps "
               "1,190,000 and 1,423,100 (LA epochs 108.89 and 132.18). The Places205 readout runs 34 epochs with "
               "drops at 24 and 29 for the TF code's 34.01, 23.54 and 28.77 (the steps of 65 ImageNet epochs).",
    "vgg16": "LA's lr drops happen at epoch boundaries (LA epochs 116 and 138 of 158, batch 256); the TF code drops "
             "at LA epochs 116.03 and 138.03 and stops at 158.00. The ImageNet readout runs 51 epochs with drops at "
             "11 and 41 for the TF code's 51.01, 11.01 and 41.01 (its steps continue LA's 890,712); the Places205 "
             "readout 27 epochs with drops at 6 and 21 for 26.69, 5.76 and 21.45.",
}
# what a network's own code does that this pipeline does not (beyond its rounded schedule)
OWN_DEVIATIONS = {
    "alexnet": ("Weight decay: the TF code decays every variable whose name lacks 'batch_normalization', and "
                "AlexNet's batch norms are named conv1..fc7, so its batch-norm scales and offsets are decayed "
                "too (1e-4); this pipeline never decays batch-norm parameters.",),
    "vgg16": ("Readout pooling: the TF code's get_resnet_all_layers transposes every map from NCHW to NHWC before "
              "pooling, but VGG16's maps are already NHWC (slim), so for VGG16 it averages over width and "
              "channels; this pipeline pools VGG16's conv1..conv4 over height and width (the same 200,704 / "
              "100,352 / 50,176 / 100,352 dimensions, other contents).",),
}
DEVIATIONS = (
    "LA starts from the IR model and memory bank; the TF code also carried IR's optimiser state (momentum) and "
    "step count.",
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
    "Readout classifiers and the embedding head start from torch's default Linear initialisation; the TF code uses "
    "variance scaling for the classifiers and glorot-uniform (AlexNet: truncated normal 0.005) with zero biases "
    "for the head.",
    "Resampling: bilinear with antialiasing (Pillow, torchvision) where the TF code resizes with resize_area.",
    "The supervised reference follows torchvision's recipe (90 epochs, batch 256, lr 0.1), without weight decay on "
    "batch-norm parameters; the paper quotes supervised numbers from other work.",
)


def deviations(arch: str | None) -> tuple[str, ...]:
    """What a run of `arch` with its network's paper preset still departs in: the v1 backbone where
    it stands in for the authors' pre-activation ResNet, the network's rounded schedule and its own
    departures (OWN_DEVIATIONS), the rest."""
    network = network_of(arch)
    backbone = ((f"Backbone: torchvision's {NETWORK_NAMES[network]} (v1) instead of the pre-activation "
                 f"{NETWORK_NAMES[network]} (v2, {PAPER_ARCHS[network]}) of the TF code; the paper's rows are set "
                 "against it as the community's tables do, and the detector's and readout's layer names follow v1.",)
                if network is not None and arch == V1_SUBSTITUTES.get(network) else ())
    own = (ROUNDING[network], *OWN_DEVIATIONS.get(network, ())) if network else ()
    return (*backbone, *DEVIATIONS[:1], *own, *DEVIATIONS[1:])


def verified(network: str | None) -> bool:
    """Whether the paper's numbers for `network` are verified from a primary source here."""
    return bool(PUBLISHED.get(str(network)))


def paper_value(model: str, role: str, task: str, layer: str, metric: str, network: str | None = "resnet50"
                ) -> float | None:
    """The paper's number for a row of the paper's benchmark for `role` with `network` (None when
    it has none, or none verified)."""
    return PUBLISHED.get(str(network), {}).get((model, task, BENCHMARK[role], layer, metric))
