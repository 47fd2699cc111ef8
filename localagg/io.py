"""Atomic output: nothing half-written is ever left where a finished file belongs.

Every writer goes through a temporary sibling and `os.replace`, which is atomic on POSIX
when source and target are on the same filesystem.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`.

    Works for files and directories. On error the temporary is removed and `path` is
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON with sorted keys and a trailing newline: byte-identical for equal objects."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, quota, file-size limit (ulimit -f)


class DiskFull(UserError):
    """A write that ran out of space, said once, with the path, the space free there and what
    the file needed (where known)."""

    def __init__(self, path: str | os.PathLike, reason: str, needed: int | None = None):
        where = Path(path).resolve().parent
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free
        need = f" about {needed / 2**20:,.0f} MiB," if needed else ""
        super().__init__(f"{path}: cannot be written ({reason}). The file needs{need} and {free / 2**20:,.0f} MiB "
                         f"are free on the file system of {where}; free some space (or raise the quota or `ulimit "
                         "-f`) and rerun. Nothing was half-written: the previous outputs are whole.")


def is_full(exc: BaseException) -> bool:
    """An OSError of a full disk, quota or file-size limit, or torch.save's RuntimeError for one."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    return isinstance(exc, RuntimeError) and ("file write failed" in str(exc) or "unexpected pos" in str(exc))

