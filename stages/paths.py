"""Where each stage writes, and which stage writes what: the names every stage and the report
share (no heavy imports, so the report and the CLI load fast)."""

from __future__ import annotations

from pathlib import Path

# MODELS: the networks every evaluation compares; PIXELS: the raw-pixel baseline of the readout
# and kNN; TRANSFER_MODELS: both. Defined with the report that reads their records.
from localagg.report.results import MODELS, PIXELS, TRANSFER_MODELS  # noqa: F401

DATASETS = ("object", "transfer")                        # the readout datasets (ImageNet's, Places205's roles)
STAGE_OF_MODEL = {"la": "pretrain_la", "ir": "pretrain_ia", "random": "random_init", "supervised": "supervised"}
# an imported model (an entry of the `external` params section) is written by `import@<name>`
# and evaluated by the matrices transfer_external and detection_external (dvc.yaml)


def imported_models(params: str | Path) -> tuple[str, ...]:
    """The names of the `external` entries of the params file (the imported models)."""
    from .params import load_section

    return load_section(params, "external").names()


def check_model(model: str, params: str | Path, pixels: bool) -> None:
    """`model` is one the evaluations know: the pipeline's own (and the raw-pixel baseline
    where `pixels`) or an `external` entry of the params file; else a UserError listing them."""
    from localagg.errors import UserError

    own = TRANSFER_MODELS if pixels else MODELS
    imported = imported_models(params)
    if model not in own and model not in imported:
        raise UserError(f"unknown model {model!r}; expected one of: {', '.join(own)}"
                        + (f", or an imported one: {', '.join(imported)}" if imported else
                           f" (a checkpoint of your own: add it under `external:` in {params})") + ".")


def stage_of(model: str) -> str:
    """The DVC stage that writes models/<model>.pt."""
    return STAGE_OF_MODEL.get(model, f"import@{model}")


def transfer_stage(model: str, dataset: str) -> str:
    """The DVC stage of a transfer cell: pixels@<d>, transfer@<m>-<d> or transfer_external@<m>-<d>."""
    if model == PIXELS:
        return f"pixels@{dataset}"
    return f"{'transfer' if model in MODELS else 'transfer_external'}@{transfer_cell(model, dataset)}"


def detection_stage(model: str, seed: int) -> str:
    """The DVC stage of a detection cell: detection@<m>-<s> or detection_external@<m>-<s>."""
    return f"{'detection' if model in MODELS else 'detection_external'}@{model}-{seed}"


DETECTION_MANIFEST = Path("data/prepared/detection/detection.json")  # written by `prepare`


def model_path(name: str) -> Path:
    """The exported weights of model `name` (la, ir, random, supervised, or an imported one)."""
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
