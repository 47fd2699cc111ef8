"""Where each stage writes, and which stage writes what: the names every stage and the report
share (no heavy imports, so the report and the CLI load fast)."""

from __future__ import annotations

from pathlib import Path

# MODELS: the networks every evaluation compares; PIXELS: the raw-pixel baseline of the readout
# and kNN; TRANSFER_MODELS: both. Defined with the report that reads their records.
from localagg.report.results import MODELS, PIXELS, TRANSFER_MODELS  # noqa: F401

DATASETS = ("object", "transfer")                        # the readout datasets (ImageNet's, Places205's roles)
STAGE_OF_MODEL = {"la": "pretrain_la", "ir": "pretrain_ia", "random": "random_init", "supervised": "supervised"}


DETECTION_MANIFEST = Path("data/prepared/detection/detection.json")  # written by `prepare`


def model_path(name: str) -> Path:
    """The exported weights of model `name` (la, ir, random, supervised)."""
    return Path("models") / f"{name}.pt"


def transfer_cell(model: str, dataset: str) -> str:
    return f"{model}-{dataset}"


def transfer_metrics_path(model: str, dataset: str) -> Path:
    return Path("metrics") / "transfer" / f"{transfer_cell(model, dataset)}.json"


def detection_cell(model: str, seed: int) -> str:
    return f"{model}-seed{seed}"


def detection_metrics_path(model: str, seed: int) -> Path:
    return Path("metrics") / "detection" / f"{detection_cell(model, seed)}.json"


def record_path(metrics: Path) -> Path:
    """The full record beside a metrics file: records/<same name> (metrics/x.json -> records/x.json).

    Metrics files hold the headline numbers that `dvc metrics show` lists; the record holds
    every number of the stage, what ran (its protocol) and what it cost, and is what the
    report reads."""
    return Path("records") / Path(metrics).relative_to("metrics")
