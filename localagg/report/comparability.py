"""Whether a number of this run can be set against the paper's: the whole protocol, field by field.

A number is comparable with the paper's only when everything that produced it equals the
recipe of its network (`paper.NETWORKS`, chosen by the arch of the model's provenance:
`paper.network_of`, where torchvision's v1 ResNets stand in for the authors' pre-activation
ones) and the paper's datasets (`paper.DATASET_SIZES`); a network the paper has no row for
is never comparable ("the paper has no resnet101 row"):

    pretraining  (from the model's provenance, the stages that built it: IR, then LA)
        architecture, batch-norm momentum, dataset and its number of training images, crop size, the augmentation
        recipe, each stage's recipe keys and epochs (IR 10 + LA 190 for LA; the paper's IR
        baseline trained 200 epochs)
    readout      (from the transfer record's protocol)
        dataset and its train / val sizes, and the readout recipe keys of its role
    detection    (from the detection record's protocol)
        train and test sets and their sizes, and the detection recipe keys

Each function returns the differences as `Difference`s: short phrases ("resnet18 instead of
preact_resnet50", "10,000 of 1,281,167 training images", "IR + LA 4 + 8 of 10 + 190 epochs") that also
carry the key they concern, this run's value and the paper's (the rows of the report's "Why not
comparable" table); an empty list means comparable.
"""

from __future__ import annotations

from typing import Any

from .paper import BENCHMARK, DATASET_SIZES, DETECTION_SETS, IR_BASELINE_EPOCHS, NETWORKS, PAPER_ARCHS, network_of

PAPER_DETECTOR = "tf-faster-rcnn"  # the authors' fork (neuroailab/tf-faster-rcnn): where 69.1 and 65.4 come from
STAGE_SECTION = {"ir": "pretrain_ia", "la": "pretrain_la"}
SET_NAMES = {(("VOC2007", "trainval"),): "VOC07 trainval", (("VOC2007", "trainval"), ("VOC2012", "trainval")):
             "VOC07+12 trainval", (("VOC2007", "test"),): "VOC07 test"}


class Difference(str):
    """One way a number's protocol departs from the paper's: the phrase the report prints, with
    the `key` it concerns (a params key such as "pretrain_la.k", or "architecture"), this run's
    value (`found`) and the paper's, as text."""

    key: str
    found: str
    paper: str

    def __new__(cls, phrase: str, key: str, found: str, paper: str) -> Difference:
        self = super().__new__(cls, phrase)
        self.key, self.found, self.paper = key, found, paper
        return self

    def __reduce__(self):
        return Difference, (str(self), self.key, self.found, self.paper)

    def held_by(self, holders: str) -> Difference:
        """The difference of only some pretraining stages: 'LA: <phrase>' (`holders` "LA" or "IR and LA")."""
        key = self.key if self.key.startswith("pretrain_") else f"{self.key} ({holders})"
        return Difference(f"{holders}: {self}", key, self.found, self.paper)


