"""One writer per stage output, and no stage left running after the `dvc` that started it.

`stage_lock(name, outputs)`: an exclusive lock (flock) on .locks/<name>.lock, which holds the
owner's PID. A second `localagg` command for the same outputs (a direct run during `dvc
repro`, or a stage left behind by a killed `dvc`) is refused with a message naming the
holder's PID. The kernel releases the lock when its holder dies, so no stale lock survives
a crash. Processes launched by a stage (torchrun workers, the tasks of its SLURM job, marked
by LOCALAGG_LOCK_HELD) work under their parent's lock. A stage that runs as a SLURM job adds
the job id to its lock file (`note_job`); while that job is queued or running, a later writer
is refused even when the process that submitted it is gone (killed with SIGKILL).

`watch_owner()`: when DVC runs the stage (DVC_STAGE is set), the stage follows the `dvc`
process that started it: it gets SIGTERM when its parent exits (prctl), and a thread
checks every second that its first ancestor that is not a shell (the `dvc` process, when a
shell sits between them) is still the same process; when it is gone the stage stops with
one message instead of writing on as an orphan.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from localagg.errors import UserError
from localagg.process import die_with_parent

LOCKS = Path(".locks")
HELD_ENV = "LOCALAGG_LOCK_HELD"
_held: dict[str, int] = {}  # lock name -> the open file descriptor of the lock this process holds
SHELLS = {"sh", "bash", "dash", "zsh", "fish", "ksh"}


@contextlib.contextmanager
def stage_lock(name: str, outputs: str) -> Iterator[None]:
    """Hold .locks/<name>.lock for the block; refuse (UserError) when another process holds it."""
    if os.environ.get(HELD_ENV) == name or os.environ.get("RANK", "0") != "0":
        yield  # a worker of the process that holds the lock
        return
    LOCKS.mkdir(exist_ok=True)
    path = LOCKS / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            pid = holder.split()[0] if holder.split() else holder
            raise UserError(
                f"another localagg process (PID {pid}) is writing {outputs} ({path}); wait for it to finish or "
                f"stop it (`kill {pid}`), then run this again.") from None
        _refuse_if_its_job_runs(os.pread(fd, 256, 0).decode(errors="replace"), outputs, path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.environ[HELD_ENV] = name
        _held[name] = fd
        yield
    finally:
        os.environ.pop(HELD_ENV, None)
        _held.pop(name, None)
        os.close(fd)


def note_job(job_id: str) -> None:
    """Add a SLURM job id to the lock this process holds (the one named by LOCALAGG_LOCK_HELD)."""
    fd = _held.get(os.environ.get(HELD_ENV, ""))
    if fd is not None:
        os.pwrite(fd, f"{os.getpid()}\nslurm-job {job_id}\n".encode(), 0)


def _refuse_if_its_job_runs(previous: str, outputs: str, path: Path) -> None:
    """The previous holder's SLURM job, when squeue still lists it, is a writer too."""
    import re
    import shutil
    import subprocess

    found = re.search(r"^slurm-job (\S+)$", previous, re.M)
    if not found or shutil.which("squeue") is None:
        return
    job = found.group(1)
    try:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True,
                               timeout=60).stdout.strip()
    except subprocess.TimeoutExpired:
        state = ""
    if state:
        raise UserError(f"SLURM job {job} ({state.lower()}), started by an earlier localagg that is gone, is writing "
                        f"{outputs} ({path}); wait for it (`squeue -j {job}`) or cancel it (`scancel {job}`), then "
                        "run this again.")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent PID, start time) of a process from /proc, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return name, int(fields[1]), int(fields[19])  # state is fields[0]; ppid [1]; starttime [19]


def owner() -> tuple[int, int] | None:
    """(PID, start time) of the first ancestor that is not a shell; None when unknown or init."""
    pid = os.getppid()
    while pid > 1:
        found = _stat(pid)
        if found is None:
            return None
        name, parent, start = found
        if name not in SHELLS:
            return pid, start
        pid = parent
    return None


def watch_owner(interval: float = 1.0) -> bool:
    """Under DVC (DVC_STAGE set): stop this stage when the `dvc` process that runs it is gone."""
    if "DVC_STAGE" not in os.environ or os.environ.get(HELD_ENV):
        return False
    die_with_parent()
    target = owner()
    if target is None:
        return False
    pid, start = target

    def poll() -> None:
        while True:
            time.sleep(interval)
            found = _stat(pid)
            if found is None or found[2] != start:
                print(f"error: the dvc process (PID {pid}) that started stage {os.environ['DVC_STAGE']} is gone; "
                      "stopping so that no orphan keeps writing its outputs.", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=poll, name="localagg-owner-watch", daemon=True).start()
    return True
