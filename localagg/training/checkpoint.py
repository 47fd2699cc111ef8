"""Checkpoints written atomically: a crash never leaves a half-written file named like a good one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..io import atomic_path


def save(obj: dict[str, Any], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist: run the stage that writes it first (`dvc repro`).")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"{what} {path} cannot be read ({type(exc).__name__}: {exc}); delete it and rerun the stage.") from None


EXPORT_KEYS = ("model", "model_meta", "objective")


def save_export(path: str | Path, model, objective: str, bank: torch.Tensor | None = None,
                dataset: dict | None = None, epochs: int = 0, history: list | None = None,
                classifier: dict | None = None) -> None:
    """The exported weights every later stage reads: the EmbeddingNet state, its meta
    (arch, stem, embedding_dim), the objective that trained it (ir, la, supervised, random),
    and what else the run has (memory bank, dataset seen, epochs, curves, classifier)."""
    save({
        "model": model.state_dict(), "model_meta": model.meta(), "objective": objective,
        "bank": bank, "dataset": dataset, "epochs": epochs, "history": history or [], "classifier": classifier,
    }, path)


def load_export(path: str | Path, what: str = "model") -> dict[str, Any]:
    """Read an export written by `save_export`; anything else is a clear error."""
    state = load(path, what)
    missing = [k for k in EXPORT_KEYS if k not in state]
    if missing:
        raise UserError(f"{what} {path} has no {', '.join(missing)}: it is not a localagg model export.")
    return state