def show(value: Any) -> str:
    """A value as the report prints it: 1,281,167; 0.03; [30, 60]; pretraining."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


def recipe_keys(section: str, network: str = "resnet50") -> list[str]:
    """The keys the recipe of `network` sets in `section` ("pretrain_la", "transfer.object", "detection")."""
    n = len(section) + 1
    return [k[n:] for k in NETWORKS[network] if k.startswith(section + ".") and "." not in k[n:]]


def _keys(found: dict, section: str, keys, label: str, network: str = "resnet50") -> list[Difference]:
    """'<label> <key> <found> instead of <paper>' for each key of `section` in `network`'s recipe
    that differs; a key the record does not hold is a difference too ('not recorded')."""
    out = []
    for key in keys:
        paper = NETWORKS[network].get(f"{section}.{key}")
        if paper is None:
            continue
        if key not in found:
            out.append(Difference(f"{label}{key} not recorded (the paper's {show(paper[0])})", f"{section}.{key}",
                                  "not recorded", show(paper[0])))
        elif not _same(found[key], paper[0]):
            out.append(Difference(f"{label}{key} {show(found[key])} instead of {show(paper[0])}", f"{section}.{key}",
                                  show(found[key]), show(paper[0])))
    return out


def _sizes(subject: str, dataset: str, paper_dataset: str, train: int | None, val: int | None,
           what: str = "training", lead: str = "") -> list[Difference]:
    """The dataset and its sizes against the paper's; `subject` ("pretraining", "readout", "kNN",
    "detection") names the keys, `lead` starts the phrases ("readout on ")."""
    if dataset != paper_dataset:
        return [Difference(f"{lead}{dataset} instead of {paper_dataset}", f"{subject} dataset", dataset, paper_dataset)]
    paper_train, paper_val = DATASET_SIZES[paper_dataset]
    out = []
    if train != paper_train:
        out.append(Difference(f"{lead}{show(train)} of {show(paper_train)} {what} images", f"{subject} {what} images",
                              show(train), show(paper_train)))
    split = "test" if paper_dataset == "voc07" else "val"
    if val is not None and val != paper_val:
        out.append(Difference(f"{lead}{show(val)} of {show(paper_val)} {split} images", f"{subject} {split} images",
                              show(val), show(paper_val)))
    return out


def no_row(arch: Any) -> Difference:
    """The difference of a run whose network the paper has no row for."""
    return Difference(f"the paper has no {arch} row", "architecture", str(arch), "/".join(PAPER_ARCHS.values()))


def _stage_differences(stage: dict, skip: set[str], network: str) -> list[Difference]:
    """One pretraining stage of a provenance against `network`'s recipe: network, data,
    augmentation, and every recipe key of its section."""
    out = []
    if network_of(stage.get("arch")) != network:
        paper_arch = PAPER_ARCHS[network]
        out.append(Difference(f"{stage.get('arch')} instead of {paper_arch}", "architecture", str(stage.get("arch")),
                              paper_arch))
    out += _sizes("pretraining", str(stage.get("dataset")), "imagenet", stage.get("train_images"), None)
    out += _keys({k: stage[k] for k in ("bn_momentum",) if k in stage}, "model", ["bn_momentum"], "model.", network)
    augment = stage.get("augment") or {}
    crop = NETWORKS[network]["augment.crop_size"][0]
    if augment.get("crop_size") != crop:
        out.append(Difference(f"{show(augment.get('crop_size'))} instead of {crop} px", "augment.crop_size",
                              show(augment.get("crop_size")), show(crop)))
    out += _keys(augment, "augment", [k for k in recipe_keys("augment", network) if k != "crop_size"], "augment.",
                 network)
    section = STAGE_SECTION[stage["objective"]]
    return out + _keys(stage.get("config") or {}, section,
                       [k for k in recipe_keys(section, network) if k not in skip], f"{section}.", network)


def provenance_network(provenance: list[dict]) -> str | None:
    """The paper network of a model: that of the arch of the stage that built it last."""
    return network_of(provenance[-1].get("arch")) if provenance else None


def pretraining_differences(model: str, provenance: list[dict]) -> list[Difference]:
    """How the pretraining of model `model` ("la" or "ir") differs from the paper's: every stage
    of its provenance (IR, then LA), each against the whole recipe of its network. A difference
    every stage has is said once; one that only some have is said with their names ("LA: 96
    instead of 224 px")."""
    network = provenance_network(provenance)
    if provenance and network is None:
        return [no_row(provenance[-1].get("arch"))]
    recipe = NETWORKS[network or "resnet50"]
    wanted = ["ir", "la"] if model == "la" else ["ir"]
    found = [stage.get("objective") for stage in provenance]
    if found != wanted:
        stages = " + ".join(map(str, found)) or "nothing recorded"
        return [Difference(f"trained by {stages} instead of {' + '.join(wanted)}", "pretraining stages", stages,
                           " + ".join(wanted))]
    skip = {"epochs"} | ({"lr_drops"} if model == "ir" else set())  # Wu et al.'s schedule is not in the recipe
    per_stage = [_stage_differences(stage, skip, network) for stage in provenance]
    shared, own = [], []
    for phrase in dict.fromkeys(p for phrases in per_stage for p in phrases):
        holders = [stage["objective"].upper() for stage, phrases in zip(provenance, per_stage) if phrase in phrases]
        (shared if len(holders) == len(provenance) else own).append(
            phrase if len(holders) == len(provenance) else phrase.held_by(" and ".join(holders)))
    epochs = [stage.get("epochs_done") for stage in provenance]
    paper_epochs = ([recipe["pretrain_ia.epochs"][0], recipe["pretrain_la.epochs"][0]] if model == "la"
                    else [IR_BASELINE_EPOCHS])
    if epochs != paper_epochs:
        names = " + ".join(o.upper() for o in wanted)
        ours, paper = " + ".join(map(show, epochs)), " + ".join(map(show, paper_epochs))
        shared.append(Difference(f"{names} {ours} of {paper} epochs", f"pretraining epochs ({names})", ours, paper))
    return shared + own


def readout_differences(role: str, protocol: dict, network: str = "resnet50") -> list[Difference]:
    """How a transfer cell's dataset and readout differ from `network`'s recipe for `role` (object, transfer)."""
    paper_dataset = BENCHMARK[role]
    out = _sizes("readout", str(protocol.get("dataset")), paper_dataset, protocol.get("train_images"),
                 protocol.get("val_images"), lead="readout on ")
    section = f"transfer.{role}"
    return out + _keys(protocol.get("readout") or {}, section, recipe_keys(section, network), "readout ", network)


def set_name(pairs) -> str:
    key = tuple(tuple(p) for p in pairs or ())
    return SET_NAMES.get(key, " + ".join("/".join(p) for p in key) or "nothing")


def detection_differences(dataset: str, protocol: dict) -> list[Difference]:
    """How a detection cell's detector, sets and schedule differ from the paper's. The paper's
    APs come from the authors' tf-faster-rcnn; a number of another detector is never set
    against them, whatever its protocol (the recipe's detection keys are VISSL's Detectron2
    protocol for the same VOC07 sets, checked all the same)."""
    detector = protocol.get("detector")
    out = [] if detector == PAPER_DETECTOR else [Difference(
        f"{'the detector is not recorded' if detector is None else detector} instead of the authors' "
        f"{PAPER_DETECTOR} (the paper's AP is never set against another detector's)", "detector",
        "not recorded" if detector is None else str(detector), PAPER_DETECTOR)]
    return out + detection_protocol_differences(dataset, protocol)


def knn_differences(role: str, protocol: dict) -> list[Difference]:
    """How a transfer cell's kNN (its dataset, k and temperature) differs from the recipe's for `role`."""
    paper_dataset = BENCHMARK[role]
    out = _sizes("kNN", str(protocol.get("dataset")), paper_dataset, protocol.get("train_images"),
                 protocol.get("val_images"), lead="kNN on ")
    return out + _keys(protocol.get("knn") or {}, "transfer.knn", recipe_keys("transfer.knn"), "kNN ")


def detection_protocol_differences(dataset: str, protocol: dict) -> list[Difference]:
    """How a detection cell's sets and schedule differ from the recipe's (VISSL's Detectron2
    VOC07 protocol), whatever the detector: part of `detection_differences`, and the rule for a
    number published with this project's detector, e.g. an imported model's."""
    if dataset != "voc07":
        out = [Difference(f"{dataset} instead of voc07", "detection dataset", dataset, "voc07")]
    else:
        out = []
        train, test = protocol.get("train_sets"), protocol.get("test_sets")
        paper_train, paper_test = set_name(DETECTION_SETS["train"]), set_name(DETECTION_SETS["test"])
        if not _same(train, DETECTION_SETS["train"]):
            out.append(Difference(f"trained on {set_name(train)} instead of the paper's {paper_train}",
                                  "detection training sets", set_name(train), paper_train))
        if not _same(test, DETECTION_SETS["test"]):
            out.append(Difference(f"tested on {set_name(test)} instead of {paper_test}", "detection test sets",
                                  set_name(test), paper_test))
        if not out:
            out += _sizes("detection", "voc07", "voc07", protocol.get("train_images"), protocol.get("test_images"),
                          lead="detection on ")
    return out + _keys(protocol, "detection", recipe_keys("detection"), "detection ")
