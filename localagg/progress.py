"""Progress of long loops: a bar on a terminal (tqdm) and log lines everywhere.

Bars go to stderr and only on a terminal (not in pipes, CI logs or under SLURM), and never
when LOCALAGG_NO_PROGRESS is set. What a reader of a log needs is logged as plain lines
instead (`logging`, one line per epoch or per reporting period), with `eta` and `duration`
giving the elapsed time and the time left. A `Heartbeat` adds a line inside a long epoch or
window: a log is never silent for more than HEARTBEAT_SECONDS plus one step.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
HEARTBEAT_SECONDS = 60.0  # a training loop without a bar logs a progress line at least this often
clock: Callable[[], float] = time.monotonic  # the heartbeats' clock (tests replace it with a fake one)


def track(iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool = True) -> tqdm:
    """`iterable` wrapped in a progress bar on a terminal (off when stderr is not a TTY, when
    `enabled` is False, or when LOCALAGG_NO_PROGRESS is set). The result is iterable and has
    `set_postfix_str` (a no-op without a bar)."""
    disable = not (enabled and bars_shown())
    return tqdm(iterable, desc=desc, total=total, disable=disable, mininterval=1.0, dynamic_ncols=True, leave=False)


def bars_shown() -> bool:
    """Whether `track` draws bars: stderr is a terminal and LOCALAGG_NO_PROGRESS is not set."""
    return not os.environ.get("LOCALAGG_NO_PROGRESS") and sys.stderr.isatty()


def duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Clock:
    """Elapsed time of a run and the time left, from the work done since it started."""

    def __init__(self, done: float = 0.0, total: float = 1.0):
        self.start, self.first, self.total = time.perf_counter(), done, total

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self, done: float) -> float | None:
        """Seconds left when `done` of `total` units are done (None before any progress)."""
        progressed = done - self.first
        return None if progressed <= 0 else self.elapsed() / progressed * (self.total - done)

    def text(self, done: float) -> str:
        """'elapsed 1m05s, ETA 3m10s'."""
        eta = self.eta(done)
        return f"elapsed {duration(self.elapsed())}, ETA {'?' if eta is None else duration(eta)}"


class Heartbeat:
    """When a loop that logs every N steps (or every epoch) should log anyway: at the first
    step after `every` seconds without a line, so a piped log of a long epoch is not silent.

    Call `due(periodic)` once per step: True when `periodic` (the loop's own rhythm asks for
    a line) or when `every` seconds have passed since the last line, and then the line counts
    as printed now; `printed()` notes a line the loop printed anyway (its epoch line). Off
    (`enabled` False: a progress bar shows the progress, or not rank 0), only `periodic` says
    yes. `now`: the clock (default: the module's `clock`), read once per call.
    """

    def __init__(self, every: float = HEARTBEAT_SECONDS, enabled: bool = True, now: Callable[[], float] | None = None):
        self.every, self.enabled, self.now = every, enabled, now or clock
        self.last = self.now()

    def due(self, periodic: bool = False) -> bool:
        if not self.enabled:
            return periodic
        t = self.now()
        if periodic or t - self.last >= self.every:
            self.last = t
            return True
        return False

    def printed(self) -> None:
        self.due(True)
