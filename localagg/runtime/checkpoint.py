"""Checkpoints and model exports: written atomically, read without running code.

Writing goes through a temporary file and a rename, so a crash never leaves a half-written
file named like a good one. Reading uses `torch.load(weights_only=True)`: only tensors and
plain containers (dict, list, str, numbers) are rebuilt, so a crafted file (a pickle that
would run a command when unpickled) is refused with a clear error instead of executing.
Exports hold no timing: the same training gives byte-identical files (DVC then sees that
nothing changed downstream).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..io import DiskFull, atomic_path, is_full


def save(obj: dict[str, Any], path: str | Path) -> None:
    """torch.save to a temporary renamed over `path`; a full disk is a DiskFull naming `path`."""
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as exc:
        if not is_full(exc):
            raise
        raise DiskFull(path, "no space left", needed=_tensor_bytes(obj)) from None


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class CheckpointError(UserError):
    """A checkpoint file that exists but cannot be used (truncated, foreign or unsafe).

    `reason` says why, without advice, for callers that recover by starting over."""

    def __init__(self, what: str, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{what} {path} {reason}; delete it and rerun the stage that writes it.")


REFUSED = ("Unsupported class", "Unsupported global")  # torch's weights-only unpickler, refusing a class


def unpickler_detail(exc: BaseException) -> str:
    """What torch's weights-only unpickler found, without torch's advice to load unsafely:
    "Unsupported class posix.system" (a refused object), "Unsupported operand 60" (bytes that
    are not a pickle: an HTML page saved as .pt), "unexpected EOF ..." (a truncated file)."""
    text = str(exc)
    marker = "WeightsUnpickler error: "
    return clip(text[text.index(marker) + len(marker):] if marker in text else text)


def clip(text: str, limit: int = 160) -> str:
    """The first line of `text`, at most `limit` characters, cut at a word."""
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def _unreadable(path: Path, detail: str) -> str:
    return (f"is truncated or not a torch checkpoint ({path.stat().st_size:,} bytes; {detail}): an interrupted copy "
            "or download, or another kind of file")


def load(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Read a file written by `save` (tensors and plain containers only).

    A missing file, a truncated or foreign file, and a file whose pickle asks for anything
    but tensors and plain containers are `UserError`s naming the file; nothing in the file
    is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist: run the stage that writes it first (`dvc repro`).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch says this for a refused class and for bytes that are no pickle
        detail = unpickler_detail(exc)
        if detail.startswith(REFUSED):
            raise CheckpointError(what, path, f"holds objects other than tensors and plain containers ({detail}) and "
                                              "was not loaded, since loading it could run code") from None
        raise CheckpointError(what, path, _unreadable(path, detail)) from None
    except Exception as exc:  # a truncated zip, an empty file
        raise CheckpointError(what, path, _unreadable(path, f"{type(exc).__name__}: {clip(str(exc)) or 'no data'}")) from None
    if not isinstance(state, dict):
        raise CheckpointError(what, path, f"holds a {type(state).__name__}, not a localagg checkpoint")
    return state


EXPORT_KEYS = ("model", "model_meta", "objective")


def save_export(path: str | Path, model, objective: str, bank: torch.Tensor | None = None,
                dataset: dict | None = None, epochs: int = 0, provenance: list | None = None,
                classifier: dict | None = None) -> None:
    """The exported weights every later stage reads: the EmbeddingNet state, its meta
    (arch, stem, embedding_dim), the objective that trained it (ir, la, supervised, random),
    and what else the run has (memory bank, dataset seen, epochs, classifier).

    `provenance` is the protocol of every training stage that built the model, in order
    (IR then LA for `la`): what a report needs to say whether a number is comparable.
    """
    save({
        "model": model.state_dict(), "model_meta": model.meta(), "objective": objective,
        "bank": bank, "dataset": dataset, "epochs": epochs, "provenance": provenance or [], "classifier": classifier,
    }, path)


def load_export(path: str | Path, what: str = "model") -> dict[str, Any]:
    """Read an export written by `save_export`; anything else is a clear error."""
    state = load(path, what)
    missing = [k for k in EXPORT_KEYS if k not in state]
    if missing:
        raise UserError(f"{what} {path} has no {', '.join(missing)}: it is not a localagg model export.")
    return state
