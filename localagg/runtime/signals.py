"""Stop requests: the signals a scheduler, `kill` or Ctrl-C send end a run at its next step
boundary, with a checkpoint, instead of losing the work since the last one.

    SIGTERM   `kill`, a SLURM preemption (PreemptMode=REQUEUE sends it before killing the job)
    SIGINT    Ctrl-C (a second one aborts at once)
    SIGUSR2   SLURM's warning before the time limit (`--signal=USR2@<s>`, as submitit asks for)

`StopSignals` only notes the signal; `requested(step)` is read at step boundaries: every step
on one process; on several, every `every` steps, as the maximum over the ranks (each rank gets
the signal at its own step, or only some ranks get it), so that all stop at the same step.
A run that stops exits with 128 + the signal's number (`exit_code`): the SLURM task wrapper
(stages/slurm_task.py) reads it to requeue the job after a SIGUSR2.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
_pending = {"signum": 0}  # a SIGUSR2 that came before training began (note_early_warning)


def note_early_warning() -> None:
    """Outside training, SIGUSR2 (the scheduler's "the time is nearly up") is noted instead of
    killing the process (its default action); the next `StopSignals` starts with it, so the run
    stops at its first step with a checkpoint, and work after training (tests, export) ends."""

    def note(signum, frame):
        _pending["signum"] = signum

    signal.signal(signal.SIGUSR2, note)


def exit_code(signum: int) -> int:
    return 128 + int(signum)


def stopped_by(code: int | None) -> int:
    """The stop signal a run's exit code says it stopped for (0: none)."""
    return code - 128 if isinstance(code, int) and code - 128 in {int(s) for s in STOP_SIGNALS} else 0


class StopSignals:
    """Context manager: note STOP_SIGNALS while training; the old handlers come back at exit.

    `agree(flag)` (optional) reduces an int64 tensor by maximum over the ranks; with it,
    `requested` reads the flag only every `every` steps (a collective), the same on every rank.
    """

    def __init__(self, agree: Callable[[torch.Tensor], torch.Tensor] | None = None, every: int = 1,
                 device: torch.device | str = "cpu"):
        self.agree, self.every, self.device = agree, max(1, every), device
        self.received, self._old = _pending["signum"], {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        _pending["signum"] = 0
        return False

    def _note(self, signum, frame) -> None:
        if self.received and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.received = signum

    def requested(self, step: int) -> int:
        """The signal to stop for at this step boundary (0: none), the same on every rank."""
        if self.agree is None:
            return self.received
        if step % self.every:
            return 0
        flag = torch.tensor([self.received], dtype=torch.int64, device=self.device)
        return int(self.agree(flag).item())
