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
