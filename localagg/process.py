"""Processes that must not outlive the process that started them.

`die_with_parent()` asks Linux to send this process SIGTERM when its parent exits
(prctl PR_SET_PDEATHSIG), for worker processes (torchrun's, Detectron2's launcher's) and for
stage commands. Elsewhere it does nothing.

`terminate_on_sigterm()` turns SIGTERM into SystemExit(143) in the main thread, so `finally`
blocks run (temporary files are removed, locks released) instead of the process vanishing;
SIGUSR2 (SLURM's warning before the time limit) is noted for the training loop
(runtime.signals) instead of killing the process.
"""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Receive `sig` when the parent process exits (Linux); returns whether it is armed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def terminate_on_sigterm() -> None:
    """SIGTERM raises SystemExit(143) in the main thread; SIGUSR2 is noted (call from the main thread)."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    from .runtime.signals import note_early_warning

    note_early_warning()
