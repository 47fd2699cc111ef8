"""Progress bars for every loop that can take more than a few seconds (tqdm, to stderr)."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def track(iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Wrap `iterable` in a progress bar on a terminal; off when stderr is not a TTY (logs, CI),
    when `enabled` is False, or when LOCALAGG_NO_PROGRESS is set."""
    disable = (not enabled) or bool(os.environ.get("LOCALAGG_NO_PROGRESS")) or not sys.stderr.isatty()
    return iter(tqdm(iterable, desc=desc, total=total, disable=disable, mininterval=1.0, dynamic_ncols=True, leave=False))
